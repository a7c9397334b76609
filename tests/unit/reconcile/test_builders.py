"""Table tests of the pure builders: spec -> StatefulSet / Service / LoRATiers / Jobs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.inference import build_service, build_statefulset, vllm_args
from dynamiclora.builders.jobs import (
    ConsolidationInputs,
    TrainingInputs,
    build_consolidation_job,
    build_training_job,
    tier_ref,
    training_config,
)
from dynamiclora.builders.names import dns_name, training_job_name
from dynamiclora.builders.tiers import build_agent_tiers, stack_tier_names
from dynamiclora.cli import build_parser
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.options import StackSpec, TrainConfig, from_namespace


def _owned(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["metadata"]["uid"] = "uid-1"
    return body


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize(
    ("change", "flag", "expected"),
    [
        ({"maxLoras": 7}, "--max-loras", "7"),
        ({"maxLoraRank": 128}, "--max-lora-rank", "128"),
        ({"maxModelLen": 512}, "--max-model-len", "512"),
        ({"maxCpuLoras": 32}, "--max-cpu-loras", "32"),
        ({"port": 9000}, "--port", "9000"),
        ({"dtype": "bfloat16"}, "--dtype", "bfloat16"),
    ],
)
def test_vllm_args_follow_the_spec(
    swarm_body: dict[str, Any], settings: OperatorSettings, change: dict[str, Any], flag: str, expected: str
) -> None:
    swarm_body["spec"]["inference"].update(change)
    args = vllm_args(Swarm.model_validate(swarm_body), settings)
    assert _arg(args, flag) == expected
    assert "--enable-lora" in args
    assert _arg(args, "--served-model-name") == "tiny-llama"


def test_statefulset_shape(swarm_body: dict[str, Any], settings: OperatorSettings) -> None:
    swarm_body["spec"]["inference"]["apiKeySecretRef"] = {"name": "k", "key": "api-key"}
    body = _owned(swarm_body)
    sts = build_statefulset(body, Swarm.model_validate(body), settings)
    pod = sts["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert sts["spec"]["replicas"] == 2
    assert sts["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    # No key of vLLM's own: the guard middleware checks the client key (the spec's) and the operator's.
    assert "VLLM_API_KEY" not in env and "--api-key" not in container["args"]
    assert env["DYNAMICLORA_CLIENT_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "k", "key": "api-key"}
    assert env["DYNAMICLORA_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "support-vllm-operator-key",
                                                                         "key": "operator-key"}
    assert container["args"][-2:] == ["--middleware", "dynamiclora_guard.AdminGuard"]
    assert env["PYTHONPATH"]["value"] == "/opt/dynamiclora/guard"
    assert {"name": "guard", "mountPath": "/opt/dynamiclora/guard", "readOnly": True} in container["volumeMounts"]
    assert {"name": "guard", "configMap": {"name": "support-vllm-guard"}} in pod["spec"]["volumes"]
    assert len(pod["metadata"]["annotations"]["dynamiclora.io/guard"]) == 16
    assert pod["metadata"]["labels"]["dynamiclora.io/executor"] == "local"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert f"{settings.pvc_mount_root}/ckpt" in mounts
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    svc = build_service(body, Swarm.model_validate(body))
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    ("resources", "env", "threads"),
    [
        ({"limits": {"cpu": "1"}}, {}, "1"),
        ({"limits": {"cpu": "1500m"}}, {}, "2"),
        ({"limits": {"cpu": 4}}, {}, "4"),
        ({"limits": {"cpu": "100m"}}, {}, "1"),  # never zero threads
        ({"requests": {"cpu": "2"}}, {}, None),  # no quota: torch's own default is right
        ({}, {}, None),
        ({"limits": {"cpu": "1"}}, {"OMP_NUM_THREADS": "3"}, "3"),  # the user's setting wins
        ({"limits": {"cpu": "lots"}}, {}, None),  # unreadable: left to torch, not a crash
    ],
)
def test_vllm_threads_follow_the_cpu_limit(swarm_body: dict[str, Any], settings: OperatorSettings,
                                           resources: dict[str, Any], env: dict[str, str],
                                           threads: str | None) -> None:  # fmt: skip
    swarm_body["spec"]["inference"].update(resources=resources, env=env)
    body = _owned(swarm_body)
    sts = build_statefulset(body, Swarm.model_validate(body), settings)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    got = [e["value"] for e in container["env"] if e["name"] == "OMP_NUM_THREADS"]
    assert got == ([threads] if threads else [])


def test_generated_keys_and_the_guard(swarm_body: dict[str, Any]) -> None:
    from dynamiclora.builders.guard import build_guard_config_map, build_key_secrets
    from dynamiclora.serving.launcher import guard_source

    body = _owned(swarm_body)
    secrets = build_key_secrets(body, Swarm.model_validate(body))
    assert [(s["metadata"]["name"], *s["data"]) for s in secrets] == [
        ("support-vllm-operator-key", "operator-key"), ("support-vllm-client-key", "api-key")]
    assert all(s["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for s in secrets)  # go with the Swarm
    again = build_key_secrets(body, Swarm.model_validate(body))
    assert secrets[0]["data"] != again[0]["data"]  # drawn afresh: only the first creation counts
    body["spec"]["inference"]["apiKeySecretRef"] = {"name": "mine", "key": "k"}
    assert [s["metadata"]["name"] for s in build_key_secrets(body, Swarm.model_validate(body))] == [
        "support-vllm-operator-key"]  # the client key is the user's
    cm = build_guard_config_map(body)
    assert cm["data"] == {"dynamiclora_guard.py": guard_source()}


def test_no_executor_label_in_production(swarm_body: dict[str, Any]) -> None:
    body = _owned(swarm_body)
    sts = build_statefulset(body, Swarm.model_validate(body), OperatorSettings())
    assert "dynamiclora.io/executor" not in sts["spec"]["template"]["metadata"]["labels"]


def test_agent_tiers_and_stack(swarm_body: dict[str, Any]) -> None:
    body = _owned(swarm_body)
    sw = Swarm.model_validate(body)
    tiers = build_agent_tiers(body, sw)
    names = [t["metadata"]["name"] for t in tiers]
    assert names == ["support-alice-context", "support-alice-agent", "support-bob-context", "support-bob-agent"]
    by_name = {t["metadata"]["name"]: t for t in tiers}
    assert by_name["support-bob-context"]["spec"]["rank"] == 8
    ctx, agent = by_name["support-alice-context"]["spec"], by_name["support-alice-agent"]["spec"]
    # An agent tier only receives migrated context components: same adapter shape, nothing to train.
    assert (agent["rank"], agent["alpha"], agent["targetModules"]) == (16, ctx["alpha"], ctx["targetModules"])
    assert "training" not in agent and "plasticity" not in agent
    assert agent["qualityGate"]["maxRegression"] == 0.02 and agent["retention"]["keepVersions"] == 20
    for t in tiers:  # every generated tier is valid under the API the user's tiers obey
        LoRATierSpec.model_validate(t["spec"])
        assert t["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert stack_tier_names("support", sw, "alice") == [
        "support-alice-context", "support-alice-agent", "support-swarm", "billing-domain",
    ]  # fmt: skip


def test_training_job(swarm_body: dict[str, Any], settings: OperatorSettings) -> None:
    sw = Swarm.model_validate(swarm_body)
    tier_body = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
                 "metadata": {"name": "support-alice-context", "namespace": "default", "uid": "u2"}}  # fmt: skip
    spec = LoRATierSpec.model_validate(build_agent_tiers(_owned(swarm_body), sw)[0]["spec"])
    inputs = TrainingInputs(model_path="/m", storage=sw.spec.storage, experience_prefix="interactions",
                            bad_records="skip", new_records=20, total_records=50, init_version=3,
                            frozen=[("support-alice-agent", 2)])  # fmt: skip
    name = training_job_name("support-alice-context", 4)
    job = build_training_job(tier_body, spec, inputs, name, settings)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    store = f"file://{settings.pvc_mount_root}/ckpt/dl"
    assert args[0] == "train"
    assert _arg(args, "--output-store") == store
    assert _arg(args, "--data") == f"{settings.pvc_mount_root}/ckpt/dl/interactions/default/support/alice"
    assert _arg(args, "--init-from") == tier_ref(store, "default", "support-alice-context", 3)
    assert _arg(args, "--frozen") == f"{store}/default/support-alice-agent/v000002"
    assert _arg(args, "--max-records") == "20"
    assert _arg(args, "--steps") == "30" and _arg(args, "--batch-size") == "4"
    # The contract: the entrypoint's own parser reads back exactly the config the operator built.
    cfg = from_namespace(TrainConfig, build_parser().parse_args(args))
    assert cfg == training_config(tier_body, spec, inputs, name, settings)
    assert cfg.gate_max_regression == 0.05 and cfg.screen_threshold == 0.6 and cfg.work_dir == f"/work/{name}"
    assert job["metadata"]["annotations"]["dynamiclora.io/records"] == "50"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert name == "support-alice-context-train-v4"


def test_consolidation_job(swarm_body: dict[str, Any], settings: OperatorSettings) -> None:
    sw = Swarm.model_validate(swarm_body)
    policy = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
              "metadata": {"name": "p", "namespace": "default", "uid": "u3"}}  # fmt: skip
    inputs = ConsolidationInputs("consensus", "support-swarm", sw.spec.storage,
                                 agent_tiers=["a-agent", "b-agent"], weights=[1.0, 0.5])  # fmt: skip
    from dynamiclora.api.tier import TrainingTemplate

    job = build_consolidation_job(policy, inputs, "mig-p-support-swarm-3", TrainingTemplate(), settings)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["consolidate", "--mode", "consensus"]
    assert args.count("--agent-tier") == 2
    assert args[args.index("--weights") + 1 : args.index("--weights") + 3] == ["1.0", "0.5"]
    # The contract: the entrypoint's own parser reads back exactly the config the operator built.
    from dynamiclora.builders.jobs import consolidation_config
    from dynamiclora.training.options import ConsolidateConfig

    assert from_namespace(ConsolidateConfig, build_parser().parse_args(args)) == consolidation_config(
        "default", inputs, settings)


def _restricted(pod: dict[str, Any]) -> list[str]:
    """What of the restricted Pod Security Standard ``pod`` breaks (the API server's e2e check, in brief)."""
    bad = []
    sc = pod.get("securityContext") or {}
    if not sc.get("runAsNonRoot") or sc.get("runAsUser") == 0:
        bad.append("pod runs as root")
    if (sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad.append("pod seccomp")
    if pod.get("automountServiceAccountToken") is not False:
        bad.append("service-account token mounted")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        bad.append("hostPath volume")
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        csc = c.get("securityContext") or {}
        if csc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: privilege escalation")
        if (csc.get("capabilities") or {}).get("drop") != ["ALL"]:
            bad.append(f"{c['name']}: capabilities")
    return bad


def test_every_pod_meets_the_restricted_standard(swarm_body: dict[str, Any]) -> None:
    from dynamiclora.api.tier import TrainingTemplate

    production = OperatorSettings(pvc_mount_root="/var/lib/dynamiclora/pvc")  # no local executor: no hostPath
    swarm_body["spec"]["baseModel"] = {"name": "m", "s3Uri": "s3://models/llama"}  # + the fetch-model init container
    swarm_body["spec"]["storage"] = {"s3": {"bucket": "ckpt-bucket", "prefix": "p"}}  # + the adapter-sync sidecar
    sw = Swarm.model_validate(swarm_body)
    sts = build_statefulset(_owned(swarm_body), sw, production)["spec"]["template"]["spec"]
    assert {c["name"] for c in [*sts["initContainers"], *sts["containers"]]} == {"fetch-model", "vllm", "adapter-sync"}
    cons = ConsolidationInputs("migrate", "t", sw.spec.storage, source_tier="s")
    job = build_consolidation_job(_owned(swarm_body), cons, "j", TrainingTemplate(), production)
    for pod in (sts, job["spec"]["template"]["spec"]):
        assert _restricted(pod) == [], pod


@pytest.mark.parametrize("claim", ["models", "ckpt"])
def test_jobs_mount_the_base_models_claim_read_only(claim: str, swarm_body: dict[str, Any],
                                                    settings: OperatorSettings) -> None:  # fmt: skip
    """A base model on a PVC is readable where model_path() says, in training, consolidation and compose Jobs."""
    from dynamiclora.api.tier import TrainingTemplate
    from dynamiclora.builders.inference import model_path
    from dynamiclora.builders.jobs import build_compose_job, compose_config

    swarm_body["spec"]["baseModel"] = {"name": "m", "pvc": {"claimName": claim, "path": "llama"}}
    sw = Swarm.model_validate(swarm_body)
    tier_body = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
                 "metadata": {"name": "support-alice-context", "namespace": "default", "uid": "u2"}}  # fmt: skip
    spec = LoRATierSpec.model_validate(build_agent_tiers(_owned(swarm_body), sw)[0]["spec"])
    inputs = TrainingInputs(model_path=model_path(sw, settings), storage=sw.spec.storage, experience_prefix="i",
                            bad_records="skip", new_records=1, total_records=1, init_version=None,
                            model_claim=claim)  # fmt: skip
    cons = ConsolidationInputs("migrate", "t", sw.spec.storage, source_tier="s", model_claim=claim)
    stack = StackSpec("alice", "0123456789ab", "c1", (("context", "file:///x/default/t/v000001"),))
    cfg = compose_config(_owned(swarm_body), sw.spec.storage, [stack], 16, "m", model_path(sw, settings), settings)
    jobs = [build_training_job(tier_body, spec, inputs, "j1", settings),
            build_consolidation_job(tier_body, cons, "j2", TrainingTemplate(), settings),
            build_compose_job(_owned(swarm_body), cfg, "j3", TrainingTemplate(), sw.spec.storage, settings, claim)]
    root = f"{settings.pvc_mount_root}/{claim}"
    assert model_path(sw, settings) == f"{root}/llama"
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert root in mounts, mounts  # once: the storage claim, when it is this one, is not mounted twice
        assert len(pod["volumes"]) == len({v["name"] for v in pod["volumes"]})
        if claim != "ckpt":
            assert mounts[root]["readOnly"] is True


@pytest.mark.parametrize("n", [10, 63, 64, 200])
def test_dns_names_stay_within_limits(n: int) -> None:
    name = dns_name("x" * n, "train", "v1")
    assert len(name) <= 63 and name == dns_name("x" * n, "train", "v1")


def test_cached_gets_serve_swarms_from_cache_until_written() -> None:
    from dynamiclora.kube import CachedGets

    from .fakekube import FakeKube

    inner = FakeKube()
    inner.add({"kind": "Swarm", "metadata": {"name": "s"}, "spec": {"x": 1}})
    kube = CachedGets(inner, {"Swarm": 60})
    assert kube.get("Swarm", "default", "s")["spec"] == {"x": 1}  # type: ignore[index]
    inner.objects[("Swarm", "default", "s")]["spec"] = {"x": 2}
    assert kube.get("Swarm", "default", "s")["spec"] == {"x": 1}  # type: ignore[index]  # cached
    kube.apply({"kind": "Swarm", "metadata": {"name": "s", "namespace": "default"}, "spec": {"x": 3}})
    assert kube.get("Swarm", "default", "s")["spec"] == {"x": 3}  # type: ignore[index]  # write forgets


def test_the_object_a_pass_reconciles_is_read_past_the_cache() -> None:
    """A Swarm changed within the cache's TTL: the handlers' read (a retry, a finished Job's follow-up, an
    overtaken body) gets the change, not the cached copy whose pass would re-apply the old template."""
    from dynamiclora.kube import CachedGets

    from .fakekube import FakeKube

    inner = FakeKube()
    inner.add({"kind": "Swarm", "metadata": {"name": "s"}, "spec": {"x": 1}})
    kube = CachedGets(inner, {"Swarm": 60})
    assert kube.get("Swarm", "default", "s")["spec"] == {"x": 1}  # type: ignore[index]
    inner.objects[("Swarm", "default", "s")]["spec"] = {"x": 2}
    assert kube.read_through("Swarm", "default", "s")["spec"] == {"x": 2}  # type: ignore[index]
    assert kube.get("Swarm", "default", "s")["spec"] == {"x": 2}  # type: ignore[index]  # the cache refreshed
    assert inner.read_through("Swarm", "default", "s")["spec"] == {"x": 2}  # type: ignore[index]  # no cache


def test_cached_gets_remember_secrets_found_or_not_and_forget_what_they_write() -> None:
    from dynamiclora.kube import CachedGets

    from .fakekube import FakeKube

    class Counting(FakeKube):
        gets: list[str] = []

        def get(self, kind: str, namespace: str, name: str) -> dict[str, object] | None:
            self.gets.append(kind)
            return super().get(kind, namespace, name)

    inner = Counting()
    kube = CachedGets(inner)
    assert kube.get("Secret", "default", "k") is None
    inner.add({"kind": "Secret", "metadata": {"name": "k"}, "data": {"a": "MQ=="}})
    assert kube.get("Secret", "default", "k") is None  # someone else's write: seen within the TTL
    kube.create({"kind": "Secret", "metadata": {"name": "k", "namespace": "default"}, "data": {"a": "MQ=="}})
    for _ in range(5):  # our own write: seen at once, then one GET per TTL, not one per reader
        assert kube.get("Secret", "default", "k")["data"] == {"a": "MQ=="}  # type: ignore[index]
    assert inner.gets == ["Secret", "Secret"]
    assert kube.get("Pod", "default", "p") is None and inner.gets[-1] == "Pod"  # other kinds: not cached


def test_cached_gets_drop_expired_entries_past_a_bound() -> None:
    from dynamiclora.kube import CachedGets

    from .fakekube import FakeKube

    kube = CachedGets(FakeKube(), {"Secret": 1e-9})
    kube.PRUNE_AT = 10  # type: ignore[misc]
    for i in range(100):
        kube.get("Secret", "default", f"s{i}")
    assert len(kube._cache) <= 11 and len(kube._flights) <= 11


def test_cached_gets_fetch_once_for_concurrent_readers() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from dynamiclora.kube import CachedGets

    from .fakekube import FakeKube

    class Slow(FakeKube):
        gets = 0

        def get(self, kind: str, namespace: str, name: str) -> dict[str, object] | None:
            with lock:
                Slow.gets += 1
            time.sleep(0.05)  # a large Swarm takes a while to fetch
            return super().get(kind, namespace, name)

    lock = threading.Lock()
    inner = Slow()
    inner.add({"kind": "Swarm", "metadata": {"name": "s"}, "spec": {"x": 1}})
    kube = CachedGets(inner, {"Swarm": 60})
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda _: kube.get("Swarm", "default", "s"), range(16)))
    assert all(g and g["spec"] == {"x": 1} for g in got) and Slow.gets == 1
