"""The static-shape decode step (core/compiled.py) against the eager engine it stands in for.

Compiled engines are built once per module and shared: each new (batch bucket, cache shape) costs a
compile of several seconds, and the engines' graphs are what the run-level tests reuse.

Tolerance: inductor fuses RMSNorm, rotary positions, SiLU and the residual adds and keeps them in
float32 between ops, reordering their sums; in fp32 that moves logits by a few ulps of their size
(measured: up to 1e-6 of the largest logit over these tests). ``TOL`` allows 100x that; a wrong
position, mask or cache slot moves them by a large share of their size (the bugs injected while
writing these tests gave 0.05 to 1.0 of it).
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama

from lm_eval_routed.core import compiled
from lm_eval_routed.core.compiled import CAPACITY_STEP, bucket, compile_engine
from lm_eval_routed.core.native import NativeEngine
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.loading.runtime import make_engine

TOL = 1e-4  # of the largest logit's magnitude (module docstring)
VOCAB = 300
PROMPTS = ["The cat sat", "2+2=", "Once upon a time", "x", "Hello world\n", "abcabc", "zz", "Ro"]


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference as a share of the largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def engines():
    """(eager, compiled) engines over one 2-layer random Llama, prepacked as runs are."""
    model = tiny_llama(2, seed=3, vocab=VOCAB)
    return NativeEngine(model, VOCAB, prepack=True), compile_engine(
        NativeEngine(model, VOCAB, prepack=True)
    )


@pytest.fixture(scope="module")
def compiled_pair(pair):
    """Compiled engines over the suite's tiny pair (as ``make_engine(..., compile=True)``)."""
    vocab = pair[0].get_output_embeddings().weight.shape[0]
    return tuple(make_engine(m, vocab, "native", True, compile=True) for m in pair)


def test_buckets_and_capacity():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    assert compiled.CompiledStep.room(1) == CAPACITY_STEP
    assert compiled.CompiledStep.room(CAPACITY_STEP + 1) == 2 * CAPACITY_STEP


def test_logits_and_cache_match_the_eager_engine(engines):
    """Prefill on the packed path, decode steps on the compiled one (rows out of slot order, a
    padded bucket), then a packed forward that reads what the compiled steps wrote."""
    eager, comp = engines
    caches = [eager.new_cache(4, 40), comp.new_cache(4, 40)]
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4], [20, 21, 22, 23]]
    lengths = [len(p) for p in prompts]
    for engine, cache in zip(engines, caches):
        engine.forward(cache, [0, 1, 2, 3], [0] * 4, prompts)
    steps_before = comp.compiled.steps
    for step in range(6):
        rows = [3, 0, 2] if step % 2 else [0, 1, 2, 3]  # 3 rows run in the bucket of 4
        tokens = [[(7 * step + r) % VOCAB] for r in rows]
        held = [lengths[r] for r in rows]
        a, b = (e.forward(c, rows, held, tokens) for e, c in zip(engines, caches))
        assert close(b.logits, a.logits) < TOL and close(b.hidden, a.hidden) < TOL
        assert a.logits.shape == b.logits.shape and b.logits.dtype == torch.float32
        for r in rows:
            lengths[r] += 1
    assert comp.compiled.steps == steps_before + 6
    for layer in range(2):  # the same keys at every written slot of every row
        for r in range(4):
            k_eager = caches[0].keys[layer][r, :, : lengths[r]]
            k_comp = caches[1].keys[layer][r, :, : lengths[r]]
            assert close(k_comp, k_eager) < TOL
    rows, held, tokens = [1, 2], [lengths[1], lengths[2]], [[1, 2, 3], [4, 5]]
    a, b = (e.forward(c, rows, held, tokens) for e, c in zip(engines, caches))
    assert close(b.logits, a.logits) < TOL


def test_compiled_steps_give_hugging_faces_own_logits():
    """Against the reference the engines stand in for: each compiled decode step's logits equal
    those of transformers' own forward over the whole sequence so far, with no cache (unpacked
    weights: torch's default products, as the model computes alone)."""
    model = tiny_llama(2, seed=4, vocab=VOCAB)
    comp = compile_engine(NativeEngine(model, VOCAB, prepack=False))
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4]]
    cache = comp.new_cache(3, 24)
    comp.forward(cache, [0, 1, 2], [0, 0, 0], prompts)
    seqs = [list(p) for p in prompts]
    before = comp.compiled.steps
    for step in range(5):
        tokens = [(11 * step + 3 * r + 1) % VOCAB for r in range(3)]
        out = comp.forward(cache, [0, 1, 2], [len(q) for q in seqs], [[t] for t in tokens])
        for r, t in enumerate(tokens):
            seqs[r].append(t)
            with torch.no_grad():
                ref = model(torch.tensor([seqs[r]])).logits[0, -1, :VOCAB].float()
            assert close(out.logits[r], ref) < TOL, (step, r)
    assert comp.compiled.steps == before + 5


