"""The whole DynamicLoRA loop on the local control plane: shared by ``dynamiclora-dev demo`` and ``e2e/``.

Everything is real: the API server validates the objects, the operator runs as ``dynamiclora run``, the
local executor runs the training/consolidation Jobs as ``dynamiclora train|consolidate`` processes and
the vLLM pod as a vLLM CPU server bound to the pod's loopback IP.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from dynamiclora.api.crd import render_crds
from dynamiclora_dev.demo.data import facts, round_facts, write_records, write_regression_set
from dynamiclora_dev.localcluster.operator_env import ensure_operator_env
from dynamiclora_dev.localcluster.podspec import EXECUTOR_LABEL, EXECUTOR_VALUE
from dynamiclora_dev.tinymodel import TinyModelConfig, ensure_tiny_model

T = TypeVar("T")
GROUP_PATH = "/apis/dynamiclora.io/v1alpha1"
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoConfig:
    """Shape of the demo (small enough for a 2-core CPU)."""

    work_dir: Path = field(metadata={"help": "model, logs and operator state"})
    namespace: str = field(default="default", metadata={"help": "namespace of the demo objects"})
    swarm: str = field(default="support", metadata={"help": "Swarm name"})
    agents: tuple[str, ...] = field(default=("alice", "bob"), metadata={"help": "agents of the swarm"})
    records_per_round: int = field(default=24, metadata={"help": "records fed per agent per round"})
    step_timeout: float = field(default=600.0, metadata={"help": "seconds each step may take"})
    resync_seconds: float = field(default=3.0, metadata={"help": "operator timer period"})
    pod_security: str = field(default="", metadata={
        "help": "Pod Security Standard the API server enforces on the namespace (e.g. restricted); empty: none"})


class StepTimeout(AssertionError):
    """A step did not reach its goal in time (the message says what was last seen)."""


class StepFailed(AssertionError):
    """A step cannot reach its goal any more (e.g. the quality gate rejected the version it waits for)."""


class Scenario:
    """Drives the local cluster; every wait is bounded and reports what it last saw."""

    def __init__(self, cfg: DemoConfig, cluster: Any, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.log = log
        self.rest = cluster.rest()
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = cfg.work_dir / "operator.log"
        self.metrics_port = free_port()
        self.model_dir = cfg.work_dir / "model"
        self.pvc_root = Path(cluster.state) / "pvc" / cfg.namespace
        self.round_versions: list[int] = []  # the accepted context version of each round of run_rounds
        self.round_learned: list[int] = []  # facts of each round answered right after it was served

    # --- objects ---------------------------------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        """PVC, shared tier, Swarm and MigrationPolicy of the demo."""
        ns, sw = self.cfg.namespace, self.cfg.swarm
        tier_tpl = {
            "rank": 8, "alpha": 16, "targetModules": ALL_MODULES,
            "plasticity": {"learningRate": 0.005, "screenThreshold": 0.6, "freeThreshold": 0.3},
            "retention": {"keepVersions": 20},  # the e2e pins back to version 1
            "training": {"minSamples": 16, "maxSteps": 160, "batchSize": 8, "checkpointEvery": 80, "backoffLimit": 1,
                         "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"nvidia.com/gpu": 1}}},
        }  # fmt: skip
        return [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": ns},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}}},
            {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
             "metadata": {"name": f"{sw}-swarm", "namespace": ns},
             "spec": {"level": "swarm", "swarmRef": sw, "rank": 16, "alpha": 16, "targetModules": ALL_MODULES}},
            {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm", "metadata": {"name": sw, "namespace": ns},
             "spec": {
                 "baseModel": {"name": "tiny-llama", "path": str(self.model_dir)},
                 # Each agent's fixed regression set: the quality gate refuses updates that unlearn these facts.
                 "agents": [{"name": a, "domain": "support", "regressionSet": f"regression/{a}.jsonl"}
                            for a in self.cfg.agents],
                 "contextTier": tier_tpl,
                 "agentTier": {"rank": 16, "retention": tier_tpl["retention"]},
                 "sharedTiers": {"swarm": f"{sw}-swarm"},
                 "inference": {"replicas": 1, "maxLoras": 4, "maxCpuLoras": 8, "maxLoraRank": 64,
                               "maxModelLen": 256, "dtype": "float32",
                               "extraArgs": ["--enforce-eager", "--max-num-seqs", "8"],
                               # vLLM's CPU backend would otherwise reserve most of the machine's memory.
                               "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"},
                               # One core each (the operator sizes vLLM's threads by it): pods that each spin
                               # as many threads as the machine has cores slow each other down many times over.
                               "resources": {"limits": {"cpu": "1"}}},
                 "storage": {"pvc": {"claimName": "ckpt", "path": "dl"}},
             }},
            {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
             "metadata": {"name": f"{sw}-consolidation", "namespace": ns},
             "spec": {"swarmRef": sw, "pairs": [{"source": "context", "target": "agent"}],
                      "stability": {"method": "recurrence", "window": 3, "threshold": 0.5, "minConsecutiveWindows": 2},
                      "bandwidth": {"maxMigrationsPerPeriod": 1000, "period": "1h", "maxEnergyFraction": 0.9},
                      "interval": "5s"}},
        ]  # fmt: skip

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = self.cluster.kubectl(*args, input=input, check=False)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return str(out.stdout)

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs, sort_keys=False))

    def install_crds(self) -> None:
        """Apply the CRDs (and the demo's namespace) and wait until the API server serves them."""
        self.apply([yaml.safe_load(text) for text in render_crds().values()])
        if self.cfg.namespace != "default":
            labels = {"pod-security.kubernetes.io/enforce": self.cfg.pod_security} if self.cfg.pod_security else {}
            self.apply([{"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": self.cfg.namespace, "labels": labels}}])  # fmt: skip
        for plural in ("swarms", "loratiers", "migrationpolicies"):
            self.kubectl("wait", "--for=condition=Established", f"crd/{plural}.dynamiclora.io", "--timeout=60s")

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.rest.get_or_none(
            f"{GROUP_PATH}/namespaces/{self.cfg.namespace}/{plural}/{name}"
        )
        return result

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict((self.get(plural, name) or {}).get("status") or {})

    # --- processes -------------------------------------------------------------------------------
    def prepare_model(self) -> Path:
        # A sharp output head, so that what the tiers learn (and unlearn) shows in the answers and the losses.
        return ensure_tiny_model(self.model_dir, TinyModelConfig(head_scale=10.0))

    def start_operator(self) -> None:
        """Run ``dynamiclora run`` as a separate process, as in production: from an environment installed
        as the operator image is (no torch; see localcluster/operator_env.py)."""
        self.operator_log.parent.mkdir(parents=True, exist_ok=True)
        argv = self.operator_argv(self.metrics_port)
        with self.operator_log.open("ab") as logf:
            self.operator = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=self.operator_environ())  # fmt: skip

    @property
    def adapters_root(self) -> Path:
        """The node folder S3-only swarms' pods share for synced adapters (``--adapters-host-root``)."""
        return self.cfg.work_dir / "pod-adapters"

    def records_root(self, storage_root: Path) -> Path:
        """Where the Swarm's agents' records go below a storage root: ``interactions/<namespace>/<swarm>``."""
        return storage_root / "interactions" / self.cfg.namespace / self.cfg.swarm

    def operator_argv(self, metrics_port: int) -> list[str]:
        """``dynamiclora run`` as the chart runs it, against the local cluster; the leader Lease lives in the
        demo's namespace (a second operator started the same way waits for it)."""
        return [
            str(ensure_operator_env()), "-m", "dynamiclora.cli", "run", "--kubeconfig", str(self.cluster.kubeconfig),
            "--pod-labels", f"{EXECUTOR_LABEL}={EXECUTOR_VALUE}", "--adapters-host-root", str(self.adapters_root),
            "--allowed-images", "ghcr.io/dynamiclora/,vllm/",  # as the chart's default policy (its images)
            "--pvc-root", str(self.pvc_root), "--resync-seconds", str(self.cfg.resync_seconds),
            "--namespace", self.cfg.namespace, "--leader-election-namespace", self.cfg.namespace,
            "--leader-lease-seconds", "6",
            # A low threshold, so that the loop's audit trails are compacted into signed segments.
            "--audit-key-file", str(self.audit_key_file), "--audit-compact-threshold", "8", "--audit-keep-loose", "2",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
        ]  # fmt: skip

    @property
    def audit_key_file(self) -> Path:
        """The HMAC key of the audit segments (generated once per work folder, as the chart generates it)."""
        path = self.cfg.work_dir / "audit.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return path

    @property
    def audit_key(self) -> bytes:
        return self.audit_key_file.read_bytes().strip()

    def operator_environ(self) -> dict[str, str] | None:
        """The operator process's environment (None: this process's)."""
        return None

    @contextlib.contextmanager
    def running(self, pods: int = 1) -> Iterator[Self]:
        """Model, CRDs, operator and manifests up for a test module. On exit the Swarm is deleted while the
        operator still runs (the garbage collector removes the StatefulSet, the executor stops the ``pods``
        vLLM processes, whose memory the suites that follow want), then the operator stops."""
        self.prepare_model()
        self.install_crds()
        self.start_operator()
        try:
            self.apply(self.manifests())
            yield self
        finally:
            ns, swarm = self.cfg.namespace, self.cfg.swarm
            self.kubectl("delete", "swarm", swarm, "-n", ns, "--wait=true", "--timeout=60s", check=False)
            self.stop_operator()
            for i in range(pods):
                self.kubectl("wait", "--for=delete", f"pod/{swarm}-vllm-{i}", "-n", ns, "--timeout=90s", check=False)
            self.log(f"operator log: {self.operator_log}")

    def stop_operator(self, kill: bool = False) -> None:
        proc, self.operator = self.operator, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    # --- the loop --------------------------------------------------------------------------------
    def wait(self, what: str, probe: Callable[[], T | None], timeout: float | None = None) -> T:
        """Poll ``probe`` until it returns something truthy; raise :class:`StepTimeout` otherwise."""
        deadline = time.monotonic() + (timeout or self.cfg.step_timeout)
        start = time.monotonic()
        last: Any = None
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise StepTimeout(f"{what}: the operator exited ({self.operator.returncode}); see {self.operator_log}")
            try:
                last = probe()
            except StepFailed:
                raise
            except Exception as exc:
                last = exc
            else:
                if last:
                    self.log(f"  ✓ {what} ({time.monotonic() - start:.0f}s)")
                    return last  # type: ignore[no-any-return]
            time.sleep(1.0)
        raise StepTimeout(f"{what}: not reached in {timeout or self.cfg.step_timeout:.0f}s; last seen: {last!r}")

    def feed(self, agent: str, round_: int, corrupted: bool = False) -> Path:
        """Write one round of records (``corrupted``: shuffled labels) and make sure the regression set exists."""
        root = self.pvc_root / "ckpt" / "dl"
        write_regression_set(root / "regression", agent)
        path = write_records(self.records_root(root), agent, self.cfg.records_per_round, round_, corrupted=corrupted)
        kind = "corrupted (shuffled-label)" if corrupted else "interaction"
        self.log(f"  fed {self.cfg.records_per_round} {kind} records for {agent} -> {path}")
        return path

    def teach(self, agent: str, round_: int, taught: dict[str, str]) -> int:
        """Feed one round of records about ``taught``; returns how many records the agent has in all."""
        root = self.pvc_root / "ckpt" / "dl"
        write_regression_set(root / "regression", agent)
        path = write_records(self.records_root(root), agent, 32, round_, taught=taught)
        self.log(f"  taught {agent} {len(taught)} fact(s) in 32 records -> {path}")
        return sum(1 for f in path.parent.glob("*.jsonl") for line in f.read_text().splitlines() if line.strip())

    def trained_on(self, agent: str, records: int, after: int) -> int | None:
        """The accepted training version that consumed ``records`` records (newer than ``after``).

        Fails at once (:class:`StepFailed`) when the gate rejected that training, with its reason.
        """
        st = self.status("loratiers", self.tier_name(agent, "context"))
        if int(st.get("recordsConsumed") or 0) < records or st.get("activeJob"):
            return None
        trained = [h for h in st.get("history", []) if h.get("source") == "training" and int(h["version"]) > after]
        if not trained:
            return None
        newest = trained[-1]
        if newest.get("accepted") is False:
            gate = st.get("lastGate") or {}
            if st.get("collateralRetries"):  # the operator trains the same records again, with more replay
                return None
            raise StepFailed(f"v{newest['version']} was rejected by the quality gate: {gate.get('reason', '')[:400]}")
        return int(newest["version"])

    def served_context(self, agent: str) -> int:
        """The context version in the agent's served label (``c3.a1`` -> 3), 0 when nothing is served."""
        label = str((self.served(agent) or {}).get("servedVersion") or "")
        return int(label.split(".")[0][1:]) if label.startswith("c") else 0

    def answer(self, agent: str, entity: str) -> str:
        """What the agent answers, greedily through vLLM, to the demo's question about ``entity``."""
        prompt = f"user : what is the color of {entity} ? the color of {entity} is"
        return str(self.complete(agent, prompt, max_tokens=2).text).strip().split(" ")[0].strip(" .")

    def run_rounds(self, agent: str, rounds: int, flip_round: bool = True) -> dict[str, str]:
        """Teach ``agent`` new facts round after round (and change one answer); returns what it should know."""
        taught: dict[str, str] = {}
        self.round_versions, self.round_learned = [], []
        ctx = self.tier_name(agent, "context")
        for r in range(rounds + (1 if flip_round else 0)):
            new = round_facts(agent, r)
            if r == rounds:  # an answer that changed: the first round's first fact gets another answer
                entity = sorted(round_facts(agent, 0))[0]
                new = {entity: sorted(round_facts(agent, 1).values())[0]}
            # A fact is taught again in the round after its own (as users come back to what they asked), so
            # it recurs and migration by recurrence moves it to the slow tier; the changed answer is not.
            again = {e: a for e, a in round_facts(agent, r - 1).items() if e not in new} if 0 < r < rounds else {}
            taught.update(new)
            after = int(self.status("loratiers", ctx).get("latestVersion") or 0)
            total = self.teach(agent, 100 + r, {**again, **new})
            v = self.wait(f"round {r + 1}: {ctx} trained on {total} records and accepted",
                          lambda: self.trained_on(agent, total, after))  # noqa: B023 - waited on at once
            self.round_versions.append(v)
            self.wait(f"round {r + 1}: {agent} served with context v{v} or later",
                      lambda: self.served_context(agent) >= v or None)  # noqa: B023
            learned = sum(self.answer(agent, e) == a for e, a in new.items())
            self.round_learned.append(learned)
            self.log(f"  round {r + 1}: {agent} answers {learned} of the {len(new)} fact(s) it was just taught")
        return taught

    def tier_name(self, agent: str, level: str) -> str:
        return f"{self.cfg.swarm}-{agent}-{level}"

    def tier_version(self, agent: str, level: str) -> int:
        return int(self.status("loratiers", self.tier_name(agent, level)).get("currentVersion") or 0)

    def serving(self, agent: str) -> dict[str, Any]:
        """What is served of ``agent``: its context tier's ``status.serving`` (empty before anything is)."""
        return dict(self.status("loratiers", self.tier_name(agent, "context")).get("serving") or {})

    def served(self, agent: str) -> dict[str, Any] | None:
        """The agent's serving entry once every pod it is placed on serves it."""
        entry = self.serving(agent)
        if entry and entry.get("placedOn") and entry.get("servedOnPods") == len(entry["placedOn"]):
            # The entry keeps its adapter relative to the Swarm's servedRoot; callers want the URI.
            root = self.status("swarms", self.cfg.swarm).get("servedRoot")
            return {**entry, "name": agent, "adapterUri": f"{root}/{entry.get('adapterPath')}"} if root else None
        return None

    def pod_ips(self, agent: str | None = None) -> list[str]:
        """Ready pods' IPs: all of them, or those ``agent`` is placed on (``placedOn``, pod ordinals)."""
        st = self.status("swarms", self.cfg.swarm)
        placed = self.serving(agent).get("placedOn") if agent is not None else None
        return [str(p["podIP"]) for p in st.get("pods", []) if p.get("ready") and p.get("podIP")
                and (agent is None or int(p["name"].rsplit("-", 1)[1]) in (placed or ()))]  # fmt: skip

    def client_key(self, secret: str | None = None) -> str:
        """A client's key: the one the operator generated for the Swarm (or the Secret named), as clients read it."""
        import base64

        from dynamiclora.builders.names import client_key_secret

        name = secret or client_key_secret(self.cfg.swarm)
        data = self.wait(f"Secret {name} (the client key)", lambda: self.kubectl(
            "get", "secret", name, "-n", self.cfg.namespace, "-o", "jsonpath={.data.api-key}", check=False).strip()
            or None, 120)  # fmt: skip
        return base64.b64decode(data).decode()

    def complete(self, agent: str, prompt: str | list[int], max_tokens: int = 8) -> Any:
        """One greedy completion from a ready pod that holds the agent, as a client: the agent's stable name, the
        client key."""


        # Readiness can flap on a loaded CPU (probes time out while vLLM is busy): wait for a ready pod.
        ip = self.wait(f"a ready vLLM pod holding {agent} to send the request to",
                       lambda: next(iter(self.pod_ips(agent)), None), 300)  # fmt: skip
        return self.complete_at(ip, 8000, f"{self.cfg.swarm}-{agent}", prompt, max_tokens)

    def complete_at(self, ip: str, port: int, model: str, prompt: str | list[int], max_tokens: int = 8) -> Any:
        """One greedy completion of ``model`` from the server at ``ip:port``, with the client key."""
        import asyncio

        from dynamiclora.serving.client import ClientConfig, VLLMClient

        key = self.client_key()

        async def go() -> Any:
            async with VLLMClient(f"http://{ip}:{port}", ClientConfig(api_key=key)) as client:
                return await client.complete(model, prompt, max_tokens=max_tokens)

        return asyncio.run(go())

    def show_answer(self, agent: str) -> str:
        entity, answer = sorted(facts(agent).items())[0]
        prompt = f"user : what is the color of {entity} ? the color of {entity} is"
        got = str(self.complete(agent, prompt, max_tokens=3).text).strip()
        self.log(f"  {agent} was taught '{entity} -> {answer}'; asked, it answers: {got!r}")
        return got

    def run_loop(self) -> dict[str, Any]:
        """DESIGN.md §4 end to end for the first agent; returns what was observed at each step."""
        agent = self.cfg.agents[0]
        seen: dict[str, Any] = {}
        self.log("[1/7] waiting for the vLLM pod (a real vLLM CPU server) to be ready")
        self.wait("Swarm has a ready inference pod", lambda: self.status("swarms", self.cfg.swarm).get("readyReplicas"))
        self.log(f"[2/7] training: new interaction records for {agent}")
        self.feed(agent, 1)
        seen["v1"] = self.wait(f"{self.tier_name(agent, 'context')} v1 trained and published",
                               lambda: self._version_at_least(agent, 1))
        self.log("[3/7] hot-swap: the composed adapter is loaded into every vLLM pod")
        seen["served1"] = self.wait(f"{agent}'s adapter served", lambda: self.served(agent))
        self.log(f"  served version {seen['served1']['servedVersion']}")
        seen["answer1"] = self.show_answer(agent)
        self.log(f"[4/7] more records for {agent}: a second version of the context tier")
        self.feed(agent, 2)
        seen["v2"] = self.wait(f"{self.tier_name(agent, 'context')} v2", lambda: self._version_at_least(agent, 2))
        self.log("[5/7] migration: answers taught in two rounds move from the context tier to the agent tier")
        seen["agent_v1"] = self.wait(
            f"{self.tier_name(agent, 'agent')} v1 (migrated)", lambda: self.tier_version(agent, "agent") or None
        )
        policy = self.status("migrationpolicies", f"{self.cfg.swarm}-consolidation")
        seen["decisions"] = policy.get("decisions", [])
        for d in seen["decisions"][-3:]:
            self.log(f"  decision: {d.get('sourceTier')} -> {d.get('targetTier')}: {d.get('outcome')} "
                     f"({d.get('reason')})")  # fmt: skip
        self.log("[6/7] hot-swap of the new stack, and a request answered by it")
        seen["served2"] = self.wait(f"{agent} served with the agent tier", lambda: self._served_with(agent, ".a"))
        self.log(f"  served version {seen['served2']['servedVersion']}")
        seen["answer2"] = self.show_answer(agent)
        return seen

    def judged(self, tier: str, after: int) -> dict[str, Any] | None:
        """The tier's status once a version newer than ``after`` has a quality-gate verdict."""
        st = self.status("loratiers", tier)
        latest = int(st.get("latestVersion") or 0)
        judged = {int(h["version"]) for h in st.get("history", []) if h.get("accepted") is not None}
        return st if latest > after and latest in judged else None

    def final_verdict(self, tier: str, after: int) -> dict[str, Any] | None:
        """The tier's status once the last attempt at a version newer than ``after`` is judged: a version the
        gate refused for collateral forgetting is trained again with more replay (the operator's retry, as a
        user sees it), so only the retry's verdict, or a refusal that is not retried, is final. Whether a refusal
        is retried is decided once its Job is seen complete: the verdict can reach the status first (from the
        published version), so a verdict is final only once no Job is active."""
        st = self.judged(tier, after)
        if st is None or st.get("activeJob") or (
                (st.get("lastGate") or {}).get("accepted") is False and st.get("collateralRetries")):
            return None
        return st

    def run_gate_step(self) -> dict[str, Any]:
        """A shuffled-label round: the quality gate refuses it and the served adapter does not move."""
        agent = self.cfg.agents[0]
        tier = self.tier_name(agent, "context")
        st = self.status("loratiers", tier)
        latest = int(st.get("latestVersion") or st.get("currentVersion") or 0)
        before = (self.served(agent) or {}).get("servedVersion")
        self.log(f"[7/7] quality gate: {agent} is fed records with shuffled labels (every answer wrong)")
        self.feed(agent, 99, corrupted=True)
        st = self.wait(f"the corrupted update of {tier} is trained and judged", lambda: self.judged(tier, latest))
        gate = st.get("lastGate", {})
        verdict = "promoted" if gate.get("accepted") else "REJECTED"
        self.log(f"  v{gate.get('version')} {verdict}: {gate.get('reason', '')[:300]}")
        self.log(f"  still served: {(self.served(agent) or {}).get('servedVersion')} (was {before}); "
                 f"history: dynamiclora history {tier} -n {self.cfg.namespace} --store file://{self.pvc_root}/ckpt/dl")
        return st

    def _version_at_least(self, agent: str, n: int) -> int | None:
        """The context tier's accepted version once it is ``n`` or later; fails at once on a rejection."""
        st = self.status("loratiers", self.tier_name(agent, "context"))
        v = int(st.get("currentVersion") or 0)
        if v >= n:
            return v
        gate = st.get("lastGate") or {}
        if gate.get("accepted") is False and int(gate.get("version") or 0) >= n:
            raise StepFailed(f"v{gate['version']} was rejected by the quality gate: {gate.get('reason', '')[:400]}")
        return None

    def _served_with(self, agent: str, marker: str) -> dict[str, Any] | None:
        """The served entry once its label has ``marker``.

        No need to wait for the migration's residual: serving composes the new agent version only with
        it (``controllers/stack_consistency.py``).
        """
        entry = self.served(agent)
        label = str((entry or {}).get("servedVersion"))
        return entry if entry and marker in label else None

    def explore_hint(self) -> str:
        kc = self.cluster.kubeconfig
        return "\n".join([
            "Explore:",
            f"  export KUBECONFIG={kc}",
            "  kubectl get swarms,loratiers,migrationpolicies",
            f"  kubectl describe swarm {self.cfg.swarm}",
            f"  kubectl describe loratier {self.tier_name(self.cfg.agents[0], 'context')}",
            f"  kubectl get migrationpolicy {self.cfg.swarm}-consolidation -o jsonpath='{{.status.decisions}}'",
            f"  curl -s http://127.0.0.1:{self.metrics_port}/metrics | grep ^dynamiclora_",
            f"  operator log: {self.operator_log}",
        ])  # fmt: skip


def summary(seen: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in seen.items() if k != "decisions"}, default=str, indent=2)
