"""The readers behind ``read_run``: lm-eval output, sweep cells and EvalPlus files, each streamed line
by line into the shapes of ``runs.py``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lm_eval_routed.config_args import load_config, parse_arg_string
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.runs import (
    Doc,
    DocId,
    Generation,
    Run,
    Source,
    TaskRun,
    answers,
    doc_order,
    generations,
    jsonl,
    number,
    pick_metric,
    read_json,
    text,
)


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


# -- lm-eval ------------------------------------------------------------------------------------


def _read_lm_eval(path: Path, metric: str | None) -> Run | None:
    results = _lm_eval_results(path)
    if results is None:
        return None
    date = results.name.removeprefix("results_").removesuffix(".json")
    folder = results.parent
    summary = read_json(results)
    samples = _dated(folder, "samples_", date)
    if path.name.startswith("samples_") and path.suffix == ".jsonl":
        samples = {t: p for t, p in samples.items() if p == path}
    if not samples:
        raise ConfigError(
            f"{results} has no samples_*_{date}.jsonl beside it; rerun lm_eval with --log_samples"
        )
    routed = _dated(folder, "routed_", date)
    run = Run(lm_eval_label(summary, folder), results, Source.LM_EVAL)
    run.info = summary.get("config", {}).get("routed") or {}
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


def lm_eval_label(summary: dict[str, Any], folder: Path) -> str:
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
            number(line.get(name)) if key else None,
            line.get("prompt_hash"),
            text(line.get("target")),
            answers(line.get("filtered_resps")),
            generations(texts, records),
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
        doc.generations = generations(texts, [rows[r] for r in sorted(rows)])


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
        summary = read_json(summary_path) if summary_path.is_file() else {}
        run.label = str(summary.get("label", run.label))
        run.info = summary.get("run_info") or run.info
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
        response, texts = line.get("response"), line.get("responses")
        if texts is None and isinstance(response, str) and len(line.get("routed") or []) == 1:
            texts = [response]  # a cell written before lines kept every text: its only answer
        out.docs[doc_id] = Doc(
            doc_id,
            number(metrics.get(name)) if key else None,
            line.get("prompt_hash"),
            text(line.get("target")),
            answers([] if response is None else [response]),
            generations(texts or [], line.get("routed")),
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
    results = read_json(graded) if graded.is_file() else None
    key = (EVALPLUS_METRICS[0] if plus else EVALPLUS_METRICS[1]) if results else None
    run = Run(samples.stem, samples, Source.EVALPLUS)
    info = Path(f"{base}.routed_info.json")
    run.info = (read_json(info).get("routed") or {}) if info.is_file() else {}
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
    gens = []
    for i in range(n):
        record = records.get(i)
        response = texts[i] if i < len(texts) else None
        offsets = (record or {}).get("token_offsets")
        if response is not None and offsets and len(response) > offsets[-1]:
            response = response[len(response) - offsets[-1] :]  # direct completion: prompt + ours
        gens.append(Generation(i, response, record))
    return Doc(
        task_id,
        sum(passed) / len(passed) if passed else None,
        answers=["pass" if p else "fail" for p in passed],
        generations=gens,
    )
