"""Per-sample accounting adds up and follows R2R's activated-parameter definition."""

from __future__ import annotations

import pytest

from lm_eval_routed.config_args import load_config
from lm_eval_routed.core.accounting import ParamSizes, SampleTally
from lm_eval_routed.core.rows import GenRequest
from lm_eval_routed.errors import ConfigError
from lm_eval_routed.jobs.leaderboard import build_rows, to_csv, to_markdown
from lm_eval_routed.jobs.summaries import summarize


def test_record_formula():
    tally = SampleTally(
        producers=["slm", "slm", "llm", "slm"], llm_scored_positions=1, router_calls=4
    )
    rec = tally.record(ParamSizes(slm=10, llm=100, router=1))
    assert rec.tokens == 4 and rec.tokens_slm == 3 and rec.tokens_llm == 1
    assert rec.activated_params == (3 * 10 + 1 * 100) / 4
    assert rec.activated_params_charged == (4 * 10 + 1 * 100 + 4 * 1) / 4
    assert rec.activated_params_nominal is None  # no nominal sizes given
    assert rec.switches == 2 and rec.llm_positions == [2]


def test_nominal_figure_uses_the_papers_sizes():
    tally = SampleTally(producers=["slm", "llm", "llm", "slm", "slm"])
    sizes = ParamSizes(slm=1_777_088_000, llm=32_763_876_352, slm_nominal=1.5e9, llm_nominal=32e9)
    rec = tally.record(sizes)
    assert rec.activated_params_nominal == pytest.approx((3 * 1.5e9 + 2 * 32e9) / 5)
    assert rec.activated_params == pytest.approx((3 * 1_777_088_000 + 2 * 32_763_876_352) / 5)
    assert rec.activated_params_nominal < rec.activated_params
    assert SampleTally().record(sizes).activated_params_nominal == 0.0  # nothing generated


def test_nominal_sizes_reach_records_run_info_and_the_leaderboard(
    make_runtime, tokenizer, tmp_path
):
    rt = make_runtime(
        router="random", p="0.5", params_slm_nominal="1.5e9", params_llm_nominal="32e+9"
    )
    reqs = [GenRequest(tokenizer(p)["input_ids"], 12, seed=i) for i, p in enumerate(["ab", "cd"])]
    recs = [r.record for r in rt.generate(reqs)]
    for rec in recs:
        want = (rec.tokens_slm * 1.5e9 + rec.tokens_llm * 32e9) / rec.tokens
        assert rec.activated_params_nominal == pytest.approx(want)
        assert rec.to_dict()["activated_params_nominal"] == rec.activated_params_nominal
    info = rt.info()["routed"]
    assert (info["params_slm_nominal"], info["params_llm_nominal"]) == (1.5e9, 32e9)
    plain = make_runtime(router="random", p="0.5")
    assert plain.generate(reqs)[0].record.activated_params_nominal is None
    assert plain.info()["routed"]["params_slm_nominal"] is None

    def summary(label, recs):
        acc = summarize([r.to_dict() for r in recs])
        return {
            "label": label,
            "task": "t",
            "config": {"router": "random"},
            "n_samples": 2,
            "metrics": {"acc,none": 0.5, "acc_stderr,none": 0.1},
            "accounting": acc,
        }

    with_nominal = summary("paper", recs)
    without = summary("exact", [r.record for r in plain.generate(reqs)])
    assert with_nominal["accounting"]["activated_params_nominal"] == pytest.approx(
        sum(r.activated_params_nominal for r in recs) / 2
    )
    assert without["accounting"]["activated_params_nominal"] is None
    # the column shows only when some configuration was given nominal sizes
    assert "activated_params_nominal" not in to_markdown(build_rows([without]))
    table = to_markdown(build_rows([with_nominal, without]))
    assert "| activated_params_charged | activated_params_nominal |" in table
    assert "activated_params_nominal" in to_csv(build_rows([with_nominal, without])).splitlines()[0]


