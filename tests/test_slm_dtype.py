"""``slm_dtype``: the SLM in its own dtype beside an LLM in another, loaded and decoded together."""

from __future__ import annotations

import pytest
import torch
from helpers import write_workspace

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.loading.runtime import build_runtime


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("dtypes"))


def runtime(ws, **args):
    base = {"slm": str(ws / "slm"), "llm": str(ws / "llm"), "cost_slm": "0:0", "cost_llm": "0:0"}
    return build_runtime(load_config({**base, "device": "cpu", **args}))


def test_slm_loads_in_its_own_dtype_and_the_llm_is_untouched(workspace):
    mixed = runtime(workspace, router="llm-only", slm_dtype="bfloat16")
    assert (mixed.slm.dtype, mixed.llm.dtype) == (torch.bfloat16, torch.float32)
    info = mixed.info()["routed"]
    assert (info["dtype"], info["slm_dtype"]) == ("float32", "bfloat16")
    plain = runtime(workspace, router="llm-only")
    assert plain.slm.dtype == torch.float32 and plain.info()["routed"]["slm_dtype"] == "float32"
    prompts = [mixed.encode(p, 12) for p in ("1+1=", "22+22=", "7+7=")]
    # the LLM writes every token here, so the SLM's dtype must not change a single one
    same = [r.token_ids for r in mixed.generate([GenRequest(p, 12) for p in prompts])]
    assert same == [r.token_ids for r in plain.generate([GenRequest(p, 12) for p in prompts])]


@pytest.mark.parametrize(
    "router", [{"router": "entropy-token", "threshold": 0.5}, {"router": "speculative"}]
)
def test_mixed_dtypes_decode_through_routers(workspace, router):
    rt = runtime(workspace, slm_dtype="bfloat16", batch_size=2, **router)
    reqs = [GenRequest(rt.encode(p, 10), 10) for p in ("3+3=", "45+45=", "6+6=")]
    results = rt.generate(reqs)
    assert [len(r.token_ids) for r in results] == [10, 10, 10]
    assert sum(r.record.tokens_llm for r in results) > 0  # both models wrote


def test_bad_slm_dtype_is_one_line():
    with pytest.raises(ConfigError, match="slm_dtype='fp8' is not allowed; choose one of"):
        load_config({"slm_dtype": "fp8"})
