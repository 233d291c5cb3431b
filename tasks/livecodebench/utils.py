"""routed_livecodebench: data window, prompt, sandboxed execution and scoring (see tasks/README.md)."""

from __future__ import annotations

import json
import os
from datetime import date

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.evals.livecodebench import (
    build_prompt,
    contest_day,
    decode_tests,
    evaluate_many,
    func_name,
    in_window,
)
from lm_eval_routed.evals.sandbox import Limits
from lm_eval_routed.evals.scoring import (  # noqa: F401  (aggregations named in the YAML)
    mean_over_repeats,
    repeat_metrics,
    stderr_over_repeats,
    unwrap,
)
from lm_eval_routed.evals.task_data import ENV, load_rows

HUB_ID = "lighteval/code_generation_lite"  # parquet mirror: loads with datasets >= 4


def load_livecodebench(
    release_version: str = "release_v5",
    start_date: str | None = "2024-08-01",
    end_date: str | None = "2025-01-31",
    **kwargs,
):
    """The release's problems whose contest_date lies in [start_date, end_date] (ISO days).

    Every row's fields are checked before the window selects any (a missing or unparseable
    contest_date is named as such, not reported as an empty window). A local file's problems are
    checked in full, tests decoded; the hub's only within the window, since decoding every private
    test blob of a release takes minutes and one outside the window is never scored.
    """
    start, end = window_day(start_date, "start_date"), window_day(end_date, "end_date")
    if start and end and start > end:
        raise ConfigError(
            f"start_date={start} is after end_date={end}; give the window's first day first"
        )
    local = bool(os.environ.get(ENV))

    def check(row: dict) -> None:
        check_fields(row)
        if local or in_window(row, start, end):
            check_problem(row)

    data = load_rows(
        "livecodebench",
        HUB_ID,
        split="test",
        config=release_version,
        columns=("question_content", "contest_date"),
        check_row=check,
    )["test"]
    kept = data.filter(lambda row: in_window(row, start, end))
    if len(kept) == 0:
        raise ConfigError(
            f"no LiveCodeBench problem of {release_version} has a contest_date in "
            f"[{start_date}, {end_date}]; widen the window with --metadata "
            '\'{"start_date": "2023-05-01", "end_date": "2025-12-31"}\''
        )
    return {"test": kept}


def window_day(value, key: str) -> date | None:
    """A window bound (``--metadata``'s start_date or end_date) as a day; None for no bound."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ConfigError(
            f"{key}={value!r} is not an ISO day (YYYY-MM-DD); fix it in --metadata"
        ) from None


def check_fields(row: dict) -> None:
    """The fields every row must have right, whether or not the window selects it: a contest_date
    that parses, text where text goes, a metadata that is a JSON object. Raises ValueError naming
    the field."""
    contest_day(row)
    if not isinstance(row["question_content"], str) or not row["question_content"].strip():
        raise ValueError(
            f"field 'question_content' must be non-empty text, not {row['question_content']!r}"
        )
    for field in ("starter_code", "question_id"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise ValueError(f"field {field!r} is a {type(row[field]).__name__}, not text")
    for field in ("public_test_cases", "private_test_cases"):
        if row.get(field) is not None and not isinstance(row[field], str | list):
            raise ValueError(
                f"field {field!r} is a {type(row[field]).__name__}; give a JSON list of tests "
                "(or the hub's encoded text)"
            )
    try:
        name = func_name(row)
    except (ValueError, AttributeError) as err:
        raise ValueError(f"field 'metadata' is not a JSON object ({err})") from None
    if name is not None and not isinstance(name, str):
        raise ValueError(f"field 'metadata' has func_name={name!r}; give the function's name")


def check_problem(row: dict) -> None:
    """A problem the sandbox can score: its tests decode, it has at least one, and functional tests
    name the function to call. Raises ValueError naming the field."""
    tests = []
    for field in ("public_test_cases", "private_test_cases"):
        try:
            tests += decode_tests(row.get(field))
        except Exception as err:  # noqa: BLE001  (json, base64, zlib, pickle and key errors alike)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"field {field!r} does not decode to tests ({type(err).__name__}: {first}); "
                "restore it from the dataset"
            ) from None
    if not tests:
        raise ValueError(
            "the problem has no tests (public_test_cases and private_test_cases are empty), so "
            "no answer could pass; drop it"
        )
    try:
        name = func_name(row)
    except (ValueError, AttributeError) as err:
        raise ValueError(f"field 'metadata' is not a JSON object ({err})") from None
    if any(t.testtype == "functional" for t in tests) and not name:
        raise ValueError("field 'metadata' names no func_name, which functional tests call")


def doc_to_text(doc: dict) -> str:
    return build_prompt(doc)


def doc_to_target(doc: dict) -> str:
    return str(doc.get("question_id", ""))  # tests, not a target string, decide correctness


def _env_number(name: str, default: str, kind: type) -> float | int:
    """An environment setting as a number, or one line naming it."""
    raw = os.environ.get(name, default).strip() or default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a {kind.__name__}; unset it or give one"
        ) from None


def _limits() -> Limits:
    try:
        return Limits(wall_s=_env_number("ROUTED_SANDBOX_TIMEOUT", "6", float))
    except ValueError as err:  # Limits' own checks: nan, inf, <= 0, beyond a day
        raise ConfigError(f"ROUTED_SANDBOX_TIMEOUT: {err}") from None


def execute(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter step: run every response of every doc in the sandbox pool; keep the verdicts (JSON)."""
    jobs = [(doc, r) for doc, doc_resps in zip(docs, resps) for r in doc_resps]
    workers = _env_number("ROUTED_SANDBOX_WORKERS", "0", int)
    if workers < 0:
        raise ConfigError(f"ROUTED_SANDBOX_WORKERS={workers} must be 0 (one per core) or more")
    workers = workers or None
    verdicts = iter(evaluate_many(jobs, workers=workers, limits=_limits()))
    return [[json.dumps(next(verdicts).to_dict()) for _ in doc_resps] for doc_resps in resps]


def process_results(doc: dict, results: list[str]) -> dict[str, object]:
    """pass@k over this problem's repeats: a repeat passes when every public and private test does."""
    return repeat_metrics([bool(json.loads(v)["passed"]) for v in unwrap(results)])
