"""Start and stop a real vLLM CPU server as a local process (tests, benchmark, local pod executor).

The flags below are the ones that make a tiny model start in about a minute on a 2-core machine; they
are documented in docs/serving.md. The server binds to a loopback address only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dynamiclora.serving.adapters import PodTarget
from dynamiclora.serving.guard import ADMIN_KEY_ENV, CLIENT_KEY_ENV

GUARD_MODULE = "dynamiclora_guard"  # the name the guard has inside a vLLM container
GUARD_MIDDLEWARE = f"{GUARD_MODULE}.AdminGuard"


def guard_source() -> str:
    """The guard middleware's source, as mounted into vLLM containers (it needs nothing but the stdlib)."""
    return (Path(__file__).parent / "guard.py").read_text()


def write_guard(folder: Path) -> Path:
    """Write the guard module into ``folder`` (put on vLLM's PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{GUARD_MODULE}.py"
    path.write_text(guard_source())
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class VLLMServerConfig:
    """Arguments of one local vLLM server."""

    model_dir: str = field(metadata={"help": "base model directory (served under this name)"})
    port: int = field(metadata={"help": "TCP port"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address; loopback only"})
    max_lora_rank: int = field(default=16, metadata={"help": "--max-lora-rank (a value vLLM allows)"})
    max_loras: int = field(default=2, metadata={"help": "--max-loras: adapters in one batch"})
    max_cpu_loras: int = field(default=8, metadata={"help": "--max-cpu-loras: adapters kept resident"})
    max_model_len: int = field(default=256, metadata={"help": "--max-model-len"})
    max_num_seqs: int = field(default=8, metadata={"help": "--max-num-seqs"})
    kv_cache_gib: int = field(default=1, metadata={"help": "VLLM_CPU_KVCACHE_SPACE in GiB"})
    api_key: str | None = field(default=None, metadata={"help": "--api-key, or the client key with admin_key"})
    admin_key: str | None = field(default=None, metadata={
        "help": "the operator's key: run behind dynamiclora's guard middleware as a pod does (api_key is then "
                "the client key, which cannot manage adapters)"})
    guard_dir: str | None = field(default=None, metadata={"help": "where the guard module is written"})
    log_path: str | None = field(default=None, metadata={"help": "server stdout/stderr file"})
    startup_timeout_s: float = field(default=600.0, metadata={"help": "time allowed to become healthy"})

    def __post_init__(self) -> None:
        if not (self.host.startswith("127.") or self.host == "localhost"):
            raise ValueError(f"VLLMServerConfig.host must be a loopback address, got {self.host!r}")
        if self.max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
            raise ValueError(f"VLLMServerConfig.max_lora_rank={self.max_lora_rank} is not allowed by vLLM")

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir, "--host", self.host, "--port", str(self.port),
            "--dtype", "float32", "--enforce-eager",
            "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
            "--enable-lora", "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras), "--max-cpu-loras", str(self.max_cpu_loras),
        ]
        if self.admin_key:
            args += ["--middleware", GUARD_MIDDLEWARE]
        elif self.api_key:
            args += ["--api-key", self.api_key]
        return args

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib),
            # Other processes share the cores: do not pin OpenMP threads to them.
            VLLM_CPU_OMP_THREADS_BIND="nobind",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        if self.admin_key:
            if not self.api_key or not self.guard_dir:
                raise ValueError("VLLMServerConfig: admin_key needs api_key (the client key) and guard_dir")
            write_guard(Path(self.guard_dir))
            env.update({ADMIN_KEY_ENV: self.admin_key, CLIENT_KEY_ENV: self.api_key,
                        "PYTHONPATH": os.pathsep.join(filter(None, [self.guard_dir, env.get("PYTHONPATH")]))})
        return env


class VLLMServer:
    """One vLLM server process; ``start``/``stop``/``restart`` keep the same address."""

    def __init__(self, config: VLLMServerConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def target(self, name: str = "") -> PodTarget:
        """The :class:`PodTarget` describing this server, as the operator would build it."""
        return PodTarget(
            base_url=self.base_url,
            max_lora_rank=self.config.max_lora_rank,
            base_model=self.config.model_dir,
            max_cpu_loras=self.config.max_cpu_loras,
            name=name or f"vllm-{self.config.port}",
        )

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.config.log_path or os.devnull, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.config.argv(), env=self.config.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches the engine-core children
        )
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        key = self.config.admin_key or self.config.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; see {self.config.log_path}")
            try:
                req = urllib.request.Request(f"{self.base_url}/v1/models", headers=headers)
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(
            f"vLLM not ready after {self.config.startup_timeout_s}s; see {self.config.log_path}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        if not self.config.log_path or not Path(self.config.log_path).exists():
            return ""
        return "\n".join(Path(self.config.log_path).read_text(errors="replace").splitlines()[-lines:])
