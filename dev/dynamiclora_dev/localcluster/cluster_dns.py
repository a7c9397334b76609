"""Cluster DNS for the local executor's pods: the names a headless Service gives pods, resolved at start.

In a cluster, a pod with ``hostname`` H and ``subdomain`` S (an indexed Job's pods, a JobSet's) is reached
as ``H.S`` (or ``H.S.<namespace>.svc[.cluster.local]``) through cluster DNS: that is how torchrun's
workers find their rendezvous at pod 0. This machine has no cluster DNS, and a local process resolves
names with the machine's resolver (torch's TCPStore resolves in C++, so no Python hook can help). The
executor therefore does what the lookup would have returned, once, when a container starts: such names in
its arguments and environment are replaced by the pod's IP. This is a named stand-in for cluster DNS, not
DNS: a name of the pod's own subdomain whose pod has no IP yet delays the start (a transient error, as a
failed lookup would be retried), and nothing is re-resolved while the process runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from dynamiclora_dev.localcluster.podspec import LocalLaunch, PodSpecError

_SUFFIXES = ("", ".{ns}.svc", ".{ns}.svc.cluster.local")


def pod_names(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Every DNS name of a pod with a hostname and a subdomain -> its IP (pods without an IP left out)."""
    out: dict[str, str] = {}
    for pod in pods:
        spec, ip = pod.get("spec") or {}, (pod.get("status") or {}).get("podIP")
        host, sub, ns = spec.get("hostname"), spec.get("subdomain"), pod["metadata"].get("namespace", "default")
        if ip and host and sub:
            for suffix in _SUFFIXES:
                out[f"{host}.{sub}{suffix.format(ns=ns)}"] = ip
    return out


def _pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(names, key=len, reverse=True)  # the longest form of a name first
    if not ordered:
        return None
    return re.compile(r"(?<![A-Za-z0-9.-])(" + "|".join(map(re.escape, ordered)) + r")(?![A-Za-z0-9-]|\.[A-Za-z0-9])")


def resolve(plan: LocalLaunch, pod: Mapping[str, Any], peers: Iterable[Mapping[str, Any]]) -> LocalLaunch:
    """``plan`` with the pod names of ``peers`` in its argv and environment replaced by their IPs.

    Raises:
        PodSpecError: (transient) a name in the pod's own subdomain whose pod has no IP yet.
    """
    names = pod_names(peers)
    pattern = _pattern(names)

    def sub(text: str) -> str:
        return pattern.sub(lambda m: names[m.group(1)], text) if pattern else text

    argv, env = [sub(a) for a in plan.argv], {k: sub(v) for k, v in plan.env.items()}
    _check_unresolved(pod, [*argv, *env.values()])
    return replace(plan, argv=argv, env=env)


def _check_unresolved(pod: Mapping[str, Any], texts: list[str]) -> None:
    subdomain = (pod.get("spec") or {}).get("subdomain")
    if not subdomain:
        return
    label, ns = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", re.escape(pod["metadata"].get("namespace", "default"))
    # <name>.<subdomain>, alone or followed by the namespace's service domain (not by another domain)
    end = rf"(?![A-Za-z0-9-]|\.(?!{ns}\.svc)[A-Za-z0-9])"
    unresolved = re.compile(rf"(?<![A-Za-z0-9.-])({label}\.{re.escape(subdomain)}){end}")
    for text in texts:
        if m := unresolved.search(text):
            raise PodSpecError(f"pod {pod['metadata']['name']}: {m.group(1)} has no pod IP yet (cluster DNS stand-in)",
                               transient=True)  # fmt: skip
