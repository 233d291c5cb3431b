"""One sweep cell: one configuration scored on one task, where its files live and how it writes them.

A cell is the unit every launcher dispatches (``sweep.py`` in this process, ``sweep_ray.py`` as a Ray
task). It writes ``OUT/runs/<config-slug>/<task>.samples.jsonl`` (one line per sample: doc id, prompt
hash, metrics, and the accounting of each of its generations, one per repeat) and then
``<task>.json`` (lm-eval's metrics plus an accounting summary), each to a temporary name renamed into
place: a cell is either done or absent, whatever kills it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_routed.adapters.joins import bare, records_by_sample
from lm_eval_routed.config import Affects, RoutedConfig, keys_affecting
from lm_eval_routed.files import write_atomic
from lm_eval_routed.jobs.matrix import path_safe, slug
from lm_eval_routed.jobs.summaries import config_dict, summarize
from lm_eval_routed.loading.runtime import RoutedRuntime, build_runtime, with_costs

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One (configuration, task) cell of a sweep."""

    cfg: RoutedConfig
    task: str

    @property
    def slug(self) -> str:
        return slug(self.cfg)

    @property
    def tag(self) -> str:
        """``<config-slug>/<task>``: the cell's name in progress lines and accounting records."""
        return f"{self.slug}/{self.task}"


def cell_path(out: Path, cell: Cell) -> Path:
    """Where a finished cell's summary JSON lives."""
    return out / "runs" / cell.slug / f"{cell.task}.json"


def own_accounting(cell: Cell) -> Cell:
    """``cell`` appending its records to a file of its own beside the configured ``accounting_path``
    (``acc.jsonl`` -> ``acc.<config-slug>.<task>.jsonl``): cells running at once never share one."""
    path = cell.cfg.accounting_path
    if not path:
        return cell
    task = path_safe(cell.task)
    own = Path(path).with_name(f"{Path(path).stem}.{cell.slug}.{task}{Path(path).suffix}")
    return Cell(cell.cfg.replace(accounting_path=str(own)), cell.task)


# what loading a pair depends on: configurations that agree on these share the loaded weights
_LOAD_KEYS = keys_affecting(Affects.LOADING)


def runtime_for(cfg: RoutedConfig, shared: RoutedRuntime | None = None) -> RoutedRuntime:
    """The runtime of ``cfg``: ``shared``'s weights where it holds the same pair, else a fresh load."""
    same = shared is not None and all(getattr(shared.cfg, k) == getattr(cfg, k) for k in _LOAD_KEYS)
    if not same:
        return build_runtime(cfg)
    # same pair: reuse the loaded weights and the first cell's measured costs (stable modeled latency)
    cfg = with_costs(cfg, shared.decoder.costs)
    return build_runtime(cfg, slm=shared.slm, llm=shared.llm, tokenizer=shared.tokenizer)


def run_cell(
    cell: Cell, runtime: RoutedRuntime, out: Path, limit: int | None, task_manager: TaskManager
) -> None:
    """Score one cell with ``runtime`` and write its files, atomically, the summary last."""
    import lm_eval

    from lm_eval_routed.adapters.lm_eval_model import RoutedLM

    lm = RoutedLM.from_runtime(runtime)
    tag = cell.tag
    lm.tags = {**lm.tags, "cell": tag}
    if runtime.cfg.accounting_path:  # what an earlier, killed run of this cell left there
        drop_records(Path(runtime.cfg.accounting_path), tag)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[cell.task],
        limit=limit,
        log_samples=True,
        task_manager=task_manager,
        random_seed=runtime.cfg.seed,
    )
    samples = join_samples(results["samples"][cell.task], lm.records)
    folder = cell_path(out, cell).parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(s, default=str) + "\n" for s in samples)
    write_atomic(folder / f"{cell.task}.samples.jsonl", lines)
    summary = {
        "label": cell.cfg.label,
        "task": cell.task,
        "config": config_dict(cell.cfg),
        "metrics": results["results"][cell.task],
        "n_samples": len(samples),
        "limit": limit,
        "accounting": summarize([rec for s in samples for rec in s["routed"]]),
        "run_info": runtime.info()["routed"],
    }
    # the summary is written last: its presence marks the cell as done
    write_atomic(cell_path(out, cell), json.dumps(summary, indent=2, default=str))


def drop_records(path: Path, cell: str) -> None:
    """Remove from an accounting JSONL the records tagged with ``cell`` and a torn last line (a
    kill mid-write), rewriting it atomically; other lines stay as they are."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # what follows the last newline is a torn line
    lines = data[:end].splitlines()
    kept = [line for line in lines if not _tagged(line, cell)]
    if end < len(data) or len(kept) < len(lines):
        log.info("%s: dropping the records an interrupted run of %s left", path, cell)
        write_atomic(path, b"".join(line + b"\n" for line in kept))


def _tagged(line: bytes, cell: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("cell") == cell


def join_samples(samples: list[dict], records: list[dict]) -> list[dict]:
    """One line per sample: lm-eval's metrics, target and extracted answer beside the text and the
    accounting of every generation it made (a task with ``repeats: n`` samples n answers per doc),
    in repeat order; a task with several filters has a line per filter."""
    by_doc: dict[Any, list[dict]] = {}
    for rec in sorted(records, key=lambda r: r["key"].get("repeat", 0)):
        if rec.get("scored_by") == "generate":
            by_doc.setdefault(rec["key"].get("doc_id"), []).append(rec)
    rows = []
    for sample, recs in zip(samples, records_by_sample(samples, by_doc)):
        metrics = {k: v for k, v in sample.items() if isinstance(v, int | float) and k != "doc_id"}
        rows.append(
            {
                "doc_id": sample["doc_id"],
                "prompt_hash": sample.get("prompt_hash"),
                "filter": sample.get("filter"),
                "metrics": metrics,
                "target": sample.get("target"),
                "response": (sample.get("filtered_resps") or [None])[0],
                # every repeat's text beside its record: routed[i] wrote responses[i]
                "responses": [
                    r for req in sample.get("resps") or [] for r in req if isinstance(r, str)
                ],
                "routed": [bare(r) for r in recs],
            }
        )
    return rows
