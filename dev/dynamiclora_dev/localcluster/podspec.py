"""Turn a pod's container into a local process description (pure; no API calls, no processes).

Paths: a container sees its volumes at ``mountPath``; locally the same data lives in another folder,
so every occurrence of a mount path in the command, args, env values and working dir is rewritten to
the local folder (longest mount path first, only at path boundaries). Env values, command and args get
Kubernetes' ``$(VAR)`` expansion. Objects the pod references (Secrets, ConfigMaps, service-account
tokens) come from an :class:`ObjectSource`, so unit tests need no API server.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dynamiclora_dev.localcluster.images import local_argv, wants_host_flag
from dynamiclora_dev.localcluster.termination import local_message_file, message_path

EXECUTOR_LABEL = "dynamiclora.io/executor"
EXECUTOR_VALUE = "local"
# Env vars a local process inherits from the executor; everything else comes from the pod spec.
# The CPU kernel choices of torch and MKL are the node's: a run with them forced (ATEN_CPU_CAPABILITY=default,
# MKL_CBWR=COMPATIBLE) takes another float path through every pod, as another CPU model would.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "VIRTUAL_ENV", "HF_HOME", "GOCACHE",
                 "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


class PodSpecError(ValueError):
    """The pod cannot run locally (message names the pod, container and field).

    ``transient`` marks errors that may go away (a referenced Secret or ConfigMap not created yet).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ObjectSource(Protocol):
    """Read access to the objects a pod references."""

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """Decoded data of a Secret, or None when it does not exist."""
        ...

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """Data of a ConfigMap, or None when it does not exist."""
        ...

    def service_account_token(self, namespace: str, account: str, audience: str | None) -> str | None:
        """A fresh token for the service account, or None when it cannot be issued."""
        ...


