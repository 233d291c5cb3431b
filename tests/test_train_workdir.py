"""A label pipeline resumed in a work folder made under other settings (another checker, verifier or
model) is refused in one line before any model loads, instead of keeping labels made the other way."""

from __future__ import annotations

import json

import pytest

from lm_eval_routed.errors import ConfigError
from lm_eval_routed.training import cli
from lm_eval_routed.training.common import claim_workdir


def test_claim_records_the_settings_and_accepts_the_same_again(tmp_path):
    claim_workdir(tmp_path, "citer", {"checker": "a:b", "stop": ["\n"]})
    assert json.loads((tmp_path / "settings.json").read_text()) == {
        "command": "citer",
        "checker": "a:b",
        "stop": ["\n"],
    }
    claim_workdir(tmp_path, "citer", {"checker": "a:b", "stop": ["\n"]})  # a resume


def test_claim_refuses_other_settings_and_leaves_the_folder_as_it_was(tmp_path):
    claim_workdir(tmp_path, "citer", {"checker": "a:b", "rollout_tokens": 64})
    before = (tmp_path / "settings.json").read_bytes()
    with pytest.raises(ConfigError) as err:
        claim_workdir(tmp_path, "citer", {"checker": "c:d", "rollout_tokens": 64})
    text = str(err.value)
    assert "checker='a:b', not 'c:d'" in text and "\n" not in text
    assert (tmp_path / "settings.json").read_bytes() == before


def test_a_key_an_older_folder_lacks_is_not_compared(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"command": "citer", "checker": "a:b"}))
    claim_workdir(tmp_path, "citer", {"checker": "a:b", "stop": []})


def accept_all(text: str, row: dict) -> bool:
    """A checker that accepts every rollout."""
    return True


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(cli, "load_pair_model", lambda *a, **k: pytest.fail("a model was loaded"))


def _rows(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "reference": "2"}) + "\n")
    return str(data)


@pytest.mark.parametrize(
    "what,first,second,needle",
    [
        (
            "citer-label",
            ["--checker", "lm_eval_routed.training.citer:first_line_match"],
            ["--checker", "test_train_workdir:accept_all"],
            "checker='lm_eval_routed.training.citer:first_line_match', not",
        ),
        ("r2r-label", [], ["--verifier", "judge/"], "verifier='the LLM', not 'judge/'"),
        ("r2r-label", ["--top-k", "100"], ["--top-k", "10"], "top_k=100, not 10"),
    ],
)
def test_the_cli_refuses_a_workdir_made_otherwise_before_loading(
    tmp_path, no_models, capsys, what, first, second, needle
):
    data = _rows(tmp_path)
    work = tmp_path / "work"
    source = ["--data", data] if what.startswith("citer") else ["--queries", data]
    base = [what, "--slm", "s/", "--llm", "l/", *source, "--workdir", str(work)]
    # the first run's settings, as its claim left them (the models themselves are not needed here)
    args = cli._parser().parse_args([*base, *first])
    with pytest.raises(pytest.fail.Exception):  # it claims the folder, then tries to load a model
        {"citer-label": lambda a: cli.citer(a, True), "r2r-label": cli.r2r_label}[what](args)
    assert (work / "settings.json").is_file()
    assert cli.main([*base, *second]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
