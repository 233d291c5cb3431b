"""Read a finished run into one shape, whatever wrote it: lm-eval, a sweep cell, or EvalPlus.

``read_run(path)`` recognises what ``path`` is (an lm-eval output folder or its ``results_*.json`` /
``samples_*.jsonl``, a sweep cell folder or its files, an EvalPlus samples file or its
``*_eval_results.json``) and streams its per-sample files line by line, keeping per document only
what the diff and the routing view use: the score, the prompt hash, the target, the extracted answers,
and each repeat's response text with its accounting record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lm_eval_routed.config import ConfigError, load_config, parse_arg_string

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


def doc_order(doc_id: DocId) -> tuple:
    """Sort key: numeric ids in order, string ids by their text with numbers compared as numbers."""
    if isinstance(doc_id, int):
        return (0, doc_id)
    return (1, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(doc_id))))


def read_run(path: Path | str, metric: str | None = None, label: str | None = None) -> Run:
    """The run at ``path``, its per-doc score being ``metric`` (default: each task's first)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a run's output folder or results file")
    for reader in (_read_evalplus, _read_sweep, _read_lm_eval):
        run = reader(path, metric)
        if run is not None:
            if label:
                run.label = label
            if not run.tasks:
                raise ConfigError(f"{path} holds no per-sample results to compare")
            return run
    raise ConfigError(
        f"{path} is not a run this tool reads: give an lm-eval output folder (run with "
        "--log_samples) or its results_*.json, a sweep cell folder (OUT/runs/<label>), or an "
        "EvalPlus samples .jsonl with its _eval_results.json"
    )


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


def _json(path: Path) -> dict[str, Any]:
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


# -- lm-eval ------------------------------------------------------------------------------------


def _read_lm_eval(path: Path, metric: str | None) -> Run | None:
    results = _lm_eval_results(path)
    if results is None:
        return None
    date = results.name.removeprefix("results_").removesuffix(".json")
    folder = results.parent
    summary = _json(results)
    samples = _dated(folder, "samples_", date)
    if path.name.startswith("samples_") and path.suffix == ".jsonl":
        samples = {t: p for t, p in samples.items() if p == path}
    if not samples:
        raise ConfigError(
            f"{results} has no samples_*_{date}.jsonl beside it; rerun lm_eval with --log_samples"
        )
    routed = _dated(folder, "routed_", date)
    run = Run(_lm_eval_label(summary, folder), results, Source.LM_EVAL)
    for task, file in sorted(samples.items()):
        key = pick_metric(summary.get("results", {}).get(task, {}), metric)
        run.tasks[task] = _lm_eval_task(task, key, file, routed.get(task))
    return run


def _lm_eval_results(path: Path) -> Path | None:
    """The results JSON a path names: itself, the one beside a samples file, or the one in a folder."""
    if path.is_file():
        if path.name.startswith("results_") and path.suffix == ".json":
            return path
        match = re.fullmatch(r"samples_.+_(\d{4}-.+)\.jsonl", path.name)
        if match:
            beside = path.parent / f"results_{match.group(1)}.json"
            if not beside.is_file():
                raise ConfigError(f"{path} has no {beside.name} beside it; give its results file")
            return beside
        return None
    found = sorted(path.rglob("results_*.json"))
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(path)) for p in found[:4])
        raise ConfigError(
            f"{path} holds {len(found)} lm-eval runs ({names}{', ...' if len(found) > 4 else ''}); "
            "give the results_*.json of the one to compare"
        )
    return found[0] if found else None


def _dated(folder: Path, prefix: str, date: str) -> dict[str, Path]:
    """task -> ``<prefix><task>_<date>.jsonl`` in ``folder``."""
    suffix = f"_{date}.jsonl"
    return {
        p.name[len(prefix) : -len(suffix)]: p
        for p in folder.glob(f"{prefix}*{suffix}")
        if len(p.name) > len(prefix) + len(suffix)
    }