def test_other_calls_stay_on_the_packed_path(engines):
    """Several tokens, logits at every token or over the whole head: never the compiled step."""
    _, comp = engines
    cache = comp.new_cache(2, 16)
    before = comp.compiled.steps
    comp.forward(cache, [0, 1], [0, 0], [[1, 2], [3]])
    comp.forward(cache, [0, 1], [2, 1], [[4], [5]], all_logits=True)
    comp.forward(cache, [0], [3], [[6]], whole_head=True)
    assert comp.compiled.steps == before


def requests(tokenizer, budgets):
    return [
        GenRequest(prompt_ids=tokenizer(p)["input_ids"], max_new_tokens=n, seed=i)
        for i, (p, n) in enumerate(zip(PROMPTS * 2, budgets))
    ]


def traced(result) -> tuple:
    """A result's tokens and which model wrote each: speculative decoding's tokens are the LLM's
    whatever the drafts, its trace of accepted drafts is not."""
    return result.token_ids, result.record.llm_positions


ROUTERS = [
    ("random", {"p": "0.3"}),  # per token, decided before the SLM step
    ("entropy-token", {"threshold": "3.6"}),  # per token, from the SLM's logits
    ("entropy", {"threshold": "0.8"}),  # stitch: the LLM keeps control, one token at a time
    ("speculative", {"gamma": "3"}),  # SLM drafts on the compiled step, the LLM verifies packed
]


@pytest.mark.parametrize("router,extra", ROUTERS, ids=[r for r, _ in ROUTERS])
@pytest.mark.parametrize("batch", [1, 8])
def test_routed_tokens_match_eager(make_runtime, tokenizer, compiled_pair, router, extra, batch):
    """Greedy tokens of a routed run with both engines compiled are the eager run's."""
    budgets = [12, 20, 8, 16, 20, 10, 14, 18][: 4 if batch == 1 else 8]
    rt = make_runtime(router=router, batch_size=batch, engine="native", **extra)
    want = [traced(r) for r in rt.generate(requests(tokenizer, budgets))]
    rt = make_runtime(router=router, batch_size=batch, engine="native", **extra)
    rt.decoder.slm, rt.decoder.llm = compiled_pair
    steps = [e.compiled.steps for e in compiled_pair]
    got = [traced(r) for r in rt.generate(requests(tokenizer, budgets))]
    assert got == want
    assert compiled_pair[0].compiled.steps > steps[0]  # the SLM's steps ran compiled
    if router == "entropy":  # while the LLM holds control it decodes one token per row
        assert compiled_pair[1].compiled.steps > steps[1]
    assert rt.info()["routed"]["compiled_steps"]["slm"] > 0


def test_recompiles_are_bounded_by_buckets(make_runtime, tokenizer, pair):
    """Rows finish at different steps and new requests take their slots: the compiler makes at
    most one graph per bucket and engine, and a second run of other lengths makes none."""
    from torch._dynamo.utils import counters

    rt = make_runtime(router="entropy-token", threshold="3.6", batch_size=3, compile="true")
    engines = [rt.decoder.slm, rt.decoder.llm]
    assert all(e.compiled is not None for e in engines)
    start = counters["stats"]["unique_graphs"]
    rt.generate(requests(tokenizer, [5, 17, 9, 3, 12, 7, 20]))  # 7 requests through 3 slots
    made = counters["stats"]["unique_graphs"] - start
    buckets = {bucket(n) for n in (1, 2, 3)}  # the buckets a 3-slot cache can ask for
    assert all({n for n, _ in e.compiled.graphs} <= buckets for e in engines)
    assert 0 < made <= len(buckets) * len(engines)
    assert made == sum(len(e.compiled.graphs) for e in engines)
    again = counters["stats"]["unique_graphs"]
    rt.generate(requests(tokenizer, [9, 4, 15, 6, 11]))  # other lengths, the same rounded capacity
    used = sum(len(e.compiled.graphs) for e in engines)
    assert counters["stats"]["unique_graphs"] - again == used - made  # only buckets not yet seen
    assert rt.info()["routed"]["compiled_steps"]["slm"] > 0


def test_hf_engine_stays_eager(pair, caplog):
    vocab = pair[0].get_output_embeddings().weight.shape[0]
    with caplog.at_level("WARNING"):
        engine = make_engine(pair[0], vocab, "hf", True, compile=True)
    assert engine.compiled is None
    assert "runs eagerly: the hf engine has no static-shape step" in caplog.text


def test_not_compiled_by_default(make_runtime):
    rt = make_runtime(router="slm-only")
    assert rt.decoder.slm.compiled is None and rt.decoder.llm.compiled is None
    assert rt.info()["routed"]["compiled_steps"] == {"slm": None, "llm": None}


def test_compile_setting_is_a_bool():
    from helpers import one_line

    from lm_eval_routed.config_args import load_config
    from lm_eval_routed.errors import ConfigError

    assert load_config({"compile": "true"}).compile is True
    assert load_config({}).compile is False
    with pytest.raises(ConfigError) as err:
        load_config({"compile": "maybe"})
    one_line(err, "compile='maybe'")
