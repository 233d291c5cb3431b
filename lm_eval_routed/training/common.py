"""Shared pieces of the training pipelines: queries, resumable JSONL logs, shards, greedy generation.

Every step of a pipeline writes its output into one work folder and skips work already on disk, so a
killed run picks up where it stopped. Tensors are stored as safetensors shards (written to a temporary
name, then renamed, so a half-written shard never counts as done); per-item records are JSONL lines
appended and flushed one batch at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.files import append_jsonl, save_atomic, write_atomic
from lm_eval_routed.loading.models import eos_ids

log = logging.getLogger(__name__)


# -- queries -------------------------------------------------------------------------------------


def load_rows(source: str, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file, or of a ``datasets`` id (``name`` or ``name:config``) split."""
    path = Path(source)
    if path.is_file():
        from lm_eval_routed.evals.task_data import read_jsonl  # the one JSONL reader

        rows = [row for _, row in read_jsonl(path)]
    elif path.suffix in (".jsonl", ".json") or path.exists():
        raise ConfigError(
            f"query file {source!r} does not exist; give a JSONL file or a dataset id"
        )
    else:
        import datasets

        name, _, config = source.partition(":")
        rows = list(datasets.load_dataset(name, config or None, split=split))
    return rows[:limit] if limit else rows


def pick_field(rows: list[dict[str, Any]], field: str, source: str) -> list[str]:
    """The ``field`` of every row as text; a missing field names the fields that exist."""
    if rows and field not in rows[0]:
        raise ConfigError(
            f"{source} has no field {field!r}; its fields are: {', '.join(rows[0])} "
            "(choose one with --prompt-field)"
        )
    lacking = next((i for i, r in enumerate(rows) if field not in r), None)
    if lacking is not None:
        raise ConfigError(
            f"{source}: row {lacking + 1} has no field {field!r} (the first row has it); "
            "fix that row or leave it out"
        )
    return [str(r[field]) for r in rows]


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of a prompt: through the chat template when asked and present, else as raw text."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- files ---------------------------------------------------------------------------------------


def claim_workdir(workdir: Path, command: str, settings: dict[str, Any]) -> None:
    """Refuse to resume ``workdir`` under settings that would change what is already in it.

    A label pipeline resumes from the records its work folder holds, keyed by item; records made
    under another checker, verifier or model would be kept as if made under these. The first run
    writes ``settings.json``; a later one must agree with it on every key, or stops in one line
    before any model loads (a key an older folder lacks is not compared)."""
    path = workdir / "settings.json"
    settings = json.loads(json.dumps({"command": command, **settings}, default=str))
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise ConfigError(
                f"{path} is not readable JSON ({err}); delete it to start over"
            ) from None
        changed = [k for k in settings if k in before and before[k] != settings[k]]
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{workdir} holds work made with {key}={before[key]!r}, not {settings[key]!r}; "
                "give another --workdir, or delete that one to start over"
            )
    write_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


class JsonlLog:
    """An append-only JSONL file of records keyed by ``key(record)``; resumes from what is there."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]) -> None:
        self.path = path
        self.key_fields = key_fields
        self.records: dict[tuple, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash: its item is simply redone
                    self.records[self.key(rec)] = rec

    def key(self, rec: dict[str, Any]) -> tuple:
        """The identity of a record."""
        return tuple(rec[f] for f in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def extend(self, recs: Iterable[dict[str, Any]]) -> None:
        """Append records and flush them to disk."""
        recs = list(recs)
        append_jsonl(self.path, recs)
        for r in recs:
            self.records[self.key(r)] = r


def save_shard(path: Path, tensors: dict[str, Tensor], meta: dict[str, str] | None = None) -> None:
    """Write a safetensors shard atomically (temporary name, then rename)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def shard_paths(folder: Path) -> list[Path]:
    """The finished shards of a folder, in order."""
    return sorted(folder.glob("shard-*.safetensors"))


def load_shards(folder: Path) -> dict[str, Tensor]:
    """Every shard of a folder concatenated column by column."""
    paths = shard_paths(folder)
    if not paths:
        raise ConfigError(f"{folder} holds no shard-*.safetensors; run the step that writes them")
    parts = [load_file(p) for p in paths]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order (what a router was trained on)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


# -- generation ----------------------------------------------------------------------------------


def cut_at_stop(
    tokenizer, ids: list[int], stops: tuple[str, ...], eos: set[int]
) -> tuple[list[int], bool]:
    """``ids`` up to and including the first EOS or stop string; whether one was found."""
    span = max((len(s) for s in stops), default=0) + 2
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1], True
        if stops:
            tail = tokenizer.decode(ids[max(0, i + 1 - span) : i + 1])
            if any(s in tail for s in stops):
                return ids[: i + 1], True
    return ids, False


class _StopAfter(StoppingCriteria):
    """Per row: done once the generated part holds a stop string (EOS is handled by generate)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], start: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, start
        self.span = max(len(s) for s in stops) + 2

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        tails = input_ids[:, max(self.start, input_ids.shape[1] - self.span) :].tolist()
        done = [any(s in self.tokenizer.decode(t) for s in self.stops) for t in tails]
        return torch.tensor(done, device=input_ids.device)


@torch.inference_mode()
def greedy(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stops: tuple[str, ...] = ()
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of a batch of prompts (left-padded), cut at EOS or a stop string.

    Returns per prompt (new token ids, finished): finished means an EOS or a stop string was reached
    within ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    eos = eos_ids(tokenizer, model)
    criteria = StoppingCriteriaList([_StopAfter(tokenizer, stops, width)]) if stops else None
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos) or None,
        pad_token_id=pad,
        stopping_criteria=criteria,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return [cut_at_stop(tokenizer, row[width:].tolist(), stops, eos) for row in out]


def batched(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.inference_mode()
def forward_features(model, sequences: list[list[int]]) -> tuple[Tensor, Tensor]:
    """(last hidden after the final norm, logits), each (b, T, .), for right-padded sequences."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden, model.get_output_embeddings()(hidden)
