"""A finished run in one shape, whatever wrote it (lm-eval, a sweep cell, EvalPlus), and the helpers
its readers share (``readers.py``).

Per document a run keeps only what the diff and the routing view use: the score, the prompt hash,
the target, the extracted answers, and each repeat's response text with its accounting record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lm_eval_routed.errors import ConfigError

DocId = int | str


class Source(str, Enum):
    """What wrote a run."""

    LM_EVAL = "lm-eval"
    SWEEP = "sweep"
    EVALPLUS = "evalplus"


@dataclass(frozen=True)
class Generation:
    """One generated response of a document (one repeat) and its accounting record."""

    repeat: int
    text: str | None
    record: dict[str, Any] | None


@dataclass
class Doc:
    """One document of one task in one run."""

    doc_id: DocId
    score: float | None  # the task metric for this doc (a mean over repeats where it has them)
    prompt_hash: str | None = None
    target: str | None = None
    answers: list[str] = field(default_factory=list)  # extracted answers, one per repeat
    generations: list[Generation] = field(default_factory=list)


@dataclass
class TaskRun:
    """One task of a run: its metric and its documents by id."""

    task: str
    metric: str | None  # "name,filter" as lm-eval keys it; None where the run has no scores
    docs: dict[DocId, Doc] = field(default_factory=dict)
    dataset_hash: str | None = None  # EvalPlus: runs on other dataset versions do not pair


@dataclass
class Run:
    """A finished run: where it came from and its tasks."""

    label: str
    path: Path
    source: Source
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # the routed run info, where recorded


def doc_order(doc_id: DocId) -> tuple:
    """Sort key: numeric ids in order, string ids by their text with numbers compared as numbers."""
    if isinstance(doc_id, int):
        return (0, doc_id)
    return (1, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(doc_id))))


def jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one line at a time; a broken line is one clear error."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"{path}:{number} is not valid JSON (a run cut off while writing?); "
                    "rerun it or delete that line"
                ) from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is one clear error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no JSON object")
    return data


def pick_metric(metrics: dict[str, Any], wanted: str | None) -> str | None:
    """The ``name,filter`` key of ``wanted`` (a name, or name,filter) in lm-eval's task metrics,
    else of the first numeric metric; a ``wanted`` the task lacks is one clear error."""
    keys = [
        k
        for k, v in metrics.items()
        if "," in k and not k.partition(",")[0].endswith("_stderr") and isinstance(v, int | float)
    ]
    if wanted is None:
        return keys[0] if keys else None
    for key in keys:
        if wanted in (key, key.partition(",")[0]):
            return key
    names = ", ".join(keys) or "none"
    raise ConfigError(f"metric {wanted!r} is not one of this run's: {names}")


def generations(texts: list[Any], records: list[dict[str, Any]] | None) -> list[Generation]:
    """Each repeat's text beside its generation record (log-likelihood records left out)."""
    records = [r for r in records or [] if r.get("scored_by", "generate") == "generate"]
    n = max(len(texts), len(records))
    return [
        Generation(
            i,
            texts[i] if i < len(texts) and isinstance(texts[i], str) else None,
            records[i] if i < len(records) else None,
        )
        for i in range(n)
    ]


def answers(filtered: Any) -> list[str]:
    """Extracted answers as text: one per repeat for generation, the chosen option for choices."""
    if not isinstance(filtered, list):
        return [] if filtered is None else [str(filtered)]
    if filtered and all(_is_loglikelihood(x) for x in filtered):
        best = max(range(len(filtered)), key=lambda i: float(filtered[i][0]))
        return [f"choice {best}"]
    out: list[str] = []
    for item in filtered:
        out += [str(x) for x in item] if isinstance(item, list) else [str(item)]
    return out


def _is_loglikelihood(item: Any) -> bool:
    if not isinstance(item, list | tuple) or len(item) != 2:
        return False
    try:
        float(item[0])
    except (TypeError, ValueError):
        return False
    return True


def number(value: Any) -> float | None:
    """A metric value as a float, None when it is not a number."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def text(value: Any) -> str | None:
    """A target as text (JSON for lists and numbers)."""
    return None if value is None else value if isinstance(value, str) else json.dumps(value)
