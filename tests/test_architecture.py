"""The import rules of docs/architecture.md, read from every module's source (function-level imports included):
only orchestration imports Ray, only tracking imports MLflow, and no layer imports a layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

PACKAGE = Path(__file__).resolve().parents[1] / "pudm_bench"
ENTRIES = ("sweep", "benchmark", "train", "report", "splits", "evaluate", "sanity", "fid", "latent")

# Lowest first. A module may import its own layer and the ones below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("pudm_bench", "pudm_bench.errors", "pudm_bench.presets")),
    ("data", ("pudm_bench.data",)),
    ("training", ("pudm_bench.training",)),
    ("scoring", ("pudm_bench.scoring",)),
    ("prior", ("pudm_bench.prior",)),
    ("search", ("pudm_bench.search",)),
    ("results", ("pudm_bench.results",)),
    ("tracking", ("pudm_bench.tracking",)),
    ("orchestration", ("pudm_bench.orchestration",)),
    ("cli", ("pudm_bench.cli", "pudm_bench.prior.__main__")),
    # python -m pudm_bench.<command>: each only hands over to cli.<command>
    ("entries", tuple(f"pudm_bench.{c}" for c in ENTRIES)),
]
ONLY = {"ray": "orchestration", "mlflow": "tracking"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names ``module`` (``pudm_bench`` alone: the package)."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py (and docs/architecture.md)")
    return best


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, except inside its ``if __name__ == "__main__":`` block (the ``python -m``
    entry, which may hand over to the command's CLI)."""
    tree = ast.parse(path.read_text())
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    skipped = {id(n) for block in main_blocks for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pudm_bench":  # from pudm_bench import tracking: the submodule
                found.update(f"pudm_bench.{alias.name}" for alias in node.names if alias.name != "__version__")
                found.add("pudm_bench")
            else:
                found.add(node.module)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    me = module_name(path)
    mine = layer_of(me)
    for imported in sorted(imports_of(path)):
        top = imported.split(".")[0]
        if top in ONLY:
            assert LAYERS[mine][0] == ONLY[top], f"{me} imports {imported}: only the {ONLY[top]} layer may"
        if top == "pudm_bench":
            theirs = layer_of(imported)
            assert theirs <= mine, (f"{me} (layer {LAYERS[mine][0]}) imports {imported} (layer {LAYERS[theirs][0]}, "
                                    "above it)")


def test_the_rules_see_a_violation(tmp_path):
    """The checker itself: an upward import and a Ray import outside orchestration are both found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import ray\n\ndef f():\n    from pudm_bench.orchestration import sweep\n")
    assert imports_of(bad) == {"ray", "pudm_bench.orchestration"}
    assert layer_of("pudm_bench.orchestration.sweep") > layer_of("pudm_bench.training.loop")
    entry = tmp_path / "entry.py"
    entry.write_text('import sys\nif __name__ == "__main__":\n    from pudm_bench.cli.train import main\n')
    assert imports_of(entry) == {"sys"}


def test_every_module_is_in_a_layer_and_none_is_over_the_size_limit():
    """No module over ~400 lines (STYLE.md): each one concern."""
    for path in MODULES:
        layer_of(module_name(path))
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{module_name(path)}: {lines} lines"


@pytest.mark.parametrize("command", ENTRIES + ("prior",))
def test_each_command_entry_only_hands_over_to_its_cli_and_has_a_console_script(command):
    """``python -m pudm_bench.<command>`` and the console script ``pudm-<command>`` run the same ``cli.<command>.main``."""
    path = PACKAGE / command / "__main__.py" if command == "prior" else PACKAGE / f"{command}.py"
    assert imports_of(path) | {"pudm_bench.cli.%s" % command} == {"sys", f"pudm_bench.cli.{command}"}
    tree = ast.parse(path.read_text())
    assert [type(n).__name__ for n in tree.body] == ["Expr", "Import", "ImportFrom", "If"], f"{path}: more than an entry"
    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[f"pudm-{command}"] == f"pudm_bench.cli.{command}:main"


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers.py (and tests/dataset_files.py): a test module importing another one runs
    that module's import-time code and ties the two together."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(tests)}: {n}" for n in names
                          if n.startswith("tests.") and n.rpartition(".")[2].startswith("test_")]
    assert offenders == []


def test_the_processes_that_only_pass_configs_on_skip_the_heavy_imports():
    # Tune's trial process and Ray Train's controller import orchestration.trial / .worker once per trial (the
    # controller to unpickle the train function): diffusers (with torch._dynamo), scipy.stats and the referee
    # cost seconds there and are only needed inside the training worker (docs/performance.md item 5).
    import subprocess
    import sys

    heavy = ("diffusers", "scipy.stats", "pudm_bench.scoring.referee", "pudm_bench.scoring.fid", "mlflow")
    code = ("import sys, pudm_bench.orchestration.trial, pudm_bench.orchestration.worker; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
