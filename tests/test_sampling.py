"""Sampling against references the decoder did not compute: the filtered distribution against
transformers' logits warpers on the same logits, and speculative sampling's output distribution
against the target's by a chi-square test over many seeded trials."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from lm_eval.api.instance import Instance
from scipy.stats import chisquare
from transformers.generation import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lm_eval_routed.adapters.lm_eval_model import RoutedLM
from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.core.sampling import accept_drafts, filtered_probs
from lm_eval_routed.loading import runtime


def hf_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(b, V) probabilities as transformers' ``generate`` samples them: its warpers, in its order,
    each only when its setting filters (GenerationMixin._get_logits_processor), then softmax."""
    scores = logits.float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k != 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)


def logit_batches(vocab: int) -> dict[str, torch.Tensor]:
    """(8, vocab) logits of every kind the boundaries care about."""
    g = torch.Generator().manual_seed(7)
    few = torch.randint(0, 3, (8, vocab), generator=g).float()  # many exact ties
    peaked = torch.randn(8, vocab, generator=g) * 40
    peaked[:, ::3] = -math.inf  # tokens a model masked out
    return {
        "normal": torch.randn(8, vocab, generator=g),
        "ties": few,
        "equal": torch.zeros(8, vocab),  # every cumulative sum exact: the top-p boundary is hit
        "peaked": peaked,
        "flat": torch.randn(8, vocab, generator=g) * 1e-3,
    }


@pytest.mark.parametrize("vocab", [8, 50])
def test_filtered_probs_match_transformers_warpers(vocab):
    settings = itertools.product(
        [0.3, 1.0, 2.0],  # temperature
        [0, 1, 3, vocab - 1, vocab, vocab + 5],  # top_k
        [1e-9, 1e-6, 0.25, 0.5, 0.9, 1.0],  # top_p
    )
    for temperature, top_k, top_p in settings:
        for kind, logits in logit_batches(vocab).items():
            want = hf_probs(logits, temperature, top_k, top_p)
            got = filtered_probs(logits, temperature, top_k, top_p)
            row = filtered_probs(logits[3], temperature, top_k, top_p)  # as choose() calls it
            where = f"{kind} logits, temperature={temperature}, top_k={top_k}, top_p={top_p}"
            assert torch.equal(got > 0, want > 0), f"kept tokens differ: {where}"
            assert torch.allclose(got, want, rtol=0, atol=1e-6), where
            assert torch.allclose(row, want[3], rtol=0, atol=1e-6), f"one row: {where}"


def test_filter_boundaries_worked_by_hand():
    # four equal logits: probabilities 1/4 each, cumulative sums exact
    equal = torch.zeros(4)
    assert (filtered_probs(equal, 1.0, top_p=0.5) > 0).sum() == 2  # 2/4 reaches 0.5
    assert (filtered_probs(equal, 1.0, top_p=0.5001) > 0).sum() == 3
    assert (filtered_probs(equal, 1.0, top_p=1e-9) > 0).sum() == 1
    assert (filtered_probs(equal, 1.0, top_p=1.0) > 0).sum() == 4
    # top-k keeps every token tied with the k-th best
    tied = torch.tensor([3.0, 2.0, 2.0, 1.0])
    assert filtered_probs(tied, 1.0, top_k=2).tolist() == pytest.approx(
        [0.5761169, 0.2119416, 0.2119416, 0]
    )
    assert (filtered_probs(tied, 1.0, top_k=1) > 0).tolist() == [True, False, False, False]
    # temperature 0.5 doubles the logits: e^2 : e^0 between the two kept
    two = filtered_probs(torch.tensor([1.0, 0.0, -5.0]), 0.5, top_k=2)
    assert two.tolist() == pytest.approx([math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1), 0.0])


class Seen(Exception):
    """Raised by a stand-in decoder once it has the requests."""


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9}, (True, 0.7, 5, 0.9)),
        (
            {"do_sample": True, "temperature": 0.7, "top_k": 5.0},
            (True, 0.7, 5, 1.0),
        ),  # "5.0" parsed
        ({"do_sample": True, "temperature": 0.7}, (True, 0.7, 0, 1.0)),
        ({"do_sample": False, "top_k": 5}, (False, 1.0, 5, 1.0)),
    ],
)
def test_gen_kwargs_reach_the_request(pair, tokenizer, monkeypatch, kwargs, want):
    cfg = load_config({"cost_slm": "0:0", "cost_llm": "0:0"})
    lm = RoutedLM.from_runtime(runtime.build_runtime(cfg, *pair, tokenizer=tokenizer))
    seen: list[GenRequest] = []

    def stop_at_the_requests(reqs, **_):
        seen.extend(reqs)
        raise Seen

    monkeypatch.setattr(lm.runtime, "generate", stop_at_the_requests)
    with pytest.raises(Seen):
        lm.generate_until([Instance("generate_until", {}, ("Q:", kwargs), 0, ("t", 0, 1))], True)
    (req,) = seen
    assert (req.do_sample, req.temperature, req.top_k, req.top_p) == want


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -1),
        ("top_k", 2.0),
        ("top_k", True),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("temperature", 0.0),
        ("temperature", math.nan),
    ],
)
def test_a_request_refuses_settings_that_sample_from_nothing(field, value):
    with pytest.raises(ValueError, match=f"GenRequest {field}="):
        GenRequest([0], 4, do_sample=True, **{field: value})


