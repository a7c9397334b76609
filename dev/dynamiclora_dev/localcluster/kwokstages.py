"""kwok configuration: which pods kwok drives and which it leaves to the local executor.

kwok's default pod stages (ready, complete, delete) are kept for ordinary pods. Pods labelled
``dynamiclora.io/executor: local`` are excluded from ``pod-ready`` and ``pod-complete``; for them a
``pod-assign-ip`` stage only gives them a pod IP and host IP (from kwok's pool, so IPs never collide)
and leaves the phase Pending; the executor then starts the process and writes Running/Ready/
Succeeded/Failed. ``pod-delete`` applies to every pod (there is no kubelet to finish a graceful delete).
Node stages are kwok's defaults (initialize + heartbeat).
"""

from __future__ import annotations

from dynamiclora_dev.localcluster.podspec import EXECUTOR_LABEL, EXECUTOR_VALUE

_NOT_EXECUTOR = f"""
    - key: '.metadata.labels["{EXECUTOR_LABEL}"]'
      operator: 'NotIn'
      values: ['{EXECUTOR_VALUE}']"""

_IS_EXECUTOR = f"""
    - key: '.metadata.labels["{EXECUTOR_LABEL}"]'
      operator: 'In'
      values: ['{EXECUTOR_VALUE}']"""

_NOT_DELETED = """
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'"""

_NO_POD_IP = """
    - key: '.status.podIP'
      operator: 'DoesNotExist'"""


def _stage(name: str, *matches: str, next_: str) -> str:
    """One kwok pod Stage: the shared header, the selector's match expressions, then its ``next`` block."""
    return (
        f"""apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:"""
        + "".join(matches)
        + next_
    )


_POD_IP = (
    '{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) '
    '( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}'
)

POD_READY = _stage(
    "pod-ready",
    _NOT_DELETED,
    _NO_POD_IP,
    _NOT_EXECUTOR,
    next_="""
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: """
    + _POD_IP
    + """
      phase: Running
      startTime: {{ $now | Quote }}
""",
)

POD_COMPLETE = _stage(
    "pod-complete",
    _NOT_DELETED,
    """
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values:
      - 'Job'""",
    _NOT_EXECUTOR,
    next_="""
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
""",
)

POD_ASSIGN_IP = _stage(
    "pod-assign-ip",
    _NOT_DELETED,
    _NO_POD_IP,
    _IS_EXECUTOR,
    next_="""
  next:
    statusTemplate: |
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: """
    + _POD_IP
    + """
""",
)

POD_DELETE = _stage(
    "pod-delete",
    """
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'""",
    next_="""
  next:
    finalizers:
      empty: true
    delete: true
""",
)


def kwok_config(cidr: str, node_ip: str) -> str:
    """The multi-document YAML passed to ``kwok --config``."""
    options = f"""apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  cidr: {cidr}
  nodeIP: {node_ip}
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
"""
    return "---\n".join([options, POD_READY, POD_COMPLETE, POD_ASSIGN_IP, POD_DELETE])
