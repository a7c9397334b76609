"""Security contexts of the pods the operator creates: the ``restricted`` Pod Security Standard.

Every Job pod and vLLM pod runs as a non-root user with the RuntimeDefault seccomp profile, no privilege
escalation and every capability dropped, and without a service-account token (none of them calls the
Kubernetes API: Jobs report through their termination message and the store). The e2e runs in a
namespace labelled ``pod-security.kubernetes.io/enforce=restricted`` on the real API server, so a pod
that breaks the standard is refused there.
"""

from __future__ import annotations

from dynamiclora.kube import Obj

RUN_AS = 65532  # the non-root user of the project's images (images/*/Dockerfile)
# Images built to run as root (vLLM's) have an unwritable HOME for RUN_AS: caches go to /tmp instead.
WRITABLE_HOME = "/tmp"


def container_security() -> Obj:
    """A container's part of the restricted standard."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def restrict(pod_spec: Obj) -> Obj:
    """Make ``pod_spec`` (and every container, init containers included) meet the restricted standard."""
    pod_spec["securityContext"] = {
        "runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    pod_spec["automountServiceAccountToken"] = False
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        container["securityContext"] = container_security()
    return pod_spec