# -- speculative sampling is lossless -------------------------------------------------------------

V = 5
# the target's (LLM's) and the draft's (SLM's) next-token distributions at positions 0..3; chosen far
# apart, so drafts are often rejected and the resample rule decides much of the output
TARGET = torch.tensor(
    [
        [0.40, 0.30, 0.15, 0.10, 0.05],
        [0.10, 0.20, 0.30, 0.25, 0.15],
        [0.30, 0.10, 0.10, 0.20, 0.30],
        [0.20, 0.20, 0.20, 0.20, 0.20],
    ]
)
DRAFT = torch.tensor(
    [
        [0.05, 0.10, 0.15, 0.30, 0.40],
        [0.35, 0.30, 0.05, 0.10, 0.20],
        [0.10, 0.40, 0.30, 0.10, 0.10],
        [0.50, 0.10, 0.10, 0.10, 0.20],
    ]
)
GAMMA = 2
TRIALS = 8000
SEED = 1234


def first_two_tokens(target_logits, draft_probs, req, generator) -> tuple[int, int]:
    """Decode positions 0 and 1 as the decoder does: draft GAMMA tokens from the draft's
    distributions, let ``accept_drafts`` verify them, and go on from what it emitted."""
    out: list[int] = []
    while len(out) < 2:
        at = len(out)
        q = [draft_probs[at + i] for i in range(GAMMA)]
        drafts = [int(torch.multinomial(qi, 1, generator=generator)) for qi in q]
        n, token = accept_drafts(drafts, q, target_logits[at : at + GAMMA + 1], req, generator)
        out += [*drafts[:n], token]
    return out[0], out[1]


def emitted_counts(target_logits, draft_probs, req) -> torch.Tensor:
    """(V, V) counts of the first two emitted tokens over TRIALS seeded trials."""
    generator = torch.Generator().manual_seed(SEED)
    counts = torch.zeros(V, V, dtype=torch.float64)
    for _ in range(TRIALS):
        a, b = first_two_tokens(target_logits, draft_probs, req, generator)
        counts[a, b] += 1
    return counts


def assert_distributed_as(counts: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Counts over cells against expected probabilities: none where the target has no mass, and a
    chi-square test elsewhere (fixed seed, so the verdict is the same on every run)."""
    expected = expected.double().flatten()
    counts = counts.flatten()
    support = expected > 0
    assert counts[~support].sum() == 0, f"{what}: tokens the target never emits were emitted"
    f_exp = expected[support] / expected[support].sum() * counts.sum()
    p_value = chisquare(counts[support].numpy(), f_exp.numpy()).pvalue
    assert p_value > 1e-3, f"{what}: chi-square p={p_value:.2e} (seed {SEED}, {TRIALS} trials)"


def test_speculative_sampling_emits_the_targets_distribution():
    req = GenRequest([0], 8, do_sample=True)
    counts = emitted_counts(TARGET.log(), list(DRAFT), req)
    # the target is the same whatever came before, so positions 0 and 1 are independent under it
    assert_distributed_as(
        counts, TARGET[0][:, None] * TARGET[1][None, :], "joint of positions 0, 1"
    )
    assert_distributed_as(counts.sum(1), TARGET[0], "position 0")
    assert_distributed_as(counts.sum(0), TARGET[1], "position 1")


def test_speculative_sampling_is_lossless_under_filtering():
    # the drafts come from the SLM's filtered distribution and the target is the LLM's filtered one,
    # as the decoder samples both; the reference filter is transformers'
    g = torch.Generator().manual_seed(3)
    target_logits = torch.randn(GAMMA + 2, V, generator=g) * 2
    draft_logits = torch.randn(GAMMA + 2, V, generator=g) * 2
    settings = {"temperature": 0.7, "top_k": 4, "top_p": 0.9}
    req = GenRequest([0], 8, do_sample=True, **settings)
    draft_probs = list(hf_probs(draft_logits, **settings))
    counts = emitted_counts(target_logits, draft_probs, req)
    want = hf_probs(target_logits, **settings)
    assert (want == 0).any(), "the case should filter some tokens out"
    assert_distributed_as(counts.sum(1), want[0], "position 0")
    assert_distributed_as(counts.sum(0), want[1], "position 1")
