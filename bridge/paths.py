"""Checking the file paths users give for run logs and CSVs: their type, and a parent folder that exists."""

from __future__ import annotations

import os

from bridge.errors import RunLogError


def path_text(path: str | os.PathLike[str]) -> str:
    """``path`` as a string; ``TypeError`` for anything that is not a path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    return os.fspath(path)


def require_parent(path: str, what: str) -> None:
    """``RunLogError`` naming ``what`` (e.g. "run log") when the folder that would hold ``path`` is missing."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise RunLogError(f"cannot create {what} {path}: directory {parent} does not exist; create it first")
