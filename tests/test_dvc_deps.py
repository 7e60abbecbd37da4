"""dvc.yaml tells the truth about code: every stage's deps cover the first-party modules it
imports (transitively), stage modules import no other stage, and the paths a stage is given
on its command line are declared as deps or outputs."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("stages", "magvit", "models", "pipelines")


def module_file(module: str) -> Path | None:
    """The repo file of a first-party module (package -> its __init__.py), else None."""
    if module.split(".")[0] not in FIRST_PARTY:
        return None
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Modules an import statement anywhere in the file names (lazy imports included);
    `from a.b import c` counts as a.b and, when c is a module, a.b.c."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_closure(module: str) -> set[Path]:
    """Every first-party file that running `module` imports (packages' non-empty __init__ too)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen and path.stat().st_size:  # empty __init__
                seen.add(path)
                todo += sorted(imported_modules(path))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    words = shlex.split(stage["cmd"])
    assert words[:2] == ["python", "-m"], f"cmd must be `python -m stages.<stage> ...`: {words}"
    return words[2]


def declared_paths(stage: dict, *keys: str) -> list[str]:
    """Paths listed under deps / outs / metrics / plots (entries may be {path: options})."""
    paths = []
    for key in keys:
        for entry in stage.get(key, []):
            paths += list(entry) if isinstance(entry, dict) else [entry]
    return paths


def within(path: Path, declared: list[str]) -> bool:
    """`path` is one of the declared paths or lies in a declared folder."""
    return any(path == Path(d) or Path(d) in path.parents for d in declared)


def missing_deps(stage: dict) -> list[str]:
    deps = declared_paths(stage, "deps")
    closure = import_closure(stage_module(stage))
    return sorted(
        str(p.relative_to(REPO)) for p in closure if not within(p.relative_to(REPO), deps)
    )


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_runs_its_own_module(name):
    assert stage_module(stages()[name]) == f"stages.{name}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_deps_cover_every_imported_module(name):
    assert missing_deps(stages()[name]) == []


def test_a_removed_dep_is_caught():
    stage = stages()["train_tokenizer"]
    trimmed = {**stage, "deps": [d for d in stage["deps"] if d != "models/lfq.py"]}
    assert missing_deps(trimmed) == ["models/lfq.py"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_command_line_paths_are_declared(name):
    """A path given on the command line is a dep or an output: nothing read is undeclared."""
    stage = stages()[name]
    declared = declared_paths(stage, "deps", "outs", "metrics", "plots")
    words = shlex.split(stage["cmd"])
    values = [w for w in words[3:] if not w.startswith("--")]
    assert values, f"{name} is given no paths"
    # a folder given (a model directory) counts when the files read from it are declared
    undeclared = [
        v for v in values if not within(Path(v), declared) and not any(
            Path(v) in Path(d).parents for d in declared
        )
    ]  # fmt: skip
    assert undeclared == []


def test_stage_folder_holds_only_stages_and_no_stage_imports_another():
    names = set(stages())
    modules = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__"}
    # mlflow_models only re-exports the pyfunc classes that registered models pickle by name
    assert modules - {"mlflow_models"} == names
    for path in (REPO / "stages").glob("*.py"):
        stage_imports = {m for m in imported_modules(path) if m.startswith("stages.")}
        assert stage_imports <= {"stages.mlflow_models"} or path.stem == "__init__", path


def test_no_import_cycles():
    graph = {}
    for package in FIRST_PARTY:
        for path in (REPO / package).rglob("*.py"):
            deps = {module_file(m) for m in imported_modules(path)} - {None, path}
            graph[path] = {d for d in deps if d.name != "__init__.py"}
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, f"import cycle: {[str(p.relative_to(REPO)) for p in trail]}"
        visiting.add(node)
        for nxt in graph.get(node, ()):
            visit(nxt, [*trail, nxt])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [node])
