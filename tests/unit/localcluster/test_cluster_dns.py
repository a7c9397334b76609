"""The executor's stand-in for cluster DNS: pod names of a headless Service replaced by pod IPs at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynamiclora_dev.localcluster.cluster_dns import pod_names, resolve
from dynamiclora_dev.localcluster.podspec import LocalLaunch, PodSpecError


def _pod(name: str, host: str | None, sub: str | None, ip: str | None, ns: str = "team") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"hostname": host, "subdomain": sub},
            "status": {"podIP": ip} if ip else {}}  # fmt: skip


def _plan(*argv: str, **env: str) -> LocalLaunch:
    return LocalLaunch(argv=list(argv), env=dict(env), cwd=Path("/"), files={}, dirs=[])


def test_every_form_of_a_pod_name_is_known_once_the_pod_has_an_ip() -> None:
    names = pod_names([_pod("j-0-abc", "j-0", "j", "10.0.1.7"), _pod("j-1-def", "j-1", "j", None),
                       _pod("plain", None, None, "10.0.1.9")])  # fmt: skip
    assert names == {"j-0.j": "10.0.1.7", "j-0.j.team.svc": "10.0.1.7", "j-0.j.team.svc.cluster.local": "10.0.1.7"}


def test_names_in_arguments_and_environment_become_ips_and_nothing_else_changes() -> None:
    me, master = _pod("j-1-def", "j-1", "j", "10.0.1.8"), _pod("j-0-abc", "j-0", "j", "10.0.1.7")
    plan = _plan("torchrun", "--rdzv-endpoint=j-0.j:29400", "--rdzv-id=j", "--note=j-0.jx",
                 MASTER="j-0.j.team.svc.cluster.local", URL="http://j-0.j/x", OTHER="a-j-0.j.b")  # fmt: skip
    out = resolve(plan, me, [me, master])
    assert out.argv == ["torchrun", "--rdzv-endpoint=10.0.1.7:29400", "--rdzv-id=j", "--note=j-0.jx"]
    assert out.env == {"MASTER": "10.0.1.7", "URL": "http://10.0.1.7/x", "OTHER": "a-j-0.j.b"}


def test_a_peer_of_the_own_subdomain_without_an_ip_yet_delays_the_start() -> None:
    me = _pod("j-1-def", "j-1", "j", "10.0.1.8")
    with pytest.raises(PodSpecError, match=r"j-0\.j has no pod IP yet") as err:
        resolve(_plan("torchrun", "--rdzv-endpoint=j-0.j:29400"), me, [me, _pod("j-0-abc", "j-0", "j", None)])
    assert err.value.transient
    # A pod without a subdomain has no peers to wait for: its text is left as it is.
    lone = _pod("p", None, None, "10.0.1.9")
    assert resolve(_plan("curl", "j-0.j"), lone, [lone]).argv == ["curl", "j-0.j"]
