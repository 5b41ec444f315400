"""The package's arrows run one way (docs/architecture.md): no import circles, nothing imports upwards.

    edgeeff (the package) -> api -> cli, evaluation_cli -> pipeline, across_targets, sweep
        -> models, data, quant, backends, scoring, report

Each rule is checked on the real import statements of every module (function-level imports too:
a lazy import is still an arrow), read with `ast`, so a new module is covered without a list here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeeff"
TOP = {"edgeeff.cli", "edgeeff.evaluation_cli", "edgeeff.__main__", "edgeeff.api"}  # the command line, the Python API
ORCHESTRATION = {"edgeeff.pipeline", "edgeeff.across_targets", "edgeeff.sweep"}  # compiles, and commands that run several
RUNTIMES = {"onnxruntime", "openvino", "nncf", "ai_edge_litert", "ai_edge_quantizer", "litert_torch", "tensorrt",
            "tflite_runtime"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from . import x` resolved to the module x when it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from .quant import calibration` imports the module calibration; `from . import
            # progress` is an arrow to progress alone, not to the package whose __init__ re-exports the API.
            names_a_module = [(PACKAGE.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py")
                              .exists() for alias in node.names]
            found.update(f"{target}.{alias.name}" for alias, is_module in zip(node.names, names_a_module) if is_module)
            if not all(names_a_module):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "device" not in p.relative_to(PACKAGE).parts}
    return {name: {i for i in imports_of(path) if i in modules} - {name} for name, path in modules.items()}


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if state.get(nxt) is None:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_arrows_point_down():
    edges = graph()
    below_pipeline = {n for n in edges if n not in TOP | ORCHESTRATION | {"edgeeff"}}
    for name in sorted(edges):
        for target in sorted(edges[name]):
            # The package's __init__ re-exports the API (which imports the CLI): a module reading
            # anything from it would close a circle, so the version lives in edgeeff.version.
            assert target != "edgeeff", f"{name} imports the package edgeeff itself"
            if name in below_pipeline:
                assert target not in TOP | ORCHESTRATION, f"{name} imports {target}: nothing below the pipeline may"
            if name in ORCHESTRATION:
                assert target not in TOP, f"{name} imports the command line ({target})"
            if name.startswith("edgeeff.data"):
                assert not target.startswith("edgeeff.models"), f"{name} imports {target}: data/ imports nothing of models/"
            if name.startswith("edgeeff.backends"):
                assert not target.startswith(("edgeeff.models", "edgeeff.report")), (
                    f"{name} imports {target}: backends use quant/ and data/ only")


def test_report_reads_results_never_runtimes():
    for path in (PACKAGE / "report").glob("*.py"):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert not roots & RUNTIMES, f"{path.name} imports {roots & RUNTIMES}"


def test_device_files_do_not_import_edgeeff():
    """They run on a device where edgeeff is not installed."""
    for path in (PACKAGE / "device").glob("*.py"):
        if path.name == "__init__.py":
            continue
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert "edgeeff" not in roots, path.name


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The rules above can fail: on a package built to break them, they do."""
    import sys

    import pytest

    fake = tmp_path / "edgeeff"
    (fake / "quant").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "pipeline.py").write_text("from .quant import a\n")
    (fake / "quant" / "__init__.py").write_text("")
    (fake / "quant" / "a.py").write_text("from . import b\n")
    (fake / "quant" / "b.py").write_text("def f():\n    from ..pipeline import x\n    from .a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match="nothing below the pipeline"):
        test_arrows_point_down()


def test_lint_is_clean():
    """ruff with the rules pyproject.toml selects (pyflakes, pycodestyle errors, isort) finds nothing."""
    import shutil
    import subprocess
    import sys

    import pytest

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (the dev extra)")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([ruff, "check", "edgeeff", "scripts", "tests"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
