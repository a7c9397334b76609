"""The one table that maps container images to local commands for the local executor.

A pod labelled ``dynamiclora.io/executor: local`` runs on the developer's machine instead of in a
container. Its image is looked up here by *repository* (the tag or digest is ignored); the entry gives
the argv prefix that replaces the image's entrypoint. The container's ``command`` and ``args`` are then
handled the way a container runtime would:

* ``command`` set: when it starts with one of the entry's ``entrypoints`` (e.g. ``dynamiclora`` or
  ``vllm serve``), that part is replaced by the local prefix; otherwise the command runs as written
  (``sh -c ...`` works for any image; ``python``/``python3`` always means this venv's interpreter).
* only ``args`` set: ``prefix + args``.
* ``positional_flag``: the image's entrypoint takes a positional argument that the local command
  wants as a flag (``vllm serve MODEL`` -> ``api_server --model MODEL``).
* servers: when an entry has a ``host_flag`` (vLLM's ``--host``) the executor binds it to the pod IP.

| image repository              | local command                                              |
|-------------------------------|------------------------------------------------------------|
| ghcr.io/dynamiclora/trainer   | ``dynamiclora``, ``torchrun``; trainer image env. (``$DYNAMICLORA_TRAINER_PYTHON``) |
| ghcr.io/dynamiclora/operator  | ``dynamiclora``, operator image env. (``$DYNAMICLORA_OPERATOR_PYTHON``) |
| vllm/vllm-openai-cpu          | ``python -m vllm.entrypoints.openai.api_server`` (this venv) |
| busybox, python (test images) | run ``command``/``args`` as written, ``python`` = this venv |

:class:`~dynamiclora_dev.localcluster.cluster.LocalCluster` builds the two image environments
(``trainer_env.py``, ``operator_env.py``) and hands their interpreters to the executor through those
variables, so Jobs and sidecars run what the images would; without them, this venv's interpreter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalImage:
    """How one image runs locally.

    Attributes:
        positional_flag: flag that a leading positional argument of the entrypoint becomes.
        host_flag: flag naming the listen address; the executor points it at the pod IP (adding it
            when absent, replacing 0.0.0.0/::), so servers of different pods can share a port.
        prefix: argv that replaces the image's default entrypoint.
        entrypoints: argv prefixes a pod's ``command`` may start with to mean that entrypoint; the
            longest matching one is replaced by ``prefix``.
    """

    prefix: tuple[str, ...]
    entrypoints: tuple[tuple[str, ...], ...] = ()
    host_flag: str | None = None
    positional_flag: str | None = None
    python: str = sys.executable  # what ``python``/``python3`` means in a command for this image
    tools: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()  # other commands of the image -> local argv


TRAINER_PYTHON = "DYNAMICLORA_TRAINER_PYTHON"
OPERATOR_PYTHON = "DYNAMICLORA_OPERATOR_PYTHON"


def _python(image_env: str | None = None) -> str:
    return (os.environ.get(image_env) if image_env else None) or sys.executable


def image_table() -> dict[str, LocalImage]:
    """The image repository -> local command table (see the module docstring)."""
    py, trainer, operator = _python(), _python(TRAINER_PYTHON), _python(OPERATOR_PYTHON)
    vllm_module = ("-m", "vllm.entrypoints.openai.api_server")
    return {
        "ghcr.io/dynamiclora/trainer": LocalImage(prefix=(trainer, "-m", "dynamiclora.cli"),
                                                  entrypoints=(("dynamiclora",),), python=trainer,
                                                  # data-parallel training (indexed Jobs, TrainJobs)
                                                  tools=((("torchrun",), (trainer, "-m", "torch.distributed.run")),)),
        "ghcr.io/dynamiclora/operator": LocalImage(prefix=(operator, "-m", "dynamiclora.cli"),
                                                   entrypoints=(("dynamiclora",),), python=operator),
        "vllm/vllm-openai-cpu": LocalImage(
            prefix=(py, *vllm_module),
            entrypoints=(("vllm", "serve"), ("python3", *vllm_module), ("python", *vllm_module)),
            host_flag="--host",
            positional_flag="--model",
        ),
        # Generic images used by tests and examples: commands run as written, python is this venv's.
        "busybox": LocalImage(prefix=("sh",)),
        "python": LocalImage(prefix=(py,), entrypoints=(("python",), ("python3",))),
    }


def wants_host_flag(image: str) -> str | None:
    """The listen-address flag of ``image`` (see :class:`LocalImage`), or None."""
    entry = image_table().get(repository(image))
    return entry.host_flag if entry else None


class UnknownImageError(ValueError):
    """The image has no entry in the table."""


def repository(image: str) -> str:
    """``repo[:tag][@digest]`` -> ``repo`` (a registry port such as ``host:5000/x`` is kept)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    if name.startswith("docker.io/"):
        name = name[len("docker.io/") :]
    if name.startswith("library/"):
        name = name[len("library/") :]
    return name


def local_argv(image: str, command: Sequence[str], args: Sequence[str]) -> list[str]:
    """The argv that runs a container of ``image`` with ``command``/``args`` locally.

    Raises:
        UnknownImageError: the image repository is not in the table (the message lists the table).
    """
    table = image_table()
    entry = table.get(repository(image))
    if entry is None:
        raise UnknownImageError(
            f"image {image!r} has no local command; known repositories: {', '.join(sorted(table))} "
            "(edit dev/dynamiclora_dev/localcluster/images.py)"
        )
    if command:
        for entrypoint in sorted(entry.entrypoints, key=len, reverse=True):
            if tuple(command[: len(entrypoint)]) == entrypoint:
                return [*entry.prefix, *_flagged(entry, [*command[len(entrypoint) :], *args])]
        for tool, local in entry.tools:
            if tuple(command[: len(tool)]) == tool:
                return [*local, *command[len(tool) :], *args]
        if command[0] in ("python", "python3"):
            # The image's interpreter (its environment), not whatever ``python`` is on this machine.
            return [entry.python, *command[1:], *args]
        return [*command, *args]
    return [*entry.prefix, *_flagged(entry, list(args))]


def _flagged(entry: LocalImage, rest: list[str]) -> list[str]:
    if entry.positional_flag and rest and not rest[0].startswith("-"):
        return [entry.positional_flag, *rest]
    return rest
