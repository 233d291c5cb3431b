"""Where each generated token sits in a sample's response text, for the accounting record.

The routing view highlights the tokens the LLM wrote. Re-tokenizing the response afterwards can split
it differently from what was generated, so the boundaries are taken once, when a sample finishes, by
decoding its own token ids incrementally (each piece after the one before it, as streaming
detokenizers do), and kept in the record as ``token_offsets`` (``record_tokens=false`` leaves them out).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from lm_eval_routed.core.rows import GenResult

log = logging.getLogger(__name__)

_warned = False


def token_offsets(tokenizer: Any, ids: list[int], text: str) -> list[int] | None:
    """``len(ids) + 1`` character offsets: token i wrote ``text[off[i]:off[i + 1]]``.

    A token that ends inside a character (bytes of one emoji split over tokens), a special token, or
    one past a stop string that cut the text gets an empty span; the last offset is ``len(text)``.
    None when the pieces do not add up to ``text`` (a tokenizer whose decoding of a piece depends on
    more than a few tokens before it), so a record never carries wrong boundaries.
    """
    offsets = [0]
    written = ""  # text of ids[:read], grown one settled piece at a time
    # ids[start:read]: the tokens of the last settled piece, the context the next one is decoded
    # after (a piece settles once it decodes to whole characters)
    start = read = 0
    for k in range(len(ids)):
        before = tokenizer.decode(ids[start:read], skip_special_tokens=True)
        now = tokenizer.decode(ids[start : k + 1], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            written += now[len(before) :]
            start, read = read, k + 1
        offsets.append(min(len(written), len(text)))
    if not written.startswith(text):
        return None
    offsets[-1] = len(text)
    return offsets


def with_offsets(result: GenResult, tokenizer: Any) -> GenResult:
    """``result`` with ``token_offsets`` in its record (a copy; the decoder's result is untouched)."""
    global _warned
    offsets = token_offsets(tokenizer, result.token_ids, result.text)
    if offsets is None and not _warned:
        _warned = True
        log.warning(
            "token boundaries of a response did not add up to its text with this tokenizer; "
            "such records carry no token_offsets (the routing view shows them without tokens)"
        )
    record = dataclasses.replace(result.record, token_offsets=offsets)
    return dataclasses.replace(result, record=record)
