"""The package's walls: data flows adapter -> runtime -> core, and the core never reaches back up.

Every import statement counts, module-level or inside a function, so a lazy import cannot slip a
dependency past the wall.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_routed"

# layer folder -> the lm_eval_routed modules it may never import (prefix match on dotted names)
FORBIDDEN = {
    "core": ("adapters", "evals", "jobs", "training", "runtime", "routers.r2r", "routers.citer"),
    "routers": ("core.decoder", "adapters", "jobs", "runtime"),
    "evals": ("core", "adapters", "jobs", "training", "runtime"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every lm_eval_routed import in one file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from lm_eval_routed.core import decoder` imports the submodule too
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return sorted((line, name) for line, name in found if name.startswith("lm_eval_routed."))


def violations(layer: str) -> list[str]:
    """Each forbidden import in one layer's files, as 'file:line imports name'."""
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, name in imported_modules(path):
            rest = name.removeprefix("lm_eval_routed.")
            if any(rest == f or rest.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    assert violations(layer) == []


def test_the_walker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "lm_eval_routed"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text(
        "def f():\n    from lm_eval_routed.adapters import lm_eval_model\n"
        "from ..jobs import sweep\nimport lm_eval_routed.runtime\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations("core") == [
        "core/bad.py:2 imports lm_eval_routed.adapters.lm_eval_model",
        "core/bad.py:3 imports lm_eval_routed.jobs.sweep",
        "core/bad.py:4 imports lm_eval_routed.runtime",
    ]
