"""Where the shipped task folder and router checkpoints live, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _shipped(name: str) -> Path:
    # A wheel carries the folder inside the package; an editable install points at the checkout.
    inside = _PACKAGE / "_data" / name
    return inside if inside.is_dir() else _CHECKOUT / name


def tasks_dir() -> Path:
    """The folder holding the project's lm-eval task YAMLs (pass it to ``--include_path``)."""
    return _shipped("tasks")


def router_ckpts_dir() -> Path:
    """The folder holding the shipped router checkpoints."""
    return _shipped("router_ckpts")
