"""Znode path arithmetic, shared by the config checks and the watch tree."""

from __future__ import annotations


def is_under(path: str, base: str) -> bool:
    """Whether ``path`` lies strictly below ``base``."""
    return path.startswith(base if base == "/" else base + "/")


def join(parent: str, child: str) -> str:
    """The path of ``child`` under ``parent``."""
    return parent + child if parent == "/" else f"{parent}/{child}"


def parent_of(path: str) -> str:
    """The parent of ``path`` (``/`` for a top-level znode)."""
    return path.rpartition("/")[0] or "/"
