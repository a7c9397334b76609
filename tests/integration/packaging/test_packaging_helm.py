"""helm lint/template of charts/dynamiclora, schema checks, and a real install on the local control plane.

helm is built from the Go module proxy by ``hack/helm.sh`` (cached in ~/.cache/dynamiclora/bin). The
API server validates every rendered object on install (the schema validation kubeconform would do
offline, but against the real OpenAPI and the chart's CRDs), and RBAC is checked with
SubjectAccessReviews as the chart's ServiceAccount.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_promhelpers import free_port, prometheus

from dynamiclora.cli import build_parser
from dynamiclora.kube import RESOURCES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "dynamiclora"
ALL_ON = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
          "--set", "watchNamespace=team"]


@pytest.fixture(scope="session")
def helm() -> str:
    proc = subprocess.run(["bash", str(ROOT / "hack" / "helm.sh")], capture_output=True, text=True,
                          timeout=3600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/dynamiclora-helm/cache", HELM_CONFIG_HOME="/tmp/dynamiclora-helm/cfg",
               HELM_DATA_HOME="/tmp/dynamiclora-helm/data")
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=300, check=False, env=env)


def render(helm: str, *extra: str) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", "dynamiclora", str(CHART), "--namespace", "dynamiclora-system", *extra)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_lint_strict(helm: str) -> None:
    for extra in ([], ALL_ON):
        proc = run_helm(helm, "lint", "--strict", str(CHART), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def test_template_objects(helm: str) -> None:
    docs = render(helm, *ALL_ON)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                            "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap", "ConfigMap",
                            "Role", "RoleBinding", "NetworkPolicy", "Secret"])  # fmt: skip
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and [p["port"] for p in policy["ingress"][0]["ports"]] == [8080, 8081]
    leader = {d["kind"]: d for d in docs if d["metadata"]["name"].endswith("-leader")}
    # Leader election: one Lease in the release's namespace, wherever the watched objects are.
    assert leader["Role"]["metadata"]["namespace"] == leader["RoleBinding"]["metadata"]["namespace"] != "team"
    assert leader["Role"]["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                        "verbs": ["get", "create", "update"]}]  # fmt: skip
    by_kind = {d["kind"]: d for d in docs if not d["metadata"]["name"].endswith("-leader")}
    # watchNamespace: the rights on objects (Secrets included) are a Role there; cluster-wide only discovery.
    assert by_kind["Role"]["metadata"]["namespace"] == "team"
    assert by_kind["RoleBinding"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                 "name": "dynamiclora"}  # fmt: skip
    assert any("secrets" in r["resources"] for r in by_kind["Role"]["rules"])
    cluster_wide = {res for r in by_kind["ClusterRole"]["rules"] for res in r["resources"]}
    assert cluster_wide == {"customresourcedefinitions", "namespaces"}
    # Read-only: get is whether Kubeflow Trainer's TrainJob CRD is installed.
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in by_kind["ClusterRole"]["rules"])
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["command"] == ["dynamiclora"]
    assert container["args"][0] == "run" and "--namespace=team" in container["args"]
    parsed = build_parser().parse_args(container["args"])  # the rendered command line is a valid `dynamiclora run`
    assert (parsed.namespace, parsed.metrics_port) == ("team", 8080)
    assert parsed.allowed_images == "ghcr.io/dynamiclora/,vllm/,docker.io/vllm/"  # secure by default
    assert parsed.allowed_service_accounts is None and parsed.secret_label is None
    assert (parsed.audit_compact_threshold, parsed.audit_keep_loose) == (256, 32)
    # The audit key: generated into a Secret kept on uninstall, handed to the operator as its env var.
    secret = by_kind["Secret"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(secret["data"]["key"])) == 48
    (env,) = [e for e in container["env"] if e["name"] == "DYNAMICLORA_AUDIT_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "key"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert container["image"] == "ghcr.io/dynamiclora/operator:0.1.0"
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text(encoding="utf-8"))
    assert by_kind["PrometheusRule"]["spec"] == rules
    sm = by_kind["ServiceMonitor"]["spec"]
    assert sm["endpoints"][0]["port"] == "metrics"
    assert sm["selector"]["matchLabels"].items() <= by_kind["Service"]["metadata"]["labels"].items()
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text(encoding="utf-8"))


def test_template_defaults_and_digest(helm: str) -> None:
    docs = render(helm, "--set", "image.digest=sha256:" + "a" * 64, "--set", "dashboards.enabled=false")
    kinds = {d["kind"] for d in docs}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds and "ConfigMap" not in kinds
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "a" * 64)


@pytest.mark.parametrize(("settings", "secret"), [
    (["--set", "audit.existingSecret=team-audit-key"], "team-audit-key"),  # the user's Secret, none generated
    (["--set", "audit.generateKey=false"], None),  # no key: the operator never compacts
])
def test_template_audit_key_choices(helm: str, settings: list[str], secret: str | None) -> None:
    docs = render(helm, *settings)
    assert "Secret" not in {d["kind"] for d in docs}
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if e["name"] == "DYNAMICLORA_AUDIT_KEY"]
    assert refs == ([secret] if secret else [])
    proc = run_helm(helm, "template", "x", str(CHART), "--set", "audit.keepLoose=300")
    assert proc.returncode != 0 and "audit.keepLoose must be below audit.compactThreshold" in proc.stderr


@pytest.mark.parametrize(("setting", "complaint"), [
    ("replicaCount=4", "replicaCount"),
    ("imagePullPolicy=Always", "imagePullPolicy"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("metrics.port=70000", "port"),
    ("watchNamespace=Not_A_Namespace", "watchNamespace"),
    ("audit.existingSecret=Not_A_Secret", "existingSecret"),
])
def test_schema_rejects_bad_values(helm: str, setting: str, complaint: str) -> None:
    proc = run_helm(helm, "template", "x", str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


@pytest.fixture(scope="module")
def installed(helm: str, local_cluster: Any) -> Iterator[Any]:
    kc = local_cluster.kubeconfig
    proc = run_helm(helm, "install", "dynamiclora", str(CHART), "--namespace", "dynamiclora-system",
                    "--create-namespace", "--set", "extraArgs={--resync-seconds=30}", kubeconfig=kc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield local_cluster


def test_install_creates_everything(installed: Any) -> None:
    kubectl = installed.kubectl
    for crd in ("swarms.dynamiclora.io", "loratiers.dynamiclora.io", "migrationpolicies.dynamiclora.io"):
        kubectl("get", "crd", crd)
    for obj in ("deployment/dynamiclora", "serviceaccount/dynamiclora", "service/dynamiclora-metrics",
                "configmap/dynamiclora-dashboard-memory", "configmap/dynamiclora-dashboard-serving"):
        kubectl("-n", "dynamiclora-system", "get", obj)
    kubectl("get", "clusterrole/dynamiclora", "clusterrolebinding/dynamiclora", "clusterrole/dynamiclora-discovery",
            "clusterrolebinding/dynamiclora-discovery")
    # The custom resources of examples/ are accepted by the installed CRDs (server-side dry run).
    for example in ("tiers.yaml", "migrationpolicy.yaml", "swarm.yaml"):
        kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples" / example))


def _can_i(kubectl: Any, verb: str, resource: str, namespace: str = "team") -> bool:
    sa = "system:serviceaccount:dynamiclora-system:dynamiclora"
    proc = kubectl("auth", "can-i", verb, resource, "--as", sa, "-n", namespace, check=False)
    return bool(proc.stdout.strip() == "yes")


def test_service_account_has_exactly_the_operators_rights(installed: Any) -> None:
    kubectl = installed.kubectl
    for kind, res in RESOURCES.items():
        group = "" if res.api_version == "v1" else res.api_version.rsplit("/", 1)[0]
        resource = f"{res.plural}.{group}" if group else res.plural
        verb = {"Event": "create", "ConfigMap": "create", "EndpointSlice": "list"}.get(kind, "get")
        assert _can_i(kubectl, verb, resource), f"{kind}: cannot {verb}"
    assert _can_i(kubectl, "patch", "loratiers.dynamiclora.io/status")
    assert _can_i(kubectl, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert _can_i(kubectl, "update", "leases.coordination.k8s.io", "dynamiclora-system")  # leader election
    assert not _can_i(kubectl, "update", "leases.coordination.k8s.io", "team")
    assert _can_i(kubectl, "create", "secrets")  # the generated vLLM keys, created once
    assert _can_i(kubectl, "get", "configmaps")  # the guard ConfigMap is compared before an apply
    for verb, resource in (("list", "secrets"), ("delete", "pods"), ("list", "configmaps"), ("delete", "configmaps"),
                           ("update", "secrets"), ("delete", "secrets"),
                           ("delete", "swarms.dynamiclora.io"), ("create", "clusterroles.rbac.authorization.k8s.io"),
                           ("update", "statefulsets.apps"), ("delete", "statefulsets.apps"),
                           ("delete", "endpointslices.discovery.k8s.io"), ("get", "endpointslices.discovery.k8s.io"),
                           ("create", "persistentvolumeclaims")):
        assert not _can_i(kubectl, verb, resource), f"the operator should not {verb} {resource}"


def _service_account_kubeconfig(cluster: Any, path: Path) -> Path:
    token = cluster.kubectl("-n", "dynamiclora-system", "create", "token", "dynamiclora", "--duration=1h").stdout
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.strip()}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(json.dumps(config))
    return path


def test_operator_runs_with_the_chart_rbac_and_prometheus_scrapes_it(installed: Any, tmp_path: Path) -> None:
    """The real `dynamiclora run` under the chart's ServiceAccount: no 403, children created, metrics scraped."""
    ns = "pkg-operator"
    installed.kubectl("create", "namespace", ns)
    kubeconfig = _service_account_kubeconfig(installed, tmp_path / "operator.kubeconfig")
    metrics_port = free_port()
    health_port = next(p for p in iter(free_port, None) if p != metrics_port)
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynamiclora.cli", "run", f"--kubeconfig={kubeconfig}", f"--namespace={ns}",
             "--metrics-host=127.0.0.1", f"--metrics-port={metrics_port}",
             f"--liveness=http://127.0.0.1:{health_port}/healthz", "--resync-seconds=2",
             "--leader-election-namespace=dynamiclora-system"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            docs = []
            for example in ("tiers.yaml", "migrationpolicy.yaml", "swarm.yaml"):
                for doc in yaml.safe_load_all((ROOT / "examples" / example).read_text(encoding="utf-8")):
                    if doc:
                        doc["metadata"]["namespace"] = ns
                        docs.append(doc)
            installed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
            deadline = time.monotonic() + 60
            while True:  # bounded: until the operator serves /metrics
                assert proc.poll() is None, log_path.read_text()[:6000]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log_path.read_text()[-5000:]
                    time.sleep(0.5)
            with prometheus(tmp_path, f"127.0.0.1:{metrics_port}") as prom:
                swarm = prom.wait_for(f'dynamiclora_swarm_desired_pods{{namespace="{ns}"}}', timeout=90)
                assert swarm[0]["metric"]["swarm"] == "support"
                kinds = {r["metric"]["kind"] for r in prom.wait_for('dynamiclora_reconcile_total{result="ok"}')}
                assert "Swarm" in kinds, kinds
                assert prom.wait_for("dynamiclora_leader == 1")  # it won the election under the chart's Role
            sts = installed.kubectl("-n", ns, "get", "statefulsets", "-o", "json").stdout
            assert json.loads(sts)["items"], "the operator created no StatefulSet"
            assert urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5).status == 200
            assert proc.poll() is None, log_path.read_text()[-3000:]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    lease = json.loads(installed.kubectl("-n", "dynamiclora-system", "get", "lease", "dynamiclora-operator",
                                         "-o", "json").stdout)  # fmt: skip
    assert not lease["spec"].get("holderIdentity"), lease["spec"]  # released on a clean stop
    denied = re.findall(r".*(?:HTTP 403|\(403\)|[Ff]orbidden).*", log_path.read_text())
    assert not denied, "the chart's ClusterRole is missing rights the operator uses:\n" + "\n".join(denied[:20])


def _audit_key(kubectl: Any) -> str:
    proc = kubectl("-n", "dynamiclora-system", "get", "secret", "dynamiclora-audit-key", "-o", "jsonpath={.data.key}")
    return str(proc.stdout)


def test_upgrade_keeps_the_audit_key(helm: str, installed: Any) -> None:
    before = _audit_key(installed.kubectl)
    assert len(base64.b64decode(before)) == 48
    proc = run_helm(helm, "upgrade", "dynamiclora", str(CHART), "--namespace", "dynamiclora-system", "--reuse-values",
                    kubeconfig=installed.kubeconfig)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _audit_key(installed.kubectl) == before  # a new key would fail every older segment's signature


def test_uninstall_keeps_crds(helm: str, installed: Any) -> None:
    proc = run_helm(helm, "uninstall", "dynamiclora", "--namespace", "dynamiclora-system",
                    kubeconfig=installed.kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert installed.kubectl("-n", "dynamiclora-system", "get", "deployment/dynamiclora", check=False).returncode != 0
    installed.kubectl("get", "crd", "swarms.dynamiclora.io")
    assert _audit_key(installed.kubectl)  # kept: the segments outlive the release
