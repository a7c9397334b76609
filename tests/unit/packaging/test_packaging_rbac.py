"""The chart's ClusterRole grants exactly what the operator (dynamiclora.kube.RESOURCES) and kopf use.

Adding a kind to ``RESOURCES`` without deciding its verbs here and in
``charts/dynamiclora/templates/rbac.yaml`` fails ``test_every_resource_has_decided_verbs``; granting
anything the code does not use fails ``test_cluster_role_is_exactly_what_is_needed``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dynamiclora import GROUP
from dynamiclora.kube import RESOURCES

ROOT = Path(__file__).resolve().parents[3]
RBAC = ROOT / "charts" / "dynamiclora" / "templates" / "rbac.yaml"

APPLIED = frozenset({"get", "list", "watch", "create", "patch"})  # children: server-side apply, GC by owner
DELETED = APPLIED | {"delete"}  # children the operator itself deletes
WATCHED = frozenset({"get", "list", "watch", "patch"})  # kopf's progress annotations on user-owned objects

# Verbs per kind of dynamiclora.kube.RESOURCES, and why.
VERBS: dict[str, frozenset[str]] = {
    "Swarm": WATCHED,
    "MigrationPolicy": WATCHED,
    "LoRATier": DELETED,  # per-agent tiers are created and deleted by the Swarm controller
    "StatefulSet": APPLIED,
    "Job": DELETED,  # a failed compose Job is deleted so that the next pass retries
    # The inference Service is GC'd with its Swarm; an agent's route Service is deleted when the agent goes.
    "Service": DELETED,
    # An agent's route: the operator writes its slice (server-side apply) and lists the Swarm's slices.
    "EndpointSlice": frozenset({"list", "create", "patch"}),
    "Pod": frozenset({"get", "list", "watch"}),  # pod IPs and readiness (hot-swap); failed Jobs' messages
    # Referenced Secrets by name (S3 credentials, the operator's vLLM key); generated keys created once.
    "Secret": frozenset({"get", "create"}),
    "ConfigMap": frozenset({"get", "create", "patch"}),  # the vLLM guard middleware: read, then applied if changed
    "Event": frozenset({"create"}),
    # Kubeflow Trainer, where installed: watched for completion; delete: the deadline it does not enforce.
    "TrainJob": frozenset({"get", "list", "watch", "create", "delete"}),
    # Whether the TrainJob CRD is installed (get); kopf's discovery (list, watch).
    "CustomResourceDefinition": frozenset({"get", "list", "watch"}),
}

# kopf itself: CRD discovery, namespace discovery with --namespace (it runs standalone, no peering).
KOPF: dict[tuple[str, str], frozenset[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
    ("", "namespaces"): frozenset({"list", "watch"}),
}


def expected() -> dict[tuple[str, str], frozenset[str]]:
    out = dict(KOPF)
    for kind, res in RESOURCES.items():
        group = "" if res.api_version == "v1" else res.api_version.rsplit("/", 1)[0]
        out[(group, res.plural)] = VERBS[kind]
        if group == GROUP:
            out[(group, f"{res.plural}/status")] = frozenset({"patch"})  # Kube.patch_status
    return out


def cluster_role_rules() -> list[dict[str, list[str]]]:
    """The rules of the (Cluster)Role on objects and of kopf's discovery ClusterRole (literal YAML)."""
    docs = RBAC.read_text(encoding="utf-8").split("---")
    rules: list[dict[str, list[str]]] = []
    for role in (docs[0], docs[2]):
        rules_block = role[role.index("\nrules:") + 1:]
        assert "{{" not in rules_block, "keep the roles' rules literal so this test can read them"
        rules += yaml.safe_load(rules_block)["rules"]
    return rules


def granted() -> dict[tuple[str, str], frozenset[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in cluster_role_rules():
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected keys in {rule}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return {k: frozenset(v) for k, v in out.items()}


def test_every_resource_has_decided_verbs() -> None:
    missing = set(RESOURCES) - set(VERBS)
    assert not missing, (
        f"kinds {sorted(missing)} were added to dynamiclora.kube.RESOURCES: grant their verbs in "
        "charts/dynamiclora/templates/rbac.yaml and list them in VERBS here"
    )
    assert not set(VERBS) - set(RESOURCES), "VERBS names kinds the operator no longer uses"


def test_cluster_role_is_exactly_what_is_needed() -> None:
    want, got = expected(), granted()
    lacking = {k: sorted(v - got.get(k, frozenset())) for k, v in want.items() if v - got.get(k, frozenset())}
    extra = {k: sorted(v - want.get(k, frozenset())) for k, v in got.items() if v - want.get(k, frozenset())}
    assert not lacking, f"the ClusterRole lacks {lacking}"
    assert not extra, f"the ClusterRole grants more than the operator uses: {extra}"


def test_binding_targets_the_role_and_service_account() -> None:
    text = RBAC.read_text(encoding="utf-8")
    binding = text.split("---")[1]
    assert "kind: {{ if $ns }}RoleBinding{{ else }}ClusterRoleBinding{{ end }}" in binding
    assert 'name: {{ include "dynamiclora.fullname" . }}' in binding
    assert 'name: {{ include "dynamiclora.serviceAccountName" . }}' in binding


def test_leader_election_has_its_own_role_in_the_release_namespace() -> None:
    """The Lease is the one object outside RESOURCES: a Role in the operator's namespace, exactly these verbs."""
    from dynamiclora.kube import LEASE

    docs = RBAC.read_text(encoding="utf-8").split("---")
    role, binding = docs[4], docs[5]
    assert "kind: Role\n" in role and "namespace: {{ .Release.Namespace }}" in role
    rules = yaml.safe_load(role[role.index("\nrules:") + 1 : role.index("---") if "---" in role else None])["rules"]
    group = LEASE.api_version.rsplit("/", 1)[0]
    assert rules == [{"apiGroups": [group], "resources": [LEASE.plural], "verbs": ["get", "create", "update"]}]
    assert "kind: RoleBinding" in binding and 'name: {{ include "dynamiclora.fullname" . }}-leader' in binding
