"""docs/configuration.md, rendered from RoutedConfig's own field declarations.

``python -m lm_eval_routed.config_table`` rewrites the file; a test fails when it is stale.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path

from lm_eval_routed.config import Affects, RoutedConfig
from lm_eval_routed.routers.base import knob_names, readers_of, router_names

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

_HEAD = """\
# Configuration

Every form a user types (`--model_args k=v,...`, `config=FILE_OR_PRESET`, a YAML file, EvalPlus's
`ROUTED_MODEL_ARGS`) ends in one `RoutedConfig` (`lm_eval_routed/config.py`), checked once. This page
is generated from that class's field declarations (`python -m lm_eval_routed.config_table`); edit
the declarations, not this page.

`config` names a YAML file or a shipped preset (`demo`, `r2r`, `rstitch`, `citer`) holding any keys
below; keys given explicitly override it.

**Affects** says what changing a key changes, and the rest follows from it:
- *output*: what a run generates, scores or records. These keys name a run (the digest in lm-eval's
  output folder `routed__<label>__<digest>`), and a resumed run (a sweep cell, an EvalPlus samples
  file) under another value is refused.
- *speed*: how fast it runs. A sweep cell records these beside its scores (its latency was measured
  under them) unless they are also *loading* keys (where the weights sit is in the run info).
- *loading*: which weights are loaded and where; sweep cells that agree on these share one load.
- *logging*: what is logged beside the results.

"""

_TAIL = """
Unknown keys and bad values stop the run with one line naming the key and what it accepts, before any
model loads where they can be seen without one: empty values (`threshold=`), non-finite numbers,
a device that is not `cpu`, `cuda[:N]` or `mps`, a YAML error in a `config=` file (its line), a
damaged model or router file, and a knob the chosen router does not read set away from its default
(`router=random,threshold=0.5` names the knobs `random` reads; a knob a `config=` file sets for its
own router is dropped when another router is chosen). Under the `lm_eval` CLI these lines end the
run with `lm_eval: ...` and exit status 2 instead of a traceback.
"""


def _default(f) -> str:
    shown = f.metadata.get("shown")
    if shown:
        return shown
    if f.default is MISSING or f.default is None:
        return "—"
    value = f.default
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _affects(affects: Affects) -> str:
    return ", ".join(a.name.lower() for a in Affects if a in affects)


def render() -> str:
    """The whole page, from the field declarations (and the routers' declared knobs)."""
    knobs = knob_names()
    lines = ["| key | default | affects | meaning |", "|---|---|---|---|"]
    for f in fields(RoutedConfig):
        if not f.metadata:
            continue
        doc = f.metadata["doc"]
        if f.name == "router":
            doc += f": {', '.join(f'`{r}`' for r in router_names())}"
        if f.name in knobs:
            doc += f" (read by: {', '.join(f'`{r}`' for r in readers_of(f.name))})"
        lines.append(f"| `{f.name}` | {_default(f)} | {_affects(f.metadata['affects'])} | {doc} |")
    return _HEAD + "\n".join(lines) + "\n" + _TAIL


def main() -> None:
    """Rewrite docs/configuration.md (or, with ``--check``, exit 1 when it is stale)."""
    text = render()
    if sys.argv[1:] == ["--check"]:
        stale = not DOC_PATH.is_file() or DOC_PATH.read_text() != text
        sys.exit(f"{DOC_PATH} is stale; run python -m lm_eval_routed.config_table" if stale else 0)
    DOC_PATH.write_text(text)


if __name__ == "__main__":
    main()
