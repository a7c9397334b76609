"""Local executor: runs pods labelled ``dynamiclora.io/executor: local`` as local processes.

The fake (kwok) nodes have no kubelet; for the pods that matter (training Jobs, vLLM servers) this
executor plays the kubelet's part:

* waits until the pod is scheduled and kwok's ``pod-assign-ip`` stage gave it a loopback pod IP;
* runs init containers one after the other, then every container, each as a local process in its own
  process group (see :mod:`dynamiclora_dev.localcluster.podspec` for command, env and volume mapping and
  :mod:`dynamiclora_dev.localcluster.images` for the image table);
* restarts containers per ``restartPolicy`` with exponential back-off (1 s doubling up to 30 s);
* probes ``readinessProbe`` (httpGet/tcpSocket; at most every second, ``initialDelaySeconds`` honoured);
* writes pod status (phase, conditions, container states, exit codes, termination messages as
  :mod:`dynamiclora_dev.localcluster.termination` computes them) so that Jobs complete or fail through the
  real job controller;
* kills the processes when the pod is deleted (kwok removes the object itself);
* gives every Pending PersistentVolumeClaim a hostPath volume (:mod:`dynamiclora_dev.localcluster.volumes`).

Each container's stdout/stderr go to ``<state>/pods/<namespace>/<pod>/<container>.log``; the path is
also in the pod annotation ``dynamiclora.io/local-logs``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dynamiclora_dev.localcluster.cluster_dns import resolve
from dynamiclora_dev.localcluster.podspec import (
    EXECUTOR_LABEL,
    EXECUTOR_VALUE,
    INHERITED_ENV,
    PodSpecError,
    decode_secret,
    launch,
    pod_key,
)
from dynamiclora_dev.localcluster.process import ManagedProcess, start_process
from dynamiclora_dev.localcluster.rest import ApiError, Rest
from dynamiclora_dev.localcluster.termination import local_message_file, termination_message
from dynamiclora_dev.localcluster.volumes import bind_pending_claims

log = logging.getLogger(__name__)
LOG_ANNOTATION = "dynamiclora.io/local-logs"
SPEC_ERROR_RETRY_SECONDS = 30.0  # referenced Secrets/ConfigMaps may appear shortly after the pod


def now() -> str:
    """RFC 3339 timestamp as the API server expects it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RestObjectSource:
    """ObjectSource backed by the API server."""

    def __init__(self, rest: Rest) -> None:
        self.rest = rest

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        obj = self.rest.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return None if obj is None else decode_secret(obj.get("data"))

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self.rest.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def service_account_token(self, namespace: str, account: str, audience: str | None) -> str | None:
        spec: dict[str, Any] = {"expirationSeconds": 3600}
        if audience:
            spec["audiences"] = [audience]
        try:
            answer = self.rest.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", {"spec": spec})
        except ApiError:
            return None
        token: str | None = answer.get("status", {}).get("token")
        return token


class ContainerRun:
    """One container of a pod and its current local process."""

    def __init__(self, spec: Mapping[str, Any], log_path: Path) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.log_path = log_path
        self.proc: ManagedProcess | None = None
        self.restarts = 0
        self.exit_code: int | None = None
        self.done = False  # terminated and will not be restarted
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.message = ""
        self.ready = False
        self.probe_failures = 0
        self.next_start = 0.0
        self.next_probe = 0.0
        self.probe_not_before = 0.0

    def state(self) -> dict[str, Any]:
        if self.proc is not None:
            return {"running": {"startedAt": self.started_at}}
        if self.exit_code is not None:
            term: dict[str, Any] = {
                "exitCode": self.exit_code,
                "reason": "Completed" if self.exit_code == 0 else "Error",
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
            }
            if self.message:
                term["message"] = self.message
            return {"terminated": term}
        return {"waiting": {"reason": "ContainerCreating"}}

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"local://{self.proc.pid}" if self.proc else "",
            "ready": self.ready,
            "started": self.proc is not None,
            "restartCount": self.restarts,
            "state": self.state(),
        }