def _lm_eval_label(summary: dict[str, Any], folder: Path) -> str:
    """A routed run's configuration label (as in leaderboards), else its model_args, else the folder."""
    args = summary.get("config", {}).get("model_args")
    if isinstance(args, str):
        try:
            args = parse_arg_string(args)
        except ConfigError:
            return args
    if not isinstance(args, dict) or not args:
        return folder.name
    if summary.get("config", {}).get("model") == "routed":
        try:
            return load_config({k: v for k, v in args.items() if k != "runtime"}).label
        except ConfigError:
            pass
    return ",".join(f"{k}={v}" for k, v in args.items())


def _lm_eval_task(task: str, key: str | None, samples: Path, routed: Path | None) -> TaskRun:
    name, _, filter_ = (key or "").partition(",")
    out = TaskRun(task, key)
    for line in jsonl(samples):
        if key is not None and line.get("filter", filter_) != filter_:
            continue  # the same doc under another filter
        doc_id = line.get("doc_id")
        if doc_id in out.docs:
            continue
        texts = [r for req in line.get("resps") or [] for r in req if isinstance(r, str)]
        records = line.get("routed")
        out.docs[doc_id] = Doc(
            doc_id,
            _number(line.get(name)) if key else None,
            line.get("prompt_hash"),
            _text(line.get("target")),
            _answers(line.get("filtered_resps")),
            _generations(texts, records),
        )
    if routed is not None and all(
        g.record is None for d in out.docs.values() for g in d.generations
    ):
        _attach_routed(out, routed)  # a sample log without "routed": our JSONL beside it
    return out


def _attach_routed(task: TaskRun, routed: Path) -> None:
    by_doc: dict[DocId, dict[int, dict[str, Any]]] = {}
    for row in jsonl(routed):
        doc = task.docs.get(row.get("doc_id"))
        if doc is None or row.get("scored_by", "generate") != "generate":
            continue
        if doc.prompt_hash and row.get("prompt_hash") not in (None, doc.prompt_hash):
            continue
        # keyed by repeat: a file that holds a doc's rows once per filter still gives one each
        by_doc.setdefault(doc.doc_id, {})[int(row.get("repeat", 0))] = row
    for doc_id, rows in by_doc.items():
        doc = task.docs[doc_id]
        texts = [g.text for g in doc.generations]
        doc.generations = _generations(texts, [rows[r] for r in sorted(rows)])


# -- sweep cells ----------------------------------------------------------------------------------


def _read_sweep(path: Path, metric: str | None) -> Run | None:
    """A sweep cell folder (``OUT/runs/<label>``) or one of its ``<task>.json`` / ``.samples.jsonl``."""
    if path.is_file():
        task = path.name.removesuffix(".samples.jsonl").removesuffix(".json")
        if not (path.parent / f"{task}.samples.jsonl").is_file():
            return None
        folder, tasks = path.parent, [task]
    else:
        folder = path
        tasks = sorted(p.name.removesuffix(".samples.jsonl") for p in path.glob("*.samples.jsonl"))
        if not tasks:
            if (path / "runs").is_dir():
                labels = ", ".join(sorted(p.name for p in (path / "runs").iterdir())[:6])
                raise ConfigError(
                    f"{path} is a sweep with several configurations; give one cell folder, "
                    f"e.g. {path / 'runs' / labels.split(', ')[0]} (cells: {labels})"
                )
            return None
    run = Run(folder.name, folder, Source.SWEEP)
    for task in tasks:
        summary_path = folder / f"{task}.json"
        summary = _json(summary_path) if summary_path.is_file() else {}
        run.label = str(summary.get("label", run.label))
        key = pick_metric(summary.get("metrics", {}), metric)
        run.tasks[task] = _sweep_task(task, key, folder / f"{task}.samples.jsonl")
    return run


def _sweep_task(task: str, key: str | None, samples: Path) -> TaskRun:
    name, _, filter_ = (key or "").partition(",")
    out = TaskRun(task, key)
    for line in jsonl(samples):
        doc_id = line.get("doc_id")
        if doc_id in out.docs or line.get("filter", filter_) != filter_:
            continue  # a line per filter; without "filter", the first line of a doc is the first
        metrics = line.get("metrics") or {}
        out.docs[doc_id] = Doc(
            doc_id,
            _number(metrics.get(name)) if key else None,
            line.get("prompt_hash"),
            _text(line.get("target")),
            _answers([line.get("response")]),
            _generations(line.get("responses") or [], line.get("routed")),
        )
    return out


