"""RFC 7386 JSON merge patch, as the API server applies ``application/merge-patch+json`` (for stand-ins of
the API that take the operator's status patches)."""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` merged in: a null removes its key, an object merges key by key, anything
    else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