def test_older_records_without_the_nominal_field_summarize():
    old = {
        "tokens": 2,
        "llm_share": 0.5,
        "activated_params": 1.0,
        "activated_params_charged": 2.0,
        "latency_s": 0.1,
        "modeled_latency_s": 0.1,
        "switches": 1,
    }
    assert summarize([old])["activated_params_nominal"] is None


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"params_slm_nominal": "1.5e9"}, "params_slm_nominal and params_llm_nominal go together"),
        ({"params_llm_nominal": "32e9"}, "go together; give both"),
        (
            {"params_slm_nominal": "0", "params_llm_nominal": "32e9"},
            "params_slm_nominal=0 must be a positive parameter count",
        ),
        (
            {"params_slm_nominal": "1.5e9", "params_llm_nominal": "-1"},
            "params_llm_nominal=-1 must be a positive",
        ),
        (
            {"params_slm_nominal": "1.5e9", "params_llm_nominal": "inf"},
            "params_llm_nominal='inf' is not a finite number",
        ),
        ({"params_slm_nominal": "1.5B", "params_llm_nominal": "32e9"}, "is not a valid float"),
    ],
)
def test_bad_nominal_sizes_fail_with_one_line(args, needle):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_paper_presets_carry_their_nominal_sizes():
    sizes = {
        name: (cfg.params_slm_nominal, cfg.params_llm_nominal)
        for name in ("r2r", "rstitch", "citer")
        for cfg in [load_config({"config": name})]
    }
    assert sizes == {"r2r": (1.5e9, 32e9), "rstitch": (1.5e9, 7e9), "citer": (1.5e9, 72e9)}
    assert load_config({"config": "demo"}).params_slm_nominal is None


def test_counts_add_up_for_every_router(make_runtime, tokenizer):
    prompts = ["alpha beta", "gamma", "delta epsilon zeta"]
    for router, extra in [
        ("random", {"p": "0.4"}),
        ("entropy", {"threshold": "0.8"}),
        ("speculative", {}),
        ("entropy-token", {"threshold": "3.6"}),
    ]:
        rt = make_runtime(router=router, batch_size=2, **extra)
        reqs = [GenRequest(tokenizer(p)["input_ids"], 16, seed=i) for i, p in enumerate(prompts)]
        results = rt.generate(reqs)
        # the routers mix the two models on these prompts (thresholds picked for the tiny pair);
        # speculative keeps none of the SLM's drafts, since the tiny pair never agrees
        llm_tokens, tokens = (
            sum(getattr(r.record, f) for r in results) for f in ("tokens_llm", "tokens")
        )
        assert llm_tokens > 0 and (llm_tokens < tokens or router == "speculative")
        for req, res in zip(reqs, results):
            rec = res.record
            assert rec.tokens == len(res.token_ids)
            assert rec.tokens_slm + rec.tokens_llm == rec.tokens
            assert len(rec.llm_positions) == rec.tokens_llm
            # the LLM has seen the prompt once it was called at all
            if rec.llm_calls:
                assert rec.llm_forward_tokens >= len(req.prompt_ids)
            assert rec.slm_forward_tokens >= len(req.prompt_ids)
            assert rec.latency_s > 0 and rec.modeled_latency_s > 0


def test_lazy_catch_up_feeds_each_token_once(make_runtime, tokenizer):
    # without guessing ahead: dropped guesses are fed again, by design
    rt = make_runtime(router="random", p="0.3", batch_size=1, guess_ahead="0")
    req = GenRequest(tokenizer("catch up")["input_ids"], 30, seed=7)
    rec = rt.generate([req])[0].record
    total = len(req.prompt_ids) + rec.tokens
    # every token reaches each model at most once (the last one is never fed back)
    assert rec.slm_forward_tokens <= total
    assert rec.llm_forward_tokens <= total
