"""The package's walls: data flows adapter -> loading (the runtime) -> core, and no layer reaches back up.

Every import statement counts, module-level or inside a function, so a lazy import cannot slip a
dependency past the wall.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_routed"

ABOVE_CORE = ("config", "config_args", "loading", "adapters", "evals", "jobs", "training", "cli")
# layer -> the lm_eval_routed modules it may never import (prefix match on dotted names). A layer is
# a folder, or one root module (``errors.py``, ``config.py``).
FORBIDDEN = {
    # the one error type: a leaf every layer can raise
    "errors": ("",),
    # writing files whole or appending lines: a leaf too
    "files": ("",),
    # a config is checked without loading anything: it reads the routers' knobs and the placement
    # keys' syntax, nothing that loads a model
    "config": ("core", "adapters", "evals", "jobs", "training", "cli", "loading.models",
               "loading.runtime", "loading.placement", "loading.demo_pair", "loading.costs"),
    # parsing what a user types into a config: the same walls
    "config_args": ("core", "adapters", "evals", "jobs", "training", "cli", "loading"),
    "core": (*ABOVE_CORE, "routers.r2r", "routers.citer", "routers.rstitch_plus"),
    "routers": ("core.decoder", "loading", "adapters", "evals", "jobs", "training", "cli"),
    "evals": ("core", "routers", "loading", "adapters", "jobs", "training", "cli"),
    "loading": ("adapters", "evals", "jobs", "training", "cli"),
    "adapters": ("jobs", "training", "cli"),
    "training": ("adapters", "jobs", "cli"),
    "jobs": ("training", "cli"),
}  # fmt: skip


def layer_files(layer: str) -> list[Path]:
    """The files of one layer: a folder's, or a root module's own."""
    folder = PACKAGE / layer
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{layer}.py"]


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
    for path in layer_files(layer):
        for line, name in imported_modules(path):
            rest = name.removeprefix("lm_eval_routed.")
            if any(f == "" or rest == f or rest.startswith(f + ".") for f in FORBIDDEN[layer]):
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
        "from ..jobs import sweep\nimport lm_eval_routed.loading.runtime\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations("core") == [
        "core/bad.py:2 imports lm_eval_routed.adapters.lm_eval_model",
        "core/bad.py:3 imports lm_eval_routed.jobs.sweep",
        "core/bad.py:4 imports lm_eval_routed.loading.runtime",
    ]


def test_every_module_of_the_package_belongs_to_a_layer_or_is_named_here():
    # a new root module or folder gets a row in FORBIDDEN, or joins this list saying why it has none
    unwalled = {"__init__", "cli", "config_table", "paths"}  # the top: they may import anything
    for path in PACKAGE.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
            assert name in FORBIDDEN or name in unwalled, name
