"""Dataset loading for the shipped tasks: hub datasets by default, local JSONL under ROUTED_TASKS_DATA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from lm_eval_routed.config import ConfigError

ENV = "ROUTED_TASKS_DATA"


def load_rows(
    local_name: str, hub_id: str, split: str, config: str | None = None, gated: bool = False
) -> dict[str, datasets.Dataset]:
    """``{"test": Dataset}`` from ``$ROUTED_TASKS_DATA/<local_name>.jsonl`` if set, else from the hub."""
    folder = os.environ.get(ENV)
    if folder:
        path = Path(folder) / f"{local_name}.jsonl"
        if not path.is_file():
            raise ConfigError(f"{ENV}={folder} but {path.name} is not there; add it or unset {ENV}")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {"test": datasets.Dataset.from_list(rows)}
    try:
        return {"test": datasets.load_dataset(hub_id, config, split=split)}
    except Exception as err:  # noqa: BLE001  (hub errors come in many types; each becomes one line)
        hint = " (gated: accept its terms on the hub and set HF_TOKEN)" if gated else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot load {hub_id}{hint}: {first}; or set {ENV} to a folder holding "
            f"{local_name}.jsonl"
        ) from None