# -- EvalPlus ---------------------------------------------------------------------------------------

EVALPLUS_METRICS = ("pass@1,plus", "pass@1,base")


def _read_evalplus(path: Path, metric: str | None) -> Run | None:
    """An EvalPlus samples file, its ``_eval_results.json`` or ``.routed.jsonl``, or their folder."""
    base = _evalplus_base(path)
    if base is None:
        return None
    samples = Path(f"{base}.jsonl")
    graded = Path(f"{base}_eval_results.json")
    routed = Path(f"{base}.routed.jsonl")
    raw = Path(f"{base}.raw.jsonl")
    if metric is not None and metric not in (*EVALPLUS_METRICS, "pass@1", "plus", "base"):
        raise ConfigError(f"metric {metric!r}: EvalPlus runs have {', '.join(EVALPLUS_METRICS)}")
    plus = metric not in ("pass@1,base", "base")
    results = _json(graded) if graded.is_file() else None
    key = (EVALPLUS_METRICS[0] if plus else EVALPLUS_METRICS[1]) if results else None
    run = Run(samples.stem, samples, Source.EVALPLUS)
    texts: dict[str, list[str]] = {}
    source = raw if raw.is_file() else samples
    for row in jsonl(source) if source.is_file() else ():
        texts.setdefault(row["task_id"], []).append(row.get("solution") or "")
    verdicts = (results or {}).get("eval", {})
    records: dict[str, dict[int, dict[str, Any]]] = {}
    for row in jsonl(routed) if routed.is_file() else ():
        records.setdefault(row["task_id"], {})[int(row.get("sample", 0))] = row
    for task_id in sorted(set(texts) | set(verdicts) | set(records), key=doc_order):
        task = run.tasks.setdefault(
            _evalplus_task(task_id),
            TaskRun(_evalplus_task(task_id), key, dataset_hash=(results or {}).get("hash")),
        )
        task.docs[task_id] = _evalplus_doc(
            task_id, texts.get(task_id, []), verdicts.get(task_id), records.get(task_id, {}), plus
        )
    return run


def _evalplus_base(path: Path) -> str | None:
    if path.is_dir():
        found = [p for p in path.glob("*_eval_results.json")] or [
            p for p in path.glob("*.routed.jsonl")
        ]
        if len(found) > 1:
            raise ConfigError(
                f"{path} holds {len(found)} EvalPlus runs; give the samples .jsonl of one"
            )
        return _evalplus_base(found[0]) if found else None
    name = str(path)
    for suffix in ("_eval_results.json", ".routed.jsonl", ".raw.jsonl"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    if name.endswith(".jsonl") and (
        Path(name.replace(".jsonl", "_eval_results.json")).is_file()
        or Path(name.replace(".jsonl", ".routed.jsonl")).is_file()
    ):
        return name.removesuffix(".jsonl")
    return None


def _evalplus_task(task_id: str) -> str:
    return task_id.partition("/")[0].lower() if "/" in task_id else "evalplus"


def _evalplus_doc(
    task_id: str,
    texts: list[str],
    verdicts: list[dict[str, Any]] | None,
    records: dict[int, dict[str, Any]],
    plus: bool,
) -> Doc:
    passed = [
        v.get("base_status") == "pass" and (not plus or v.get("plus_status") == "pass")
        for v in verdicts or []
    ]
    n = max(len(texts), len(passed), max(records, default=-1) + 1)
    generations = []
    for i in range(n):
        record = records.get(i)
        text = texts[i] if i < len(texts) else None
        offsets = (record or {}).get("token_offsets")
        if text is not None and offsets and len(text) > offsets[-1]:
            text = text[len(text) - offsets[-1] :]  # direct completion: the prompt, then ours
        generations.append(Generation(i, text, record))
    return Doc(
        task_id,
        sum(passed) / len(passed) if passed else None,
        answers=["pass" if p else "fail" for p in passed],
        generations=generations,
    )


# -- shared ---------------------------------------------------------------------------------------


def _generations(texts: list[Any], records: list[dict[str, Any]] | None) -> list[Generation]:
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


def _answers(filtered: Any) -> list[str]:
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value)
