"""The verifier of R2R's label pipeline: do two continuations of one text differ in substance?

Any causal LM can judge (on the demo pair, the LLM itself). It reads the text so far and the two
continuations, and answers YES (they differ in meaning, reasoning, logic or conclusions: the SLM's token
diverges) or NO (only wording differs: the token is neutral). Its first YES/NO word is the verdict; an
answer holding neither is unparseable, and such positions are counted and left out of the dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lm_eval_routed.training.common import encode_prompt, greedy

CONTEXT_CHARS = 600  # the tail of the text so far that the verifier sees

_PROMPT = """\
Below is the start of a text, then two possible ways to continue it.

Text so far:
{context}

Continuation A:
{a}

Continuation B:
{b}

Do A and B differ in meaning, reasoning, logic or conclusions? Wording, spelling or formatting \
differences alone do not count. Reply with one word: YES or NO."""

_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """One judgment: label 1 (divergent), 0 (neutral) or None (unparseable), and the raw reply."""

    label: int | None
    raw: str


def verifier_prompt(context: str, a: str, b: str) -> str:
    """The question put to the verifier (the context is cut to its last ``CONTEXT_CHARS``)."""
    return _PROMPT.format(context=context[-CONTEXT_CHARS:], a=a.strip(), b=b.strip())


def parse_verdict(reply: str) -> int | None:
    """1 for YES, 0 for NO (the first such word counts), None when neither appears."""
    match = _ANSWER.search(reply)
    if match is None:
        return None
    return int(match.group(1).lower() == "yes")


def judge(model, tokenizer, items: list[tuple[str, str, str]], chat: bool = True) -> list[Verdict]:
    """Verdicts for (context, continuation A, continuation B) triples, one greedy reply each.

    Identical continuations are neutral by definition and never reach the model.
    """
    verdicts: list[Verdict | None] = [
        Verdict(0, "identical") if a.strip() == b.strip() else None for _, a, b in items
    ]
    todo = [i for i, v in enumerate(verdicts) if v is None]
    if todo:
        prompts = [encode_prompt(tokenizer, verifier_prompt(*items[i]), chat) for i in todo]
        replies = greedy(model, tokenizer, prompts, max_new_tokens=6)
        for i, (ids, _) in zip(todo, replies):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            verdicts[i] = Verdict(parse_verdict(text), text)
    return verdicts  # type: ignore[return-value]