class PodRun:
    """Everything the executor tracks for one pod."""

    def __init__(self, pod: dict[str, Any], pod_dir: Path) -> None:
        self.pod = pod
        self.key = pod_key(pod)
        self.dir = pod_dir
        spec = pod["spec"]
        self.inits = [ContainerRun(c, pod_dir / f"{c['name']}.log") for c in spec.get("initContainers") or []]
        self.mains = [ContainerRun(c, pod_dir / f"{c['name']}.log") for c in spec.get("containers") or []]
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.started = False
        self.start_time: str | None = None
        self.spec_error_since: float | None = None
        self.transitions: dict[str, tuple[str, str]] = {}
        self.last_patch: str = ""

    def processes(self) -> list[ManagedProcess]:
        return [c.proc for c in [*self.inits, *self.mains] if c.proc is not None]


class Executor:
    """Runs the executor loop; call :meth:`run` from a long-lived thread (the supervisor's main one)."""

    def __init__(self, rest: Rest, state_dir: Path, kubeconfig: Path) -> None:
        self.rest = rest
        self.state = state_dir
        self.kubeconfig = kubeconfig
        self.source = RestObjectSource(rest)
        self.runs: dict[str, PodRun] = {}
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stop_event = threading.Event()

    # -- watch -----------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        params = {"labelSelector": f"{EXECUTOR_LABEL}={EXECUTOR_VALUE}"}
        while not self.stop_event.is_set():
            try:
                listing = self.rest.get("/api/v1/pods", params)
                self.events.put(("sync", listing["items"]))
                version = listing["metadata"]["resourceVersion"]
                while not self.stop_event.is_set():
                    query = {**params, "resourceVersion": version, "timeoutSeconds": "20"}
                    for event in self.rest.watch("/api/v1/pods", query, timeout=30):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError(obj.get("code", 500), "WATCH", "/api/v1/pods", str(obj))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.events.put(("pod", obj))
                        elif event["type"] == "DELETED":
                            self.events.put(("deleted", obj))
            except Exception as exc:  # the loop must survive API restarts and expired versions
                if not self.stop_event.is_set():
                    log.debug("pod watch restarting: %s", exc)
                    time.sleep(0.5)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "sync":
            seen = {p["metadata"]["uid"] for p in payload}
            for uid in list(self.runs):
                if uid not in seen:
                    self._finish(self.runs.pop(uid))
            for pod in payload:
                self._update(pod)
        elif kind == "pod":
            self._update(payload)
        elif kind == "deleted":
            run = self.runs.pop(payload["metadata"]["uid"], None)
            if run is not None:
                self._finish(run)

    def _update(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        run = self.runs.get(uid)
        if run is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return  # finished before this executor started; never rerun a completed pod
            meta = pod["metadata"]
            pod_dir = self.state / "pods" / meta.get("namespace", "default") / meta["name"]
            run = self.runs[uid] = PodRun(pod, pod_dir)
        run.pod = pod

    # -- main loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Watch and drive pods until ``stop`` (or :meth:`shutdown`) is set, then kill every process."""
        if stop is not None:
            self.stop_event = stop
        watcher = threading.Thread(target=self._watch_loop, name="executor-watch", daemon=True)
        watcher.start()
        next_claims = 0.0
        try:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_claims:
                    next_claims = time.monotonic() + 1.0
                    try:
                        bind_pending_claims(self.rest, self.state)
                    except (ApiError, OSError) as exc:
                        log.debug("claim binding skipped: %s", exc)
                try:
                    kind, payload = self.events.get(timeout=0.2)
                    self._handle(kind, payload)
                    while True:
                        kind, payload = self.events.get_nowait()
                        self._handle(kind, payload)
                except queue.Empty:
                    pass
                for run in list(self.runs.values()):
                    try:
                        self._step(run)
                    except Exception:
                        log.exception("executor: error while driving %s", run.key)
        finally:
            for run in list(self.runs.values()):
                self._finish(run)
            self.runs.clear()

    def shutdown(self) -> None:
        """Ask :meth:`run` to return."""
        self.stop_event.set()

    def pids(self) -> list[int]:
        """Process ids (= process groups) of every running pod process."""
        return [p.pid for run in self.runs.values() for p in run.processes()]

    def _finish(self, run: PodRun) -> None:
        grace = min(int(run.pod["spec"].get("terminationGracePeriodSeconds") or 30), 10)
        for proc in run.processes():
            proc.stop(timeout=grace)
        for sub in ("emptydir", "volumes"):
            shutil.rmtree(run.dir / sub, ignore_errors=True)
        self._write_pids()

    def _write_pids(self) -> None:
        (self.state / "executor-pids.json").write_text(json.dumps(self.pids()))

    # -- one pod ---------------------------------------------------------------------------------
    def _base_env(self, pod: Mapping[str, Any]) -> dict[str, str]:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(
            HOSTNAME=pod["metadata"]["name"],
            KUBECONFIG=str(self.kubeconfig),
            DYNAMICLORA_POD_IP=pod["status"].get("podIP", ""),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start(self, run: PodRun, container: ContainerRun) -> bool:
        """Start a container; False when the spec cannot run (pod failed or retried later)."""
        try:
            plan = launch(
                run.pod,
                container.spec,
                self.source,
                state_dir=self.state,
                pod_dir=run.dir,
                base_env=self._base_env(run.pod),
            )
            plan = resolve(plan, run.pod, [r.pod for r in self.runs.values()])
        except PodSpecError as exc:
            first = run.spec_error_since = run.spec_error_since or time.monotonic()
            if not exc.transient or time.monotonic() - first > SPEC_ERROR_RETRY_SECONDS:
                run.phase, run.reason, run.message = "Failed", "LocalExecutorError", str(exc)
                for c in [*run.inits, *run.mains]:
                    c.done = True
            else:
                run.reason, run.message = "LocalExecutorWaiting", str(exc)
            return False
        run.spec_error_since = None
        run.reason = run.message = ""
        for path in plan.dirs:
            path.mkdir(parents=True, exist_ok=True)
        for path, data in plan.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        # Like the kubelet's per-instance file: a restarted container must not report its predecessor's message.
        local_message_file(run.dir, container.spec).unlink(missing_ok=True)
        container.started_at = now()
        try:
            container.proc = start_process(
                f"{run.key}/{container.name}", plan.argv, container.log_path, env=plan.env, cwd=plan.cwd
            )
        except OSError as exc:  # what a runtime reports as StartError: exit code 128
            self._exited(run, container, 128, str(exc), run.pod["spec"].get("restartPolicy", "Always"))
            return False
        container.exit_code = None
        container.ready = False
        container.probe_failures = 0
        probe = container.spec.get("readinessProbe") or {}
        container.probe_not_before = time.monotonic() + float(probe.get("initialDelaySeconds", 0))
        self._write_pids()
        if not run.started:
            run.started = True
            run.start_time = now()
            self._annotate_logs(run)
        return True

    def _annotate_logs(self, run: PodRun) -> None:
        meta = run.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        try:
            self.rest.call(
                "PATCH",
                path,
                {"metadata": {"annotations": {LOG_ANNOTATION: str(run.dir)}}},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            log.debug("cannot annotate %s: %s", run.key, exc)

    def _reap(self, run: PodRun, container: ContainerRun, restart_policy: str) -> None:
        """Handle a container whose process exited."""
        assert container.proc is not None
        code = container.proc.stop(timeout=1)
        container.proc = None
        if code is None or code < 0:  # killed by a signal: report it the way a container runtime does
            code = 128 + (-code if code is not None else 9)
        message = termination_message(container.spec, code, local_message_file(run.dir, container.spec),
                                      container.log_path)  # fmt: skip
        self._exited(run, container, code, message, restart_policy)

    def _exited(self, run: PodRun, container: ContainerRun, code: int, message: str, restart_policy: str) -> None:
        container.exit_code = code
        container.finished_at = now()
        container.ready = False
        container.message = message
        restart = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
        if restart:
            container.restarts += 1
            container.next_start = time.monotonic() + min(2.0 ** (container.restarts - 1), 30.0)
        else:
            container.done = True
        self._write_pids()

    def _step(self, run: PodRun) -> None:
        pod = run.pod
        if pod["metadata"].get("deletionTimestamp"):
            for proc in run.processes():
                proc.stop(timeout=min(int(pod["spec"].get("terminationGracePeriodSeconds") or 30), 10))
            for c in [*run.inits, *run.mains]:
                c.proc = None
            self._write_pids()
            return
        if not pod["spec"].get("nodeName") or not pod.get("status", {}).get("podIP"):
            return
        policy = pod["spec"].get("restartPolicy", "Always")
        if run.phase not in ("Succeeded", "Failed"):
            self._drive(run, policy)
        self._probe(run)
        self._publish(run)

    def _drive(self, run: PodRun, policy: str) -> None:
        # Init containers: one at a time; they are restarted unless the pod's policy is Never.
        for init in run.inits:
            if init.proc is not None and init.proc.poll() is not None:
                self._reap(run, init, "Never" if policy == "Never" else "OnFailure")
            if init.done and init.exit_code != 0:
                run.phase = "Failed"
                return
            if init.done:
                continue
            if init.proc is None and time.monotonic() >= init.next_start:
                self._start(run, init)
            return
        for main in run.mains:
            if main.proc is not None and main.proc.poll() is not None:
                self._reap(run, main, policy)
            if main.proc is None and not main.done and time.monotonic() >= main.next_start:
                self._start(run, main)
        if run.phase == "Failed":
            return
        if all(c.done for c in run.mains):
            run.phase = "Succeeded" if all(c.exit_code == 0 for c in run.mains) else "Failed"
        elif any(c.proc is not None for c in run.mains):
            run.phase = "Running"

    def _probe(self, run: PodRun) -> None:
        pod_ip = run.pod["status"].get("podIP", "")
        for c in run.mains:
            if c.proc is None:
                continue
            probe = c.spec.get("readinessProbe")
            if not probe:
                c.ready = True
                continue
            t = time.monotonic()
            if t < c.probe_not_before or t < c.next_probe:
                continue
            c.next_probe = t + min(float(probe.get("periodSeconds", 10)), 1.0)
            ok = _probe_once(probe, c.spec, pod_ip)
            if ok:
                c.ready, c.probe_failures = True, 0
            else:
                c.probe_failures += 1
                if c.probe_failures >= int(probe.get("failureThreshold", 3)) or not c.ready:
                    c.ready = False

    def _condition(self, run: PodRun, kind: str, ok: bool) -> dict[str, Any]:
        value = "True" if ok else "False"
        previous = run.transitions.get(kind)
        if previous is None or previous[0] != value:
            run.transitions[kind] = (value, now())
        return {"type": kind, "status": value, "lastTransitionTime": run.transitions[kind][1]}

    def _publish(self, run: PodRun) -> None:
        running = run.phase == "Running"
        inits_done = all(c.done and c.exit_code == 0 for c in run.inits)
        ready = running and all(c.ready for c in run.mains)
        status: dict[str, Any] = {
            "phase": run.phase,
            "conditions": [
                self._condition(run, "PodReadyToStartContainers", True),
                self._condition(run, "Initialized", inits_done),
                self._condition(run, "ContainersReady", ready),
                self._condition(run, "Ready", ready),
            ],
            "containerStatuses": [c.status() for c in run.mains],
        }
        if run.inits:
            status["initContainerStatuses"] = [c.status() for c in run.inits]
        if run.start_time:
            status["startTime"] = run.start_time
        status["reason"] = run.reason or None
        status["message"] = run.message or None
        body = json.dumps(status, sort_keys=True)
        # Like a kubelet, re-assert our conditions when someone else changed them on the live pod (the
        # node lifecycle controller marks pods NotReady while a fake node's heartbeat lags on a busy CPU).
        live = {c.get("type"): c.get("status") for c in (run.pod.get("status") or {}).get("conditions") or []}
        ours_hold = all(live.get(c["type"]) == c["status"] for c in status["conditions"])
        if body == run.last_patch and ours_hold:
            return
        meta = run.pod["metadata"]
        try:
            self.rest.patch_status(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", {"status": status})
            run.last_patch = body
        except ApiError as exc:
            if exc.status != 404:
                log.warning("executor: cannot update status of %s: %s", run.key, exc)


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise PodSpecError(f"container {container.get('name')}: probe port {value!r} is not a named port")


def _probe_once(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> bool:
    """One readiness check against the pod IP; unsupported probe kinds count as passing."""
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{get.get('host') or pod_ip}:{_port(get['port'], container)}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(200 <= resp.status < 400)
        if "tcpSocket" in probe:
            port = _port(probe["tcpSocket"]["port"], container)
            with socket.create_connection((probe["tcpSocket"].get("host") or pod_ip, port), timeout=1):
                return True
    except (OSError, ValueError):
        return False
    return True
