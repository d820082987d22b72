"""Nested configs and specs as flat ``{"optimizer.lr": 5e-05, ...}`` dicts (no torch here: the
analysis modules use it too)."""

from __future__ import annotations

import json
from typing import Any


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys; lists become JSON text, so every value is hashable."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, (list, tuple)):
        return {prefix[:-1]: json.dumps(node)}
    return {prefix[:-1]: node}
