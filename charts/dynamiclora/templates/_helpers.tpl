{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "dynamiclora.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "dynamiclora.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dynamiclora.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamiclora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "dynamiclora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dynamiclora.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dynamiclora
{{- end }}

{{- define "dynamiclora.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dynamiclora.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "dynamiclora.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the audit key (its data key "key"); empty when the operator gets none. */}}
{{- define "dynamiclora.auditKeySecret" -}}
{{- if .Values.audit.existingSecret }}
{{- .Values.audit.existingSecret }}
{{- else if .Values.audit.generateKey }}
{{- printf "%s-audit-key" (include "dynamiclora.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
