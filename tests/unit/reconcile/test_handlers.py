"""Which watch events trigger a reconcile (the operator's generation predicate)."""

from __future__ import annotations

import pytest

from dynamiclora.controllers.handlers import needs_reconcile


@pytest.mark.parametrize(
    ("event", "body", "expected"),
    [
        (None, {"metadata": {"generation": 1}}, True),  # listed at start-up, never reconciled
        ("ADDED", {"metadata": {"generation": 1}, "status": {}}, True),
        ("MODIFIED", {"metadata": {"generation": 2}, "status": {"observedGeneration": 1}}, True),  # spec changed
        ("MODIFIED", {"metadata": {"generation": 2}, "status": {"observedGeneration": 2}}, False),  # our own write
        ("DELETED", {"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}, False),
        ("MODIFIED", {"metadata": {"generation": 3, "deletionTimestamp": "2026-11-22T00:00:00Z"}}, False),
    ],
)
def test_needs_reconcile(event: str | None, body: dict[str, object], expected: bool) -> None:
    assert needs_reconcile(event, body) is expected
