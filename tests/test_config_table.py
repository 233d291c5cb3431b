"""Each setting describes itself once (what it affects, its doc), and every place that needs those
facts reads them from there: the docs table, the keys that name a run, the sweep's load and cell keys."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from lm_eval_routed import config_table
from lm_eval_routed.adapters.lm_eval_model import RoutedLM
from lm_eval_routed.config import RUN_ONLY_KEYS, Affects, RoutedConfig, effects
from lm_eval_routed.config_args import load_config
from lm_eval_routed.jobs import cell, summaries

# A value away from each field's default, to see what changing the key changes.
OTHER = {
    "slm": "other:slm", "llm": "other:llm", "router": "random", "threshold": 0.5, "p": 0.3,
    "router_ckpt": "ckpt", "gamma": 2, "dtype": "bfloat16", "slm_dtype": "bfloat16",
    "device": "cpu", "batch_size": 8, "max_length": 64, "max_gen_toks": 32, "llm_min_batch": 2,
    "guess_ahead": 3, "llm_lookahead": False, "prepack": False, "engine": "hf", "compile": True,
    "llm_device_map": "cpu", "max_memory": "cpu:1GiB", "offload_folder": "off", "schedule": "lockstep",
    "seed": 7, "cost_slm": (0.1, 0.01), "cost_llm": (0.2, 0.02), "cost_router": 0.001,
    "latency_model": "latency.json",
    "params_slm_nominal": 1.5e9, "params_llm_nominal": 32e9, "accounting_path": "a.jsonl",
    "record_tokens": False, "trust_remote_code": True, "name": "mine",
}  # fmt: skip


def _changed(key: str) -> RoutedConfig:
    base = RoutedConfig()
    if key in ("params_slm_nominal", "params_llm_nominal"):  # they go together
        return base.replace(params_slm_nominal=1.5e9, params_llm_nominal=32e9)
    if key in ("max_memory", "offload_folder"):  # they need a device map beside them
        base = base.replace(llm_device_map="cpu")
    return base.replace(**{key: OTHER[key]})


def test_the_docs_table_is_generated_from_the_declarations():
    on_disk = config_table.DOC_PATH.read_text()
    assert on_disk == config_table.render(), (
        "docs/configuration.md is stale; run python -m lm_eval_routed.config_table"
    )


def test_every_setting_declares_what_it_affects_and_a_one_line_doc():
    declared = [f for f in fields(RoutedConfig) if f.name != "extra"]
    assert {f.name for f in declared} == set(OTHER)  # a new field needs its row in OTHER too
    for f in declared:
        assert isinstance(f.metadata.get("affects"), Affects), f.name
        doc = f.metadata.get("doc", "")
        assert doc.strip() and "\n" not in doc and "|" not in doc, f.name
        assert f"| `{f.name}` |" in config_table.render()


@pytest.mark.parametrize("key", sorted(OTHER))
def test_a_key_names_a_run_exactly_when_it_affects_the_output(key):
    lm = object.__new__(RoutedLM)  # run_name reads the config alone
    lm.cfg = RoutedConfig()
    before = lm.run_name
    lm.cfg = _changed(key)
    renamed = lm.run_name.split("__")[-1] != before.split("__")[-1]
    assert renamed == (Affects.OUTPUT in effects()[key])
    assert (key in RUN_ONLY_KEYS) == (Affects.OUTPUT not in effects()[key])


def test_the_sweep_shares_a_load_across_exactly_the_loading_keys(monkeypatch):
    built = []
    monkeypatch.setattr(cell, "build_runtime", lambda cfg, **kw: built.append(kw) or _Runtime(cfg))
    monkeypatch.setattr(cell, "with_costs", lambda cfg, costs: cfg)
    shared = _Runtime(RoutedConfig())
    for key in OTHER:
        built.clear()
        cell.runtime_for(_changed(key), shared)
        reloaded = built == [{}]
        assert reloaded == (Affects.LOADING in effects()[key]), key


class _Runtime:
    def __init__(self, cfg):
        self.cfg, self.slm, self.llm, self.tokenizer = cfg, "slm", "llm", "tok"
        self.decoder = type("D", (), {"costs": None})()


def test_a_cell_records_its_settings_as_json_reads_them_back():
    cfg = load_config({"router": "random", "p": "0.2", "cost_slm": "0.1:0.01", "cost_llm": "0:0"})
    stored = summaries.config_dict(cfg)
    assert json.loads(json.dumps(stored)) == stored  # a resumed cell compares equal to itself
    assert stored["cost_slm"] == [0.1, 0.01] and stored["p"] == 0.2
    # speed keys travel with the cell's latency, placement keys do not
    assert "batch_size" in stored and "device" not in stored and "accounting_path" not in stored
