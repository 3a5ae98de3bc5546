"""The package map (README "Layout"): who may import whom, read statically from every import
statement, function-level ones included — so a lazy import on a rare path is caught too.

    routing        the contract: imports no other package of ours
    monitoring     metrics, health: routing
    edge_agent     what a device ships: routing, monitoring
    cloud_worker   the backbone engine: routing, monitoring
    broker         routing, monitoring
    lab            host tools (training, evaluation, reference, data): the serving packages
    loadgen        the load generator: edge_agent, lab, routing, monitoring
    spa            the CLI, demo and local stack: anything

And the house rule of one concept per file: no production file (the packages above, benchmarks/,
scripts/) over MAX_LINES unless LONG_FILES names it with its reason; a test file over it says
why in its module docstring (a line starting "Longer than").
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"routing", "monitoring", "edge_agent", "cloud_worker", "broker", "lab", "loadgen", "spa"}
MAY_IMPORT = {
    "routing": set(),
    "monitoring": {"routing"},
    "edge_agent": {"routing", "monitoring"},
    "cloud_worker": {"routing", "monitoring"},
    "broker": {"routing", "monitoring"},
    "lab": {"edge_agent", "cloud_worker", "routing", "monitoring"},
    "loadgen": {"edge_agent", "lab", "routing", "monitoring"},
    "spa": OURS - {"spa"},
}


MAX_LINES = 350
LONG_FILES: dict[str, str] = {}  # "package/file.py": why it must stay longer (none today)


def imports_of(path: Path) -> set[str]:
    """The top-level packages of ours that `path` imports anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


def test_every_package_is_mapped():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert OURS == on_disk & OURS and on_disk - OURS <= {"tests", "benchmarks", "scripts"}


def test_no_import_outside_the_map():
    wrong = []
    for pkg, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for dep in imports_of(path) - allowed - {pkg}:
                wrong.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_map_has_no_cycle():
    seen: dict[str, int] = {}

    def visit(p: str, stack: tuple[str, ...]) -> None:
        assert p not in stack, f"import cycle {' -> '.join(stack + (p,))}"
        if seen.get(p):
            return
        for q in MAY_IMPORT[p]:
            visit(q, stack + (p,))
        seen[p] = 1

    for p in MAY_IMPORT:
        visit(p, ())


def test_command_line_imports_no_torch():
    """`spa broker`, `spa health` … start in a second, not after torch's import (30–70 s on a
    loaded 2-core machine): building the parser, every subcommand's flags included, loads none
    of torch or transformers."""
    import subprocess
    import sys

    code = ("import sys, spa.cli; spa.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_production_files_have_one_concept_each():
    """Over MAX_LINES a file holds more than one concept: split it by concept (names from the
    domain; keep the old module's names importable from it) or give its reason in LONG_FILES."""
    roots = sorted(OURS) + ["benchmarks", "scripts"]
    long = [f"{p.relative_to(ROOT)}: {n} lines" for r in roots for p in sorted((ROOT / r).rglob("*.py"))
            if (n := _lines(p)) > MAX_LINES and str(p.relative_to(ROOT)) not in LONG_FILES]
    assert not long, f"over {MAX_LINES} lines without a reason in LONG_FILES:\n" + "\n".join(long)
    stale = [f for f in LONG_FILES if not (ROOT / f).exists() or _lines(ROOT / f) <= MAX_LINES]
    assert not stale, f"LONG_FILES entries no longer needed: {stale}"


def test_long_test_files_say_why():
    """A test module over MAX_LINES keeps its reason (e.g. one module-scoped stack its tests
    share) in its docstring, on a line starting "Longer than"."""
    silent = []
    for p in sorted((ROOT / "tests").glob("*.py")):
        if _lines(p) > MAX_LINES:
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            if not any(line.strip().startswith("Longer than") for line in doc.splitlines()):
                silent.append(f"{p.name}: {_lines(p)} lines")
    assert not silent, "test files over the limit without a reason:\n" + "\n".join(silent)
