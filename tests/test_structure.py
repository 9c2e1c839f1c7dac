"""The shape of the package, as docs/design.md states it: imports flow one way (no cycle, imports inside
functions included), no module over 600 lines, ``_fit`` at most 60 lines and every other function
at most 80, no ``type: ignore``, and the data layer knows no phase names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "trainkit"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The trainkit modules an import statement reaches (``from a import b`` reaches ``a.b`` when it
    is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        names = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names]
    out = []
    for n in names:
        while n and n not in MODULES and "." in n:
            n = n.rsplit(".", 1)[0]
        if n in MODULES and n != module:
            out.append(n)
    return out


def import_graph() -> dict[str, set[str]]:
    """Every module's imports of other trainkit modules, at any depth of the file (functions too).
    The package's own ``__init__`` is left out as a target: importing ``trainkit.x`` runs it first
    by Python's rules, and its lazy attributes (``trainkit.fit``) are what it re-exports."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(node, name, path.name == "__init__.py") if t != "trainkit")
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from trainkit.train import fit\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _targets(node, "trainkit.repro", False) == ["trainkit.train"]


def test_no_import_cycles_in_the_package():
    assert find_cycles(import_graph()) == []


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (n.name, n.end_lineno - n.lineno + 1)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno is not None
    ]


def test_modules_and_functions_stay_readable():
    long_modules = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long_modules == {}
    limits = {("trainkit.train", "_fit"): 60}
    too_long = [(m, f, n) for m, p in MODULES.items() for f, n in _functions(p) if n > limits.get((m, f), 80)]
    assert too_long == []
    assert any(f == "_fit" for f, _ in _functions(MODULES["trainkit.train"]))


def test_no_type_ignore_in_the_package():
    hits = [
        f"{p.relative_to(ROOT.parent)}:{i}"
        for p in MODULES.values()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "type: ignore" in line
    ]
    assert hits == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("trainkit.data")))
def test_the_data_layer_knows_no_phase_names(name):
    text = MODULES[name].read_text(encoding="utf-8")
    for phase in ("01_planning", "02_baseline", "03_diagnostics", "04_optimization", "05_finalization", "run.json"):
        assert phase not in text, f"{name} spells {phase}"
    reaches = {
        d for d in import_graph()[name] if d == "trainkit.run" or d.startswith(("trainkit.phases", "trainkit.pipeline"))
    }
    assert reaches == set(), f"{name} imports {reaches}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_name_in_all_exists(name):
    import importlib

    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


def test_every_document_the_code_and_tests_cite_exists():
    """docs/design.md and the diagnostic guides: a citation in a module or a test names a file of this
    repository (the design the repo carries, not one outside it)."""
    import re

    repo = ROOT.parent
    cited: set[str] = set()
    for p in [*ROOT.rglob("*.py"), *(repo / "tests").glob("*.py"), repo / "README.md"]:
        cited |= set(re.findall(r"docs/[\w/.-]+\.md", p.read_text(encoding="utf-8")))
    assert "docs/design.md" in cited
    missing = sorted(c for c in cited if not (repo / c).is_file())
    assert not missing, missing
    text = " ".join(p.read_text(encoding="utf-8") for p in ROOT.rglob("*.py"))
    assert "DESIGN.md" not in text  # the copy outside the repository is not cited


@pytest.mark.slow  # starts a process (ruff)
def test_the_tree_is_formatted_and_lints_clean_at_120_columns():
    """``ruff format --check`` and ``ruff check`` (E, F, W at 120 columns, pyproject's [tool.ruff])
    over the package, the tests and the benchmarks: a change that is not formatted fails here."""
    import subprocess
    import sys

    repo = ROOT.parent
    for args in (["format", "--check"], ["check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "trainkit", "tests", "benchmarks"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"ruff {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_only_the_run_folder_writes_run_json():
    """docs/design.md: RunFolder owns every write to run.json (``RunFolder.updating``, ``record_phase``,
    ``init_run``); no other module saves the manifest or writes a file named like it."""
    import re

    writes = re.compile(
        r"(write_json_atomic|write_text_atomic|\.write_text|open)\([^)]*(RUN_JSON|manifest_path|run\.json)"
        r"|(RUN_JSON|manifest_path|run\.json\")\)?\.write_(text|bytes)"
    )
    offenders = [
        f"{m}:{i}"
        for m, p in MODULES.items()
        if m != "trainkit.run"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "save_manifest" in line or writes.search(line)
    ]
    assert offenders == []


def test_only_the_run_folder_walks_the_phase_history():
    """docs/design.md: run.json's phase history is read as typed entries (``RunFolder.entries``,
    ``phase_entries``: ``PhaseEntry``); no other module indexes ``["phases"]`` by hand."""
    import re

    walk = re.compile(r"""\[["']phases["']\]""")
    offenders = [
        f"{m}:{i}"
        for m, p in MODULES.items()
        if m != "trainkit.run"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if walk.search(line) and "plan[" not in line  # budget_plan.json's "phases" is another record
    ]
    assert offenders == []


def test_phase_entries_are_typed_and_keep_every_field(tmp_path):
    from trainkit.run import PhaseEntry, RunFolder, init_run, record_phase

    run = tmp_path / "r"
    init_run(run, "r")
    assert RunFolder(run).entries() == []
    record_phase(run, "02_baseline", 1, status="completed", cost={"wall_s": 2.5}, gate="passed")
    record_phase(run, "03_diagnostics", 1)
    record_phase(run, "02_baseline", 2, error="RuntimeError: x")
    entries = RunFolder(run).entries()
    assert [(e.phase, e.attempt, e.status) for e in entries] == [
        ("02_baseline", 1, "completed"),
        ("03_diagnostics", 1, "running"),
        ("02_baseline", 2, "running"),
    ]
    first = entries[0]
    assert isinstance(first, PhaseEntry) and first.cost == {"wall_s": 2.5} and first.get("gate") == "passed"
    assert (
        first.folder(run) == run / "02_baseline" / "attempt-1"
        and entries[1].folder(run) == run / "03_diagnostics" / "round-1"
    )
    assert [e.attempt for e in RunFolder(run).entries("02_baseline")] == [1, 2]
    assert (
        RunFolder(run).entry("02_baseline", 2).error == "RuntimeError: x"
        and RunFolder(run).entry("04_optimization", 1) is None
    )