@dataclass
class LocalLaunch:
    """Everything needed to start one container as a local process.

    Attributes:
        argv: Command line after image mapping, ``$(VAR)`` expansion and path rewriting.
        env: Complete environment of the process.
        cwd: Working directory.
        files: Files to materialise before starting (Secret/ConfigMap/downward API volumes).
        dirs: Folders that must exist (PVCs, emptyDirs).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    files: dict[Path, bytes] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)


def pod_key(pod: Mapping[str, Any]) -> str:
    """``namespace/name`` of a pod."""
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """Value of a downward-API ``fieldPath`` such as ``status.podIP`` or ``metadata.labels['x']``."""
    meta = pod.get("metadata", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName"),
        "status.podIP": pod.get("status", {}).get("podIP"),
        "status.hostIP": pod.get("status", {}).get("hostIP"),
        "status.podIPs": pod.get("status", {}).get("podIP"),
        "status.hostIPs": pod.get("status", {}).get("hostIP"),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise PodSpecError(f"{pod_key(pod)}: unsupported fieldRef.fieldPath {path!r}")
    return str(simple[path] or "")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined vars are replaced, ``$$`` escapes, others stay."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, text)


def rewrite_paths(text: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """Replace container mount paths by their local folders (longest first, at path boundaries)."""
    for mount_path, local in sorted(mounts, key=lambda m: len(m[0]), reverse=True):
        root = mount_path.rstrip("/") or "/"
        if root == "/":
            continue  # a volume mounted on / cannot be told apart from other absolute paths
        pattern = r"(?<![\w./-])" + re.escape(root) + r"(?=/|$|[^\w.-])"
        text = re.sub(pattern, str(local).replace("\\", "\\\\"), text)
    return text


def _secret_value(source: ObjectSource, namespace: str, ref: Mapping[str, Any], where: str) -> str | None:
    data = source.secret(namespace, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise PodSpecError(f"{where}: secretKeyRef {ref['name']}/{ref['key']} not found", transient=True)
    return data[ref["key"]].decode(errors="replace")


def _config_value(source: ObjectSource, namespace: str, ref: Mapping[str, Any], where: str) -> str | None:
    data = source.config_map(namespace, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise PodSpecError(f"{where}: configMapKeyRef {ref['name']}/{ref['key']} not found", transient=True)
    return data[ref["key"]]


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], source: ObjectSource, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment a container sees: ``base``, then ``envFrom``, then ``env`` (in order)."""
    namespace = pod["metadata"].get("namespace", "default")
    where = f"{pod_key(pod)} container {container['name']}"
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            cm = source.config_map(namespace, ref["name"])
            if cm is None and not ref.get("optional"):
                raise PodSpecError(f"{where}: envFrom configMapRef {ref['name']} not found", transient=True)
            env.update({prefix + k: v for k, v in (cm or {}).items()})
        elif "secretRef" in src:
            ref = src["secretRef"]
            secret = source.secret(namespace, ref["name"])
            if secret is None and not ref.get("optional"):
                raise PodSpecError(f"{where}: envFrom secretRef {ref['name']} not found", transient=True)
            env.update({prefix + k: v.decode(errors="replace") for k, v in (secret or {}).items()})
    for var in container.get("env") or []:
        name = var["name"]
        value_from = var.get("valueFrom")
        if value_from is None:
            env[name] = expand(var.get("value", ""), env)
            continue
        value: str | None
        if "secretKeyRef" in value_from:
            value = _secret_value(source, namespace, value_from["secretKeyRef"], f"{where} env {name}")
        elif "configMapKeyRef" in value_from:
            value = _config_value(source, namespace, value_from["configMapKeyRef"], f"{where} env {name}")
        elif "fieldRef" in value_from:
            value = field_ref(pod, value_from["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in value_from:
            res = value_from["resourceFieldRef"]["resource"]  # e.g. limits.cpu
            kind, _, resource = res.partition(".")
            value = str(((container.get("resources") or {}).get(kind) or {}).get(resource, "0"))
        else:
            raise PodSpecError(f"{where} env {name}: unsupported valueFrom {sorted(value_from)}")
        if value is not None:
            env[name] = value
    # A local process runs as the host's user: its home (and the caches in it) stays the host's, whatever
    # home the pod gives the container's non-root user.
    if "HOME" in base:
        env["HOME"] = base["HOME"]
    return env


def _items(data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def volume_files(pod: Mapping[str, Any], volume: Mapping[str, Any], source: ObjectSource) -> dict[str, bytes] | None:
    """Files of a Secret/ConfigMap/downwardAPI/projected volume (relative path -> bytes), else None."""
    namespace = pod["metadata"].get("namespace", "default")
    where = f"{pod_key(pod)} volume {volume['name']}"
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if "projected" in volume:
        for src in volume["projected"].get("sources") or []:
            sources.extend(src.items())
    else:
        sources.extend((k, v) for k, v in volume.items() if k in ("secret", "configMap", "downwardAPI"))
    if not sources:
        return None
    files: dict[str, bytes] = {}
    for kind, spec in sources:
        if kind == "secret":
            name = str(spec.get("secretName") or spec.get("name"))
            secret = source.secret(namespace, name)
            if secret is None and not spec.get("optional"):
                raise PodSpecError(f"{where}: secret {name} not found", transient=True)
            files.update(_items(secret or {}, spec.get("items")))
        elif kind == "configMap":
            cm = source.config_map(namespace, spec["name"])
            if cm is None and not spec.get("optional"):
                raise PodSpecError(f"{where}: configMap {spec['name']} not found", transient=True)
            files.update(_items({k: v.encode() for k, v in (cm or {}).items()}, spec.get("items")))
        elif kind == "downwardAPI":
            for item in spec.get("items") or []:
                if "fieldRef" in item:
                    files[item["path"]] = field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
        elif kind == "serviceAccountToken":
            account = pod.get("spec", {}).get("serviceAccountName") or "default"
            token = source.service_account_token(namespace, account, spec.get("audience"))
            if token is not None:
                files[spec["path"]] = token.encode()
        elif kind == "clusterTrustBundle":
            raise PodSpecError(f"{where}: projected clusterTrustBundle is not supported locally")
    return files


def volume_dirs(pod: Mapping[str, Any], state_dir: Path, pod_dir: Path) -> dict[str, Path]:
    """Local folder of every volume, by volume name."""
    namespace = pod["metadata"].get("namespace", "default")
    out: dict[str, Path] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            out[name] = state_dir / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:
            out[name] = Path(volume["hostPath"]["path"])
        elif "emptyDir" in volume:
            out[name] = pod_dir / "emptydir" / name
        elif any(k in volume for k in ("secret", "configMap", "downwardAPI", "projected")):
            out[name] = pod_dir / "volumes" / name
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise PodSpecError(f"{pod_key(pod)} volume {name}: unsupported volume type {kinds}")
    return out


def _set_host(argv: list[str], flag: str, pod_ip: str) -> list[str]:
    """Point ``flag`` (e.g. ``--host``) at the pod IP unless it already names a specific address."""
    wildcard = ("", "0.0.0.0", "::", "[::]")
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            if out[i + 1] in wildcard:
                out[i + 1] = pod_ip
            return out
        if arg.startswith(flag + "="):
            if arg.split("=", 1)[1] in wildcard:
                out[i] = f"{flag}={pod_ip}"
            return out
    return [*out, flag, pod_ip]


def launch(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    source: ObjectSource,
    *,
    state_dir: Path,
    pod_dir: Path,
    base_env: Mapping[str, str],
) -> LocalLaunch:
    """Describe how to run ``container`` of ``pod`` locally.

    Raises:
        PodSpecError: a referenced object is missing or the spec uses something unsupported.
    """
    where = f"{pod_key(pod)} container {container['name']}"
    dirs = volume_dirs(pod, state_dir, pod_dir)
    volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes") or []}
    mounts: list[tuple[str, Path]] = []
    files: dict[Path, bytes] = {}
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in dirs:
            raise PodSpecError(f"{where}: volumeMount {name!r} names no volume of the pod")
        local = dirs[name] / mount["subPath"] if mount.get("subPath") else dirs[name]
        mounts.append((mount["mountPath"], local))
        content = volume_files(pod, volumes[name], source)
        for rel, data in (content or {}).items():
            files[dirs[name] / rel] = data
    mounts.append((message_path(container), local_message_file(pod_dir, container)))
    env = container_env(pod, container, source, base_env)
    env = {k: rewrite_paths(v, mounts) for k, v in env.items()}
    try:
        argv = local_argv(
            container.get("image", ""),
            [expand(c, env) for c in container.get("command") or []],
            [expand(a, env) for a in container.get("args") or []],
        )
    except ValueError as exc:
        raise PodSpecError(f"{where}: {exc}") from exc
    argv = [rewrite_paths(a, mounts) for a in argv]
    pod_ip = pod.get("status", {}).get("podIP") or ""
    host_flag = wants_host_flag(container.get("image", ""))
    if host_flag and pod_ip:
        argv = _set_host(argv, host_flag, pod_ip)
    cwd = Path(rewrite_paths(container["workingDir"], mounts)) if container.get("workingDir") else pod_dir
    needed = [d for d in dirs.values() if not any(d == Path(p) for p in ("/", "/tmp"))]
    return LocalLaunch(argv=argv, env=env, cwd=cwd, files=files, dirs=[*needed, cwd])


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    """A Secret's base64 ``data`` as bytes."""
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}
