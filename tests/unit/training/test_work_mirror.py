"""The store side of a training run's work area: what a retried Job finds there."""

from __future__ import annotations

from pathlib import Path

from dynamiclora.storage.fs import FsBackend
from dynamiclora.training.work_mirror import LATEST, WorkMirror


def _ckpt(work: Path, step: int, payload: bytes) -> Path:
    path = work / f"ckpt-{step:06d}"
    path.mkdir(parents=True)
    (path / "state.pt").write_bytes(payload)
    return path


def test_the_newest_checkpoint_and_only_it_travels(tmp_path: Path) -> None:
    store = FsBackend(tmp_path / "store")
    mirror, logs = WorkMirror(store, "published.json"), []
    mirror.checkpoint_saved(_ckpt(tmp_path / "pod1", 10, b"ten"))
    mirror.checkpoint_saved(_ckpt(tmp_path / "pod1", 20, b"twenty"))
    assert sorted(i.key for i in store.list("")) == [LATEST, "ckpt-000020/state.pt"]

    mirror.restore(tmp_path / "pod2", logs.append)  # a new pod, an empty work dir
    assert (tmp_path / "pod2" / "ckpt-000020" / "state.pt").read_bytes() == b"twenty"
    assert [p.name for p in (tmp_path / "pod2").iterdir()] == ["ckpt-000020"]
    assert logs and "restored checkpoint ckpt-000020" in logs[0]

    mirror.restore(tmp_path / "pod1", logs.append)  # a pod's own checkpoints are never overwritten
    assert sorted(p.name for p in (tmp_path / "pod1").iterdir()) == ["ckpt-000010", "ckpt-000020"]


def test_publication_replaces_the_checkpoints_with_its_marker(tmp_path: Path) -> None:
    store = FsBackend(tmp_path / "store")
    mirror = WorkMirror(store, "published.json")
    work = tmp_path / "pod1"
    mirror.checkpoint_saved(_ckpt(work, 10, b"ten"))
    (work / "published.json").write_text('{"result": {"version": 3}}')
    mirror.published(work)
    assert [i.key for i in store.list("")] == ["published.json"]
    mirror.restore(tmp_path / "pod2", lambda _m: None)
    assert (tmp_path / "pod2" / "published.json").read_text() == '{"result": {"version": 3}}'


def test_nothing_mirrored_is_nothing_restored(tmp_path: Path) -> None:
    mirror = WorkMirror(FsBackend(tmp_path / "store"), "published.json")
    (tmp_path / "pod").mkdir()
    mirror.restore(tmp_path / "pod", lambda _m: None)
    assert list((tmp_path / "pod").iterdir()) == []
