"""The whole loop of DESIGN.md §4 on the real local control plane, plus the faults the operator must survive.

Real parts only: kube-apiserver/controller-manager/scheduler/kwok, the operator as ``dynamiclora run``,
training and consolidation Jobs run by the local executor as ``dynamiclora train|consolidate`` processes,
and a real vLLM CPU server per inference pod. Tests run in file order and share one scenario.
"""

from __future__ import annotations

import copy
import datetime as dt
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.builders.names import ANNOTATION_JOB_KIND
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.controllers.stack_consistency import LEVEL_LETTER, StackEntry, StoreView, stack_is_consistent
from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.serving.errors import VLLMError
from dynamiclora.storage.audit import AuditLog
from dynamiclora.storage.results import work_uri
from dynamiclora.storage.uri import open_store
from dynamiclora.training.work_mirror import LATEST
from dynamiclora_dev.demo.data import round_facts, write_regression_set
from dynamiclora_dev.demo.scenario import DemoConfig, Scenario, free_port
from dynamiclora_dev.localcluster.operator_env import env_dir
from dynamiclora_dev.localcluster.process import kill_tree
from dynamiclora_dev.localcluster.trainer_env import env_dir as trainer_env_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


class ServedWatch:
    """Sampled in the background all module long: every stack the Swarm reports served on all ready pods,
    and the names of the operator's metric series that had a sample (some, like a tier's screened
    fraction, exist only while its newest version is of a kind that has one)."""

    def __init__(self, sc: Scenario, agents: tuple[str, ...], every: float = 0.5) -> None:
        self.sc, self.agents, self.every = sc, agents, every
        self.seen: dict[str, set[str]] = {a: set() for a in agents}
        self.series: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(self.every):
            rounds += 1
            try:
                self._sample(rounds % 4 == 0)
            except Exception:  # an API hiccup or a restarting operator must not end the watch: sample again
                continue

    def _sample(self, metrics: bool) -> None:
        if metrics:
            self.series |= {k.split("{")[0] for k in _scrape(self.sc.metrics_port)}
        for agent in self.agents:
            entry = self.sc.served(agent)
            if entry:
                self.seen[agent].add(str(entry["servedVersion"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def scenario(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    # carol only learns in rounds (the last test); bob's tier is the one made to fail.
    # The API server refuses any pod of the namespace that breaks the restricted Pod Security Standard.
    cfg = DemoConfig(work_dir=tmp_path_factory.mktemp("e2e"), namespace="e2e", step_timeout=600,
                     agents=("alice", "bob", "carol"), pod_security="restricted")
    sc = Scenario(cfg, local_cluster)
    sc.prepare_model()
    sc.install_crds()
    sc.start_operator()
    sc.apply(sc.manifests())
    try:
        yield sc
    finally:
        sc.stop_operator()
        sc.kubectl("delete", "swarm", sc.cfg.swarm, "--wait=false", check=False)
        print(f"operator log: {sc.operator_log}")


@pytest.fixture(scope="module")
def watch(scenario: Scenario) -> Iterator[ServedWatch]:
    """Started by the first test, read by the last."""
    w = ServedWatch(scenario, ("alice", "carol"))
    yield w
    w.stop()


def _events(sc: Scenario, name: str) -> list[dict[str, Any]]:
    out = sc.kubectl("get", "events", "-n", sc.cfg.namespace, "--field-selector", f"involvedObject.name={name}",
                     "-o", "json")  # fmt: skip
    return list(json.loads(out)["items"])


def _store(sc: Scenario) -> Any:
    return open_store(f"file://{sc.pvc_root}/ckpt/dl")


def test_whole_loop(scenario: Scenario, watch: ServedWatch) -> None:
    sc = scenario
    seen = sc.run_loop()
    ctx, agent_tier = sc.tier_name("alice", "context"), sc.tier_name("alice", "agent")

    tier = sc.status("loratiers", ctx)
    assert tier["phase"] == "Ready" and get_condition(tier, "Ready")["status"] == "True"
    assert tier["currentVersion"] >= 2 and tier["history"][0]["source"] == "training"
    assert tier["history"][0]["loss"] > 0 and len(tier["checkpointSha256"]) == 64
    assert _store(sc).get(sc.cfg.namespace, ctx, tier["currentVersion"]).digest == tier["checkpointSha256"]
    assert tier["servedVersion"] >= 1

    policy = sc.status("migrationpolicies", "support-consolidation")
    migrated = [d for d in policy["decisions"] if d["outcome"] in ("Migrated", "Bypassed")]
    assert migrated and migrated[0]["targetTier"] == agent_tier and migrated[0]["components"] > 0
    assert policy["migrationsDone"] >= migrated[0]["components"]
    assert sc.status("loratiers", agent_tier)["history"][0]["source"] == "migration"

    swarm = sc.status("swarms", "support")
    assert get_condition(swarm, "Degraded")["status"] == "False", swarm
    served = seen["served2"]
    assert served["servedVersion"].startswith("c") and ".a" in served["servedVersion"]

    # The request is answered by the composed adapter: vLLM's greedy tokens equal PEFT's for that adapter.
    fp = Fingerprint.read(served["adapterUri"])
    assert fp is not None, "the operator stores a fingerprint beside every composed adapter"
    got = sc.complete("alice", list(fp.prompt_token_ids), max_tokens=len(fp.token_ids))
    assert tuple(got.token_ids) == tuple(fp.token_ids)

    reasons = {e["reason"] for e in _events(sc, ctx)}
    assert {"TrainingStarted", "TrainingSucceeded", "Promoted"} <= reasons, reasons
    assert "AdaptersServed" in {e["reason"] for e in _events(sc, "support")}
    assert "MigrationDone" in {e["reason"] for e in _events(sc, "support-consolidation")}

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{sc.metrics_port}/metrics", timeout=10).read().decode()
    assert f'dynamiclora_tier_version{{level="context",namespace="e2e",tier="{ctx}"}}' in metrics
    assert "dynamiclora_hotswap_swap_seconds_count" in metrics
    _composed_by_jobs_for_an_operator_without_torch(sc)
    # Every pod above (Jobs, vLLM) was admitted by the API server under the restricted Pod Security Standard.
    ns = sc.rest.get(f"/api/v1/namespaces/{sc.cfg.namespace}")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _composed_by_jobs_for_an_operator_without_torch(sc: Scenario) -> None:
    """What ships: the operator runs from the image's environment (no torch); compose Jobs build the adapters."""
    assert sc.operator is not None and sc.operator.poll() is None
    exe = Path(f"/proc/{sc.operator.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert Path(exe).parent.parent == env_dir(), exe
    no_torch = subprocess.run([exe, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    def composers() -> list[dict[str, Any]]:
        jobs = sc.rest.get(f"/apis/batch/v1/namespaces/{sc.cfg.namespace}/jobs")["items"]
        return [j for j in jobs if j["metadata"].get("annotations", {}).get(ANNOTATION_JOB_KIND) == "compose"]

    # A migration's stack is composed by a compose Job (a training Job composes only its own version ahead).
    done = sc.wait("a compose Job succeeded", lambda: [j for j in composers() if (j.get("status") or {}).get(
        "succeeded")] or None)  # fmt: skip
    assert all(j["spec"]["template"]["spec"]["containers"][0]["args"][0] == "compose" for j in done)
    trainings = (Path(sc.cluster.state) / "pods" / sc.cfg.namespace).glob("*-alice-context-train-v*/main.log")
    assert any("composed alice c" in log.read_text(errors="replace") for log in trainings), "none composed ahead"
    swarm = sc.status("swarms", "support")
    assert get_condition(swarm, "Composing")["reason"] in ("Composed", "Composing"), swarm
    _jobs_ran_from_the_trainer_image_environment(sc)


def _jobs_ran_from_the_trainer_image_environment(sc: Scenario) -> None:
    """Training, consolidation and compose Jobs ran from an environment installed as the trainer image is."""
    pods = Path(sc.cluster.state) / "pods" / sc.cfg.namespace
    logs = [p for pattern in ("*-train-v*/*.log", "*compose*/*.log", "mig-*/*.log") for p in pods.glob(pattern)]
    assert len({log.parent.name for log in logs}) >= 3, sorted(str(p) for p in pods.iterdir())
    for log in logs:
        start = next(line for line in log.read_text(errors="replace").splitlines() if " starting " in line)
        exe = Path(start.split(": ", 1)[1].split()[0])
        assert exe.parent.parent == trainer_env_dir(), start
    no_vllm = subprocess.run([str(exe), "-c", "import vllm"], capture_output=True, text=True)
    assert no_vllm.returncode != 0 and "No module named 'vllm'" in no_vllm.stderr


def test_restarted_vllm_pod_gets_its_adapters_back(scenario: Scenario) -> None:
    sc = scenario
    pod = json.loads(sc.kubectl("get", "pod", "support-vllm-0", "-n", sc.cfg.namespace, "-o", "json"))
    sc.kubectl("delete", "pod", "support-vllm-0", "-n", sc.cfg.namespace, "--wait=true", "--timeout=120s")

    def new_pod_ready() -> bool:
        p = json.loads(sc.kubectl("get", "pod", "support-vllm-0", "-n", sc.cfg.namespace, "-o", "json", check=False)
                       or "{}")  # fmt: skip
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        return p.get("metadata", {}).get("uid") not in (None, pod["metadata"]["uid"]) and conds.get("Ready") == "True"

    sc.wait("the StatefulSet recreated the pod with a fresh vLLM process", new_pod_ready)

    def answers_with_the_adapter() -> bool | None:
        # A fresh vLLM forgets runtime adapters: the name answers again only once the operator reloaded it
        # (compared with the fingerprint of what the Swarm reports served now).
        entry = sc.served("alice")
        fp = Fingerprint.read(entry["adapterUri"]) if entry else None
        if fp is None:
            return None
        try:
            got = sc.complete("alice", list(fp.prompt_token_ids), max_tokens=len(fp.token_ids))
        except VLLMError:
            return None
        return tuple(got.token_ids or ()) == tuple(fp.token_ids) or None

    sc.wait("the restarted pod serves alice's adapter again", answers_with_the_adapter)
    assert sc.served("alice") is not None


def test_missing_input_waits_and_a_failed_training_says_why(scenario: Scenario) -> None:
    sc = scenario
    folder = sc.records_root(sc.pvc_root / "ckpt" / "dl") / "bob"
    folder.mkdir(parents=True, exist_ok=True)
    # 20 lines that are not interaction records: the trainer skips them and is left with no data.
    (folder / "garbage.jsonl").write_text("".join('{"not": "a record"}\n' for _ in range(20)))
    tier = sc.tier_name("bob", "context")

    # Bob's regression set does not exist yet: a condition naming the path, no Job, no failed attempt.
    def waits_for_input() -> dict[str, Any] | None:
        cond = get_condition(sc.status("loratiers", tier), "Training") or {}
        return cond if cond.get("reason") == "InputMissing" else None

    cond = sc.wait("bob's training waits for its missing regression set", waits_for_input)
    assert "regression/bob.jsonl" in cond["message"], cond
    assert not sc.status("loratiers", tier).get("failedAttempts") and not sc.status("loratiers", tier).get("activeJob")
    assert "InputMissing" in {e["reason"] for e in _events(sc, tier)}
    write_regression_set(sc.pvc_root / "ckpt" / "dl" / "regression", "bob")

    def failed_once() -> dict[str, Any] | None:
        st = sc.status("loratiers", tier)
        return st if int(st.get("failedAttempts") or 0) >= 1 else None

    sc.wait("bob's training Job fails and is reported", failed_once)
    failed = [e for e in _events(sc, tier) if e["reason"] == "TrainingFailed"]
    assert failed and failed[0]["type"] == "Warning" and "train-v1 failed" in failed[0]["message"]
    assert "no training records" in failed[0]["message"], failed[0]  # the Job's last error line, not just "failed"
    sc.wait("the failed training is retried with a new Job", lambda: sc.status("loratiers", tier).get("activeJob",
                                                                                                   "").endswith("-r1"))
    assert sc.tier_version("bob", "context") == 0  # nothing half-written was published


def test_invalid_spec_is_a_permanent_error_not_a_crash_loop(scenario: Scenario) -> None:
    sc = scenario
    bad = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
           "metadata": {"name": "bad-domain", "namespace": sc.cfg.namespace},
           "spec": {"level": "domain", "rank": 8, "targetModules": ["q_proj", "q_proj"]}}  # fmt: skip
    sc.apply([bad])  # the schema has no uniqueness rule for lists; the operator's model does
    st = sc.wait("the invalid tier is reported", lambda: sc.status("loratiers", "bad-domain").get("phase") == "Failed"
                 and sc.status("loratiers", "bad-domain"))  # fmt: skip
    cond = get_condition(st, "Ready")
    assert cond["reason"] == "InvalidSpec" and "targetModules must not repeat" in cond["message"]
    assert any(e["reason"] == "InvalidSpec" for e in _events(sc, "bad-domain"))
    assert sc.operator is not None and sc.operator.poll() is None  # still running


def _hostile(sc: Scenario, name: str, edit: Any, kind: str = "Swarm") -> dict[str, Any]:
    """A copy of the scenario's own object of ``kind``, renamed, then ``edit``ed in place."""
    doc = copy.deepcopy(next(o for o in sc.manifests() if o["kind"] == kind))
    doc["metadata"]["name"] = name
    if kind == "Swarm":
        doc["spec"]["agents"], doc["spec"]["sharedTiers"] = [{"name": "mallory"}], {}
    edit(doc)
    return doc


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[parts[-1]] = value


def _at(path: str, value: Any) -> Any:
    return lambda d: _set_path(d, path, value)


# (case, kind, edit, where it must stop: "schema" = the API server refuses it, else the condition reason)
HOSTILE: list[tuple[str, str, Any, str]] = [
    ("records-prefix-traversal", "Swarm", _at("spec.experience.prefix", "../other-team"), "schema"),
    ("pvc-path-traversal", "Swarm", _at("spec.storage.pvc.path", "dl/../../etc"), "schema"),
    ("regression-set-absolute", "Swarm", _at("spec.agents.0.regressionSet", "/etc/shadow"), "schema"),
    ("regression-set-traversal", "Swarm", _at("spec.agents.0.regressionSet", "reg/../../x.jsonl"), "schema"),
    ("regression-set-foreign-bucket", "Swarm", _at("spec.agents.0.regressionSet", "s3://theirs/x.jsonl"), "schema"),
    ("name-with-dots", "Swarm", _at("metadata.name", "evil.v2"), "schema"),
    ("unicode-agent", "Swarm", _at("spec.agents", [{"name": "m\u00e5llory"}]), "schema"),
    ("agent-name-300-chars", "Swarm", _at("spec.agents", [{"name": "m" * 300}]), "schema"),
    ("65-extra-args", "Swarm", _at("spec.inference.extraArgs", ["--x"] * 65), "schema"),
    ("env-value-2000-chars", "Swarm", _at("spec.inference.env", {"X": "v" * 2000}), "schema"),
    ("repeated-agents", "Swarm", _at("spec.agents", [{"name": "m"}, {"name": "m"}]), "schema"),
    ("schedule-beyond-10-years", "Swarm", _at("spec.contextTier.training.schedule", "999999999999h"), "schema"),
    ("unknown-field", "Swarm", _at("spec.privileged", True), "schema"),
    ("rank-a-billion", "LoRATier", _at("spec.rank", 10**9), "schema"),
    ("keep-for-overflow", "LoRATier", _at("spec.retention.keepFor", "999999999999h"), "schema"),
    ("disallowed-vllm-image", "Swarm", _at("spec.inference.image", "evil.example/miner:1"), "PolicyDenied"),
    ("disallowed-trainer-image", "Swarm", _at("spec.contextTier.training.image", "evil.example/t:1"), "PolicyDenied"),
]


def test_hostile_custom_resources_are_refused_and_disturb_nothing(scenario: Scenario) -> None:
    """Issue 17: a table of hostile CRs against the real API server and operator. Each is refused by the
    schema or ends in a clear condition and event, with no child object; the agents' serving never moves."""
    sc, ns = scenario, scenario.cfg.namespace
    before = {a: sc.wait(f"{a} served", lambda a=a: sc.served(a)) for a in ("alice",)}  # carol learns last
    for case, kind, edit, expect in HOSTILE:
        name = f"evil-{case}"[:40].rstrip("-")
        doc = _hostile(sc, name, edit, kind)
        applied = sc.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        accepted = "created" in applied or "configured" in applied
        if expect == "schema":
            assert not accepted, f"{case}: the API server accepted {applied!r}"
            continue
        assert accepted, f"{case}: {applied!r}"
        plural = {"Swarm": "swarms", "LoRATier": "loratiers"}[kind]
        st = sc.wait(f"{case} refused", lambda p=plural, n=name: sc.status(p, n).get("phase") == "Failed"
                     and sc.status(p, n))  # fmt: skip
        cond = get_condition(st, "Ready")
        assert cond is not None and cond["reason"] == expect, (case, cond)
        assert any(e["reason"] == expect for e in _events(sc, name)), case
        children = sc.kubectl("get", "statefulsets,services,configmaps,secrets,loratiers,jobs", "-n", ns,
                              "-l", f"dynamiclora.io/swarm={name}", "-o", "name")  # fmt: skip
        assert not children.strip(), (case, children)
        sc.kubectl("delete", plural, name, "-n", ns)
    print(f"hostile custom resources tried: {len(HOSTILE)}")
    assert sc.operator is not None and sc.operator.poll() is None
    assert {a: sc.served(a) for a in before} == before  # nothing else moved


def test_only_the_operator_changes_what_is_served(scenario: Scenario) -> None:
    """Issue 17: on the real pod, the client key (the Secret the operator generated for clients) runs
    inference but cannot unload or replace an agent's adapter; without a key nothing but probes answer."""
    import asyncio

    from dynamiclora.serving.client import ClientConfig, VLLMClient
    from dynamiclora.serving.errors import VLLMAuthError

    sc = scenario
    entry = sc.wait("alice served", lambda: sc.served("alice"))
    ip, model = sc.pod_ips()[0], f"{sc.cfg.swarm}-alice"

    async def attempts(key: str | None) -> list[int]:
        codes = []
        async with VLLMClient(f"http://{ip}:8000", ClientConfig(api_key=key, retries=0)) as client:
            for call in (client.unload_adapter(model), client.load_adapter(model, "/tmp", inplace=True)):
                try:
                    await call
                    codes.append(200)
                except VLLMAuthError as e:
                    codes.append(e.status)
        return codes

    assert asyncio.run(attempts(sc.client_key())) == [403, 403]
    assert asyncio.run(attempts(None)) == [401, 401]
    assert sc.complete("alice", "the", max_tokens=2).token_ids  # the client key's job
    assert sc.served("alice") == entry  # nothing moved


def test_operator_killed_during_consolidation_publishes_exactly_once(scenario: Scenario) -> None:
    sc = scenario
    ctx, agent_tier = sc.tier_name("alice", "context"), sc.tier_name("alice", "agent")
    agent_versions = _store(sc).list_versions(sc.cfg.namespace, agent_tier)
    v = sc.tier_version("alice", "context")
    sc.feed("alice", 3)
    sc.wait("a new context version", lambda: sc.tier_version("alice", "context") > v)
    job = sc.wait("a consolidation Job is running",
                  lambda: next(iter(sc.status("migrationpolicies", "support-consolidation").get("activeJobs", [])),
                               None))  # fmt: skip
    sc.stop_operator(kill=True)  # SIGKILL mid-consolidation
    sc.start_operator()
    sc.wait(f"the restarted operator collects Job {job}",
            lambda: job not in sc.status("migrationpolicies", "support-consolidation").get("activeJobs", [job]))
    jobs = json.loads(sc.kubectl("get", "jobs", "-n", sc.cfg.namespace, "-l",
                                 "dynamiclora.io/component=consolidator", "-o", "json"))["items"]  # fmt: skip
    assert len({j["metadata"]["name"] for j in jobs}) == len(jobs)
    assert sum(1 for j in jobs if j["metadata"]["name"] == job) == 1
    after = _store(sc).list_versions(sc.cfg.namespace, agent_tier)
    assert len(after) - len(agent_versions) <= 1  # at most one new version for one consolidation
    assert after == sorted(set(after))
    assert ctx


def _training_versions(sc: Scenario, tier: str) -> dict[int, dict[str, Any]]:
    store, ns = _store(sc), sc.cfg.namespace
    found = {v: store.get(ns, tier, v).manifest.metadata for v in store.list_versions(ns, tier)}
    return {v: md for v, md in found.items() if md.get("kind") == "training"}


def test_operator_killed_at_random_points_of_a_round_loses_and_doubles_nothing(scenario: Scenario) -> None:
    """Issue 18: SIGKILL the operator three times at random moments of one training round (the moments
    are printed with their seed). Each training Job publishes once (a gate rejection retried with more
    replay is a new Job), the round ends served, and the tier's audit trail still verifies."""
    sc = scenario
    seed = int(time.time())
    rng = random.Random(seed)
    ctx = sc.tier_name("alice", "context")
    before = set(_training_versions(sc, ctx))
    sc.feed("alice", 30)
    delays = [round(rng.uniform(0.0, 2.0 * sc.cfg.resync_seconds), 1) for _ in range(3)]
    print(f"seed {seed}: SIGKILL after {delays} s")
    for delay in delays:
        time.sleep(delay)
        sc.stop_operator(kill=True)
        sc.start_operator()  # waits for the dead leader's Lease to expire, then resumes

    def accepted() -> list[int] | None:
        new = {v: md for v, md in _training_versions(sc, ctx).items() if v not in before}
        return [v for v, md in new.items() if (md.get("gate") or {}).get("accepted")] or None

    version = sc.wait("the round is published and accepted", accepted, timeout=sc.cfg.step_timeout * 2)[0]
    sc.wait("and served", lambda: sc.served_context("alice") >= version or None)
    time.sleep(2 * sc.cfg.resync_seconds)  # a late duplicate would show within a resync or two
    new = {v: md for v, md in _training_versions(sc, ctx).items() if v not in before}
    by_job = [md.get("job") for md in new.values()]
    assert None not in by_job and len(by_job) == len(set(by_job)), (seed, delays, new)  # one version per Job
    assert len(accepted() or []) == 1, (seed, delays, new)  # one round, one accepted version
    jobs = json.loads(sc.kubectl("get", "jobs", "-n", sc.cfg.namespace, "-o", "json"))["items"]
    names = [j["metadata"]["name"] for j in jobs]
    assert len(names) == len(set(names))
    assert AuditLog(_store(sc), sc.cfg.namespace, ctx).verify(sc.audit_key) == []
    sc.wait("the consolidations the round led to are done", _quiet(sc, ctx))  # a quiet start for the next


def _scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of an operator's /metrics (empty while it does not answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except (OSError, http.client.HTTPException):  # not up yet, or stopping
        return {}
    return {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines() if ln and ln[0] != "#")}


def test_a_second_operator_waits_and_takes_over_when_the_first_stops(scenario: Scenario) -> None:
    """Issue 18: leader election. A second replica watches but never reconciles until the leader goes."""
    sc = scenario
    port = free_port()
    log = sc.cfg.work_dir / "operator-2.log"
    with log.open("ab") as out:
        second = subprocess.Popen(sc.operator_argv(port), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        sc.wait("the second operator is up, as a follower",
                lambda: _scrape(port).get("dynamiclora_leader") == 0.0 or None)  # fmt: skip
        time.sleep(4 * sc.cfg.resync_seconds)  # a few resync periods: it must not reconcile anything
        reconciles = {k: v for k, v in _scrape(port).items() if k.startswith("dynamiclora_reconcile_total")}
        assert not any(reconciles.values()), reconciles
        assert "waiting for the leader Lease" in log.read_text(), log.read_text()[-2000:]
        assert _scrape(sc.metrics_port).get("dynamiclora_leader") == 1.0

        sc.stop_operator()  # a clean stop releases the Lease: no wait for it to expire
        sc.wait("the second operator leads", lambda: _scrape(port).get("dynamiclora_leader") == 1.0 or None)
        sc.wait("and reconciles", lambda: sum(v for k, v in _scrape(port).items()
                                             if k.startswith("dynamiclora_reconcile_total")) or None)  # fmt: skip
    finally:
        second.terminate()
        second.wait(timeout=60)
        sc.start_operator()  # the scenario's own operator for the tests that follow
    sc.wait("the scenario's operator leads again", lambda: _scrape(sc.metrics_port).get("dynamiclora_leader") == 1.0
            or None)  # fmt: skip


# --- issue 10: never serve a regression ------------------------------------------------------------


def _quiet_now(sc: Scenario, ctx: str, agent: str) -> str | None:
    """The agent's served label when nothing is in flight at this instant: no unfinished Job for one of the
    agent's tiers or the Swarm's, none in the policy's or the tier's status, the newest context version served
    (bob's tier fails on purpose: its Jobs are not the agent's)."""
    if sc.status("migrationpolicies", "support-consolidation").get("activeJobs"):
        return None
    tier = sc.status("loratiers", ctx)
    if tier.get("activeJob"):  # a training started before the test's change would be judged as its own
        return None
    # The status lists a Job only once the reconcile that created it has patched it: the Job list sees it first.
    jobs = json.loads(sc.kubectl("get", "jobs", "-n", sc.cfg.namespace, "-o", "json"))["items"]
    swarm = json.loads(sc.kubectl("get", "swarm", sc.cfg.swarm, "-n", sc.cfg.namespace, "-o", "json"))
    shared = {str(t) for t in (swarm["spec"].get("sharedTiers") or {}).values() if t}  # as the Swarm names them
    tiers = {sc.tier_name(agent, "context"), sc.tier_name(agent, "agent"), *shared}
    if any(j["metadata"].get("labels", {}).get("dynamiclora.io/tier") in tiers and not _finished(j) for j in jobs):
        return None
    current = int(tier.get("currentVersion") or 0)
    entry = sc.served(agent)
    label = str((entry or {}).get("servedVersion", ""))
    return label if label.startswith(f"c{current}.") else None


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions", []))  # fmt: skip


def _quiet(sc: Scenario, ctx: str, agent: str = "alice") -> Callable[[], str | None]:
    """A probe: the agent's served label once nothing has been in flight for three operator resyncs.

    A consolidation the newest version makes due starts within a resync of it being served, so one quiet
    instant is not a quiet start. Not a guard against half-applied migrations (serving never composes one;
    the last test checks every stack served): the tests that assert what does *not* move need a start where
    nothing else moves.
    """
    held: dict[str, Any] = {"label": None, "since": 0.0}

    def probe() -> str | None:
        label = _quiet_now(sc, ctx, agent)
        if label is None or label != held["label"]:
            held.update(label=label, since=time.monotonic())
            return None
        return label if time.monotonic() - held["since"] >= 3 * sc.cfg.resync_seconds else None

    return probe


def test_quality_gate_rejects_a_corrupted_update_and_promotes_a_genuine_one(scenario: Scenario) -> None:
    sc = scenario
    ctx = sc.tier_name("alice", "context")
    served = sc.wait("consolidations done and alice served with her newest version", _quiet(sc, ctx))
    st = sc.status("loratiers", ctx)
    current, latest = int(st["currentVersion"]), int(st.get("latestVersion") or st["currentVersion"])
    assert served.startswith(f"c{current}."), (served, current)

    sc.feed("alice", 20, corrupted=True)  # every answer swapped with another fact's answer
    st = sc.wait("the shuffled-label update is trained and judged", lambda: sc.judged(ctx, latest))
    bad = int(st["latestVersion"])
    gate = st["lastGate"]
    assert gate["version"] == bad and gate["accepted"] is False, gate
    assert gate["regressionCandidate"] > gate["regressionBaseline"] * 1.05, gate  # the figures say why
    assert int(st["currentVersion"]) == current  # not promoted ...
    assert _store(sc).list_versions(sc.cfg.namespace, ctx)[-1] == bad  # ... but kept for inspection
    rejected = [e for e in _events(sc, ctx) if e["reason"] == "UpdateRejected"]
    assert rejected and rejected[-1]["type"] == "Warning" and f"v{bad}" in rejected[-1]["message"]
    time.sleep(3 * sc.cfg.resync_seconds)  # a few operator passes: the served adapter must not move
    assert sc.served("alice")["servedVersion"] == served  # type: ignore[index]

    sc.feed("alice", 21)  # a genuine round
    st = sc.wait("the genuine update is trained and promoted", lambda: sc.judged(ctx, bad))
    good = int(st["latestVersion"])
    assert st["lastGate"]["version"] == good and st["lastGate"]["accepted"] is True, st["lastGate"]
    assert int(st["currentVersion"]) >= good
    sc.wait(f"alice served with context v{good} or later",
            lambda: (e := sc.served("alice")) and int(e["servedVersion"].split(".")[0][1:]) >= good)  # fmt: skip
    kinds = {(r.kind, r.version) for r in AuditLog(_store(sc), sc.cfg.namespace, ctx).records()}
    assert {("rejection", bad), ("promotion", good)} <= kinds


def _train_alice_once(sc: Scenario, round_: int) -> tuple[int, dict[str, Any]]:
    """Feed alice a genuine round; the version it trains once accepted and served (with its served entry)."""
    ctx = sc.tier_name("alice", "context")
    sc.wait("consolidations done and alice served with her newest version", _quiet(sc, ctx))
    st = sc.status("loratiers", ctx)
    latest = int(st.get("latestVersion") or st["currentVersion"])
    sc.feed("alice", round_)
    st = sc.wait("the round is trained and judged", lambda: sc.final_verdict(ctx, latest))
    version = int(st["latestVersion"])
    assert st["lastGate"]["version"] == version and st["lastGate"]["accepted"] is True, st["lastGate"]
    entry = sc.wait(f"alice served with context v{version} or later", lambda: (e := sc.served("alice"))
                    and int(e["servedVersion"].split(".")[0][1:]) >= version and e)  # fmt: skip
    return version, entry


def _completed(sc: Scenario, plural: str, name: str) -> list[dict[str, Any]]:
    """The completed ``plural`` named ``name`` or a retry of it (``name-rN``)."""
    items = json.loads(sc.kubectl("get", plural, "-n", sc.cfg.namespace, "-o", "json"))["items"]
    named = [o for o in items if re.fullmatch(rf"{re.escape(name)}(-r\d+)?", o["metadata"]["name"])]
    return [o for o in named if any(c["type"] == "Complete" and c["status"] == "True"
                                    for c in (o.get("status") or {}).get("conditions") or [])]  # fmt: skip


def _suspend(sc: Scenario, tier: str, suspend: bool | None) -> None:
    sc.kubectl("patch", "loratier", tier, "-n", sc.cfg.namespace, "--type", "merge",
               "-p", json.dumps({"spec": {"suspend": suspend}}))  # fmt: skip


def _set_training(sc: Scenario, **training: Any) -> None:
    """Patch the Swarm's context-tier template and wait until alice's tier has reconciled it: a round fed
    before the change reaches the tier would be trained as the old spec says (CI once saw that)."""
    sc.kubectl("patch", "swarm", sc.cfg.swarm, "-n", sc.cfg.namespace, "--type", "merge",
               "-p", json.dumps({"spec": {"contextTier": {"training": training}}}))  # fmt: skip
    ctx = sc.tier_name("alice", "context")

    defaults = {"nodes": 1, "procsPerNode": 1, "strategy": "DDP"}  # what the API fills in for a removed field

    def applied() -> bool:
        tier = sc.get("loratiers", ctx) or {}
        spec, status = tier.get("spec", {}).get("training", {}), tier.get("status") or {}
        wanted = all(spec.get(k) == v or (v is None and spec.get(k) == defaults.get(k)) for k, v in training.items())
        return wanted and status.get("observedGeneration") == tier["metadata"]["generation"]

    sc.wait(f"alice's tier trains with {training}", applied)


def test_data_parallel_training_on_two_pods_and_as_a_kubeflow_trainjob(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 20: alice's tier trains on 2 pods, first by the operator's own launcher (an indexed Job whose
    torchrun workers meet at pod 0 through the headless Service's name), then fully sharded (FSDP) as a
    TrainJob run by the real Kubeflow Trainer v2.0.0 controller (and JobSet). Each update passes the quality
    gate, is published once, hot-swapped and answers through vLLM as its fingerprint says."""
    from dynamiclora_dev.kubeflow_controllers import install, running_controllers

    sc = scenario
    ctx, bob = sc.tier_name("alice", "context"), sc.tier_name("bob", "context")
    # Local pods share this machine's ports (no network namespace per pod), so two distributed trainings at
    # once would contend for one rendezvous port; bob's training keeps failing and being retried (a test
    # above). Its tier is suspended meanwhile (the Swarm's template would make it distributed too).
    _suspend(sc, bob, True)
    sc.wait("bob's last attempt is over", lambda: not sc.status("loratiers", bob).get("activeJob") or None)
    _set_training(sc, nodes=2)
    try:
        version, entry = _train_alice_once(sc, 40)
        # The attempt that published it. Its Complete condition can come after the version is served: the Job
        # controller marks it once every pod has ended (CI saw "served" first once the Job composed ahead).
        (job,) = sc.wait(f"v{version}'s Job complete", lambda: _completed(sc, "jobs", f"{ctx}-train-v{version}"))
        assert job["spec"]["completionMode"] == "Indexed" and job["status"].get("succeeded") == 2, job["status"]
        _answers_like_its_fingerprint(sc, entry)
        # A checkpoint at step 10 of 640: the kill lands with most of the run ahead (160 steps take 3 s here,
        # less than the test once took to see the checkpoint and kill).
        was = sc.get("swarms", sc.cfg.swarm)["spec"]["contextTier"]["training"]  # type: ignore[index]
        _set_training(sc, nodes=2, checkpointEvery=10, maxSteps=640)
        version, entry = _train_alice_killing_a_worker(sc, 42)
        assert [h["version"] for h in sc.status("loratiers", ctx)["history"]].count(version) == 1  # published once
        _answers_like_its_fingerprint(sc, entry)
        _set_training(sc, nodes=2, checkpointEvery=was["checkpointEvery"], maxSteps=was["maxSteps"])

        install(sc.cluster.kubeconfig)
        with running_controllers(sc.cluster.kubeconfig, tmp_path_factory.mktemp("kubeflow")) as controllers:
            # Fully sharded this time: the base model and the stack split between the two pods' processes.
            _set_training(sc, nodes=2, runtime="torch-distributed", strategy="FSDP")
            try:
                version, entry = _train_alice_once(sc, 41)
                # Within the controllers' lifetime: the version can be served (composed ahead) before the
                # Trainer controller marks its TrainJob Complete, which a stopped controller never does.
                (tj,) = sc.wait(f"v{version}'s TrainJob complete",
                                lambda: _completed(sc, "trainjobs", f"{ctx}-train-v{version}"))  # fmt: skip
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{controllers.tails()}") from None
        assert tj["spec"]["trainer"]["numNodes"] == 2 and tj["spec"]["runtimeRef"]["name"] == "torch-distributed"
        logs = sorted(Path(sc.cluster.state).glob(f"pods/{sc.cfg.namespace}/{tj['metadata']['name']}-*/*.log"))
        sharded = [f for f in logs if "fsdp: " in f.read_text(errors="replace")]
        assert sharded and all("units sharded over 2 processes" in f.read_text(errors="replace") for f in sharded), logs
        history = sc.status("loratiers", ctx)["history"]
        assert [h["version"] for h in history].count(version) == 1  # published once
        _answers_like_its_fingerprint(sc, entry)
    finally:
        _set_training(sc, nodes=None, runtime=None, strategy=None)
        _suspend(sc, bob, None)


def _train_alice_killing_a_worker(sc: Scenario, round_: int) -> tuple[int, dict[str, Any]]:
    """Feed alice a round and SIGKILL worker 1 of its indexed training Job once the run's checkpoint is in the
    store (what an OOM kill or a lost node does): the attempt fails, saying which pod was killed, and the next
    attempt resumes from that checkpoint; the version and its serving follow as for any round."""
    ctx = sc.tier_name("alice", "context")
    sc.wait("consolidations done and alice served with her newest version", _quiet(sc, ctx))
    st = sc.status("loratiers", ctx)
    latest = int(st.get("latestVersion") or st["currentVersion"])
    failed_before = int(st.get("failedAttempts") or 0)
    work = Path(work_uri(f"file://{sc.pvc_root}/ckpt/dl", sc.cfg.namespace, ctx, latest + 1).removeprefix("file://"))
    sc.feed("alice", round_)
    deadline = time.monotonic() + sc.cfg.step_timeout
    while not (work / LATEST).exists():  # polled closely: the kill must land well before the run's last step
        assert time.monotonic() < deadline, f"v{latest + 1}'s first checkpoint never reached {work}"
        time.sleep(0.05)
    selector = f"batch.kubernetes.io/job-completion-index=1,batch.kubernetes.io/job-name={ctx}-train-v{latest + 1}"
    pods = sc.rest.get(f"/api/v1/namespaces/{sc.cfg.namespace}/pods", {"labelSelector": selector})["items"]
    (pod,) = [p for p in pods if p["status"].get("phase") == "Running"]
    kill_tree(int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://")))
    sc.log(f"  killed worker pod {pod['metadata']['name']} after the first checkpoint reached the store")
    st = sc.wait("the killed attempt reported failed", lambda: (s := sc.status("loratiers", ctx))
                 and int(s.get("failedAttempts") or 0) > failed_before and s)  # fmt: skip
    failed = [e["message"] for e in _events(sc, ctx) if e["reason"] == "TrainingFailed" and f"v{latest + 1} " in
              e["message"]]  # fmt: skip
    assert any("code 137: killed by SIGKILL" in m for m in failed), failed
    st = sc.wait("the retry trained and judged", lambda: sc.final_verdict(ctx, latest))
    # The round's last verdict: the resumed attempt's own, or that of the operator's replayed retry when the
    # gate refused the resumed one for collateral forgetting (seen on another CPU float path).
    version = int(st["latestVersion"])
    assert version > latest and st["lastGate"]["accepted"] is True, st["lastGate"]
    killed = latest + 1
    attempts = sorted(Path(sc.cluster.state).glob(f"pods/{sc.cfg.namespace}/{ctx}-train-v{killed}*/main.log"))
    assert any("restored checkpoint ckpt-" in f.read_text(errors="replace") for f in attempts), attempts
    published = [f.parent.name for f in attempts if "store: published" in f.read_text(errors="replace")]
    # Once, by the operator's retry of the failed Job: the kill landed mid-run.
    assert len(published) == 1 and re.search(rf"-train-v{killed}-r\d+-", published[0]), published
    entry = sc.wait(f"alice served with context v{version}", lambda: (e := sc.served("alice"))
                    and int(e["servedVersion"].split(".")[0][1:]) >= version and e)  # fmt: skip
    return version, entry


def _pin(sc: Scenario, versions: dict[str, int] | None) -> None:
    body = json.loads(sc.kubectl("get", "swarm", sc.cfg.swarm, "-n", sc.cfg.namespace, "-o", "json"))
    agents = body["spec"]["agents"]
    for a in agents:
        if a["name"] == "alice":
            a.pop("pinnedVersions", None)
            if versions:
                a["pinnedVersions"] = versions
    sc.kubectl("patch", "swarm", sc.cfg.swarm, "-n", sc.cfg.namespace, "--type", "merge",
               "-p", json.dumps({"spec": {"agents": agents}}))  # fmt: skip


def _answers_like_its_fingerprint(sc: Scenario, entry: dict[str, Any]) -> None:
    fp = Fingerprint.read(entry["adapterUri"])
    assert fp is not None
    got = sc.complete("alice", list(fp.prompt_token_ids), max_tokens=len(fp.token_ids))
    assert tuple(got.token_ids) == tuple(fp.token_ids)


def test_pin_rolls_back_and_unpin_resumes_and_the_audit_trail_survives_restart(scenario: Scenario) -> None:
    sc = scenario
    ctx = sc.tier_name("alice", "context")
    audit = AuditLog(_store(sc), sc.cfg.namespace, ctx)
    sc.wait("consolidations done and alice served with her newest version", _quiet(sc, ctx))
    current = int(sc.status("loratiers", ctx)["currentVersion"])
    assert current >= 2
    stored = _store(sc).list_versions(sc.cfg.namespace, ctx)

    _pin(sc, {"context": 1})  # GitOps rollback: the pin lives in the Swarm spec
    # Served as it was then: every agent-tier version holds content migrated from later context versions,
    # so composing it with context v1 would count that content twice; the stack is context v1 alone.
    pinned = sc.wait("alice served with context v1", lambda: (e := sc.served("alice"))
                     and e["servedVersion"] == "c1" and e)  # fmt: skip
    composition = json.loads((Path(pinned["adapterUri"]) / "composition.json").read_text())
    assert {"tier": ctx, "level": "context", "version": 1} in composition["tiers"]
    _answers_like_its_fingerprint(sc, pinned)  # vLLM's greedy tokens are those of the v1 stack under PEFT
    st = sc.wait("the pin is recorded", lambda: (s := sc.status("loratiers", ctx)).get("pinnedVersion") == 1 and s)
    # Rolling back deletes nothing and rewinds no version. (A migration decided before the pin may still
    # land meanwhile: its residual is a newer version, not a changed one.)
    assert int(st["currentVersion"]) >= current
    assert set(stored) <= set(_store(sc).list_versions(sc.cfg.namespace, ctx)) and 1 in stored
    assert any(e["reason"] == "Pinned" for e in _events(sc, ctx))

    before = audit.records()
    assert before[-1].kind == "rollback" and before[-1].version == 1
    sc.stop_operator()
    sc.start_operator()  # a restarted operator finds the trail as it was and continues it

    _pin(sc, None)  # unpin: normal promotion resumes
    def newest_served() -> dict[str, Any] | None:
        # The newest accepted version again (a consolidation may have published a newer one meanwhile).
        newest = int(sc.status("loratiers", ctx)["currentVersion"])
        e = sc.served("alice")
        return e if e and newest >= current and e["servedVersion"].startswith(f"c{newest}.") else None

    resumed = sc.wait("alice served with the newest accepted context version again", newest_served)
    _answers_like_its_fingerprint(sc, resumed)
    after = sc.wait("the unpin is recorded", lambda: (r := AuditLog(_store(sc), sc.cfg.namespace, ctx).records())
                    and r[-1].kind == "unpin" and r)  # fmt: skip
    assert [r.to_json() for r in after[: len(before)]] == [r.to_json() for r in before]  # never rewritten
    checked = AuditLog(_store(sc), sc.cfg.namespace, ctx).verify(sc.audit_key)
    assert checked == [] and checked.segments, checked.notes  # compacted into signed segments, chain intact
    assert sc.status("loratiers", ctx).get("pinnedVersion") is None

    history = [sys.executable, "-m", "dynamiclora.cli", "history", ctx, "-n", sc.cfg.namespace,
               "--store", f"file://{sc.pvc_root}/ckpt/dl"]  # fmt: skip
    out = subprocess.run(history, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("promotion", "rejection", "rollback", "unpin"):
        assert word in out.stdout, out.stdout
    verified = subprocess.run([*history, "--verify", "--audit-key-file", str(sc.audit_key_file)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert verified.returncode == 0 and "hash chain valid" in verified.stdout, verified.stdout + verified.stderr


def test_an_agent_learns_round_after_round_and_keeps_what_it_learned(scenario: Scenario) -> None:
    """Issues 14 and 21: carol is taught four new facts a round, four rounds, then one answer changes.

    Carol's regression set holds facts she was never taught (so they cannot block her), and every honest
    round must be accepted and served; through vLLM she must then answer the changed fact with its new
    answer, after at least one migration, at least 3 of the 4 first-round facts and 3 in 4 of all.
    """
    sc = scenario
    taught = sc.run_rounds("carol", rounds=4)
    ctx, agent_tier = sc.tier_name("carol", "context"), sc.tier_name("carol", "agent")
    st = sc.status("loratiers", ctx)
    rejected = [h["version"] for h in st["history"] if h["source"] == "training" and not h["accepted"]]
    print(f"carol: rounds accepted as context versions {sc.round_versions}; rejected and retried: {rejected}")
    assert len(sc.round_versions) == 5
    assert not st.get("quarantine"), st.get("quarantine")
    sc.wait("a migration moved carol's stable content up", lambda: sc.tier_version("carol", "agent") or None)
    sc.wait("consolidations done and carol served with her newest version", _quiet(sc, ctx, "carol"))
    answers = {entity: sc.answer("carol", entity) for entity in taught}
    wrong = {e: (answers[e], a) for e, a in taught.items() if answers[e] != a}
    report = (f"carol answers {len(taught) - len(wrong)} of {len(taught)} (each round right after it: "
              f"{sc.round_learned}); (got, expected): {wrong}")
    print(report)
    first, changed = sorted(round_facts("carol", 0)), sorted(round_facts("carol", 0))[0]
    assert changed not in wrong, report  # the changed answer, not the old one
    # The tiny model confuses a fact now and then: measured 14, 15, 16 and 16 of 16 (round 1 always whole)
    # once training froze the served stack, 6 of 16 before. The margins hold on every CPU and still catch
    # a memory that forgets: round 1 after three more rounds and migrations, and everything taught.
    assert sum(e not in wrong for e in first) >= 3, report
    assert len(wrong) <= len(taught) // 4, report
    assert sc.status("loratiers", agent_tier)["history"][0]["source"] == "migration"


def test_every_stack_served_all_along_was_consistent(scenario: Scenario, watch: ServedWatch) -> None:
    """Issue 15: through every migration above, no agent was ever served a half-applied one.

    The watch sampled the Swarm status twice a second since the operator started; each stack it saw
    served on every ready pod must be what ``settle`` picks from the store, fastest tier first.
    """
    sc = scenario
    levels = {letter: level for level, letter in LEVEL_LETTER.items()}
    store = f"file://{sc.pvc_root}/ckpt/dl"
    seen = watch.seen
    assert any(".a" in label for label in seen["alice"]), seen  # migrations happened while it watched
    for agent, labels in seen.items():
        for label in sorted(labels):
            entries = [StackEntry(sc.tier_name(agent, levels[part[0]]), levels[part[0]], int(part[1:]), store,
                                  sc.cfg.namespace) for part in label.split(".")]  # fmt: skip
            assert stack_is_consistent(entries, StoreView()), (agent, label, sorted(labels))


# Documented series a healthy loop does not produce, and where each one is exercised instead.
NOT_IN_A_HEALTHY_LOOP = {
    "dynamiclora_hotswap_failures_total": "a failed load: tests/integration/serving/test_hotswap_vllm.py",
}


def test_every_documented_metric_has_a_value_after_the_loop(scenario: Scenario, watch: ServedWatch) -> None:
    """Issue 15: no metric is decorative; each one in docs/observability.md had a sample during this run."""
    sc = scenario
    text = urllib.request.urlopen(f"http://127.0.0.1:{sc.metrics_port}/metrics", timeout=10).read().decode()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text()
    documented = re.findall(r"^\| `(dynamiclora_[a-z_]+)`", doc, re.M)
    assert len(documented) >= 20, documented

    def sampled(name: str) -> bool:
        names = {name, f"{name}_count", f"{name}_bucket", f"{name}_total"}
        return bool(names & watch.series) or re.search(rf"^{name}(_count|_bucket|_total)?[{{ ]", text, re.M) is not None

    missing = [n for n in documented if not sampled(n) and n not in NOT_IN_A_HEALTHY_LOOP]
    assert not missing, missing
    for name in NOT_IN_A_HEALTHY_LOOP:
        assert f"# HELP {name.removesuffix('_total')}" in text, name  # exported, only without a sample


def _tier_versions(sc: Scenario, agents: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    return {name: (st.get("currentVersion"), st.get("latestVersion"))
            for agent in agents for level in ("context", "agent")
            for name in [sc.tier_name(agent, level)] for st in [sc.status("loratiers", name)]}  # fmt: skip


def test_disaster_recovery_from_the_store_alone(scenario: Scenario) -> None:
    """Issue 18: every DynamicLoRA object deleted, the same YAML applied again: the operator rebuilds the
    status from the store and serves the same versions, without training or migrating anything again.

    Runs last: it deletes the Swarm (its StatefulSet, vLLM pod and tiers go with it).
    """
    sc, agents, ns = scenario, ("alice", "carol"), scenario.cfg.namespace
    for agent in agents:
        sc.wait(f"{agent}: nothing in flight", _quiet(sc, sc.tier_name(agent, "context"), agent))
    served = {agent: str((sc.served(agent) or {})["servedVersion"]) for agent in agents}
    versions = _tier_versions(sc, agents)
    sc.kubectl("delete", "migrationpolicies,swarms,loratiers", "--all", "-n", ns, "--timeout=300s")
    sc.wait("the Swarm's StatefulSet and tiers are gone", lambda: not sc.kubectl(
        "get", "statefulsets,loratiers", "-n", ns, "-o", "name").strip() or None)  # fmt: skip
    recreated = time.time()

    sc.apply(sc.manifests())
    for agent in agents:
        sc.wait(f"{agent} served again after the re-apply", lambda a=agent: sc.served(a), timeout=900)
    time.sleep(10 * sc.cfg.resync_seconds)  # time for anything that would (wrongly) train or migrate to start
    after = {agent: str((sc.served(agent) or {})["servedVersion"]) for agent in agents}
    assert after == served, (after, served)
    assert _tier_versions(sc, agents) == versions
    jobs = json.loads(sc.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]
    ours = {sc.tier_name(a, level) for a in agents for level in ("context", "agent")}
    started = [j["metadata"]["name"] for j in jobs
               if j["metadata"].get("labels", {}).get("dynamiclora.io/tier") in ours
               and j["metadata"]["annotations"].get(ANNOTATION_JOB_KIND) in ("training", "consolidation")
               and dt.datetime.fromisoformat(j["metadata"]["creationTimestamp"]).timestamp() >= recreated]
    assert not started, f"Jobs started after the re-apply: {started}"
    for agent in agents:
        st = sc.status("loratiers", sc.tier_name(agent, "context"))
        training = next(c for c in st["conditions"] if c["type"] == "Training")
        assert training["reason"] == "WaitingForRecords", training  # what it had consumed came from the store
