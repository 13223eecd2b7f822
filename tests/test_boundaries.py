"""Module boundaries of DESIGN.md 2, read from the source: every import, at any depth.

Each "never" arrow of DESIGN.md is a rule here; a lazy import inside a function counts as much
as one at the top. The trainer must also import with ray, optuna and mlflow absent.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tsearch"

# Modules that import nothing of tsearch: every layer may use them.
LEAVES = {"tsearch.errors", "tsearch.labels", "tsearch.names", "tsearch.seeding"}

# (importer prefix, imported prefix): DESIGN.md's "never" arrows.
NEVER = [
    ("tsearch.train", "tsearch.tracking"),
    ("tsearch.train", "tsearch.search"),
    ("tsearch.timesteps", "tsearch.train"),
    ("tsearch.diffusion", "tsearch.timesteps"),
    ("tsearch.tracking", "tsearch.search"),
    ("tsearch.tracker", "tsearch.tracking"),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every tsearch module ``path`` imports (absolute or relative, top level or in a function)."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import mod`
    top = root.name
    return {m for m in found if m == top or m.startswith(top + ".")}


def graph(root: Path) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(edges: dict[str, set[str]], top: str = "tsearch") -> list[str]:
    """Each module that breaks a rule, once per rule: 'importer -> imported (rule)'."""
    bad: dict[tuple[str, str], str] = {}
    leaves = {m.replace("tsearch", top, 1) for m in LEAVES}
    for src, targets in edges.items():
        if src == top:  # the package's own __init__ (it registers the plugins)
            continue
        for dst in sorted(targets - {top}):
            for a, b in NEVER:
                a, b = a.replace("tsearch", top, 1), b.replace("tsearch", top, 1)
                if _under(src, a) and _under(dst, b):
                    bad.setdefault((src, b), f"{src} -> {dst} (never {a} -> {b})")
            if src == f"{top}.config" and not any(_under(dst, leaf) for leaf in leaves):
                bad.setdefault((src, "config"),
                               f"{src} -> {dst} (config imports only {sorted(leaves)})")
            if src in leaves:
                bad.setdefault((src, "leaf"), f"{src} -> {dst} (a leaf imports nothing)")
    return sorted(bad.values())


def test_no_never_arrow_in_the_source():
    assert violations(graph(PACKAGE)) == []


@pytest.mark.parametrize("importer,line", [
    ("train/loop.py", "from pkg.tracking import thing"),
    ("train/loop.py", "def f():\n    from pkg.search.tuner import run\n"),
    ("train/loop.py", "from ..search import tuner"),
    ("timesteps/base.py", "import pkg.train.loop"),
    ("diffusion/schedule.py", "from pkg.timesteps import base"),
    ("config.py", "from pkg.timesteps import registry"),
    ("tracking/queries.py", "from pkg import search"),
    ("names.py", "from pkg.config import Config"),
])
def test_an_added_arrow_is_caught(tmp_path, importer, line):
    """The checker itself: a tree with one forbidden import added is reported."""
    root = tmp_path / "pkg"
    for rel in ["__init__.py", "config.py", "errors.py", "names.py", "seeding.py",
                "train/__init__.py", "train/loop.py", "timesteps/__init__.py",
                "timesteps/base.py", "diffusion/__init__.py", "diffusion/schedule.py",
                "tracking/__init__.py", "tracking/queries.py", "search/__init__.py",
                "search/tuner.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("from pkg.errors import E\n" if rel == "config.py" else "")
    assert violations(graph(root), top="pkg") == []
    (root / importer).write_text(line + "\n")
    found = violations(graph(root), top="pkg")
    assert len(found) == 1, found


BLOCKER = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"ray", "optuna", "mlflow"}:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_train_imports_without_ray_optuna_mlflow():
    proc = run("""
        import tsearch.train, tsearch.timesteps, tsearch.diffusion, tsearch.data
        import tsearch.metrics, tsearch.config, tsearch.tracker, tsearch.names
        bad = [m for m in sys.modules if m.split(".")[0] in {"ray", "optuna", "mlflow"}]
        assert not bad, bad
        assert not [m for m in sys.modules if m.startswith("tsearch.tracking")]
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_blocker_really_blocks():
    proc = run("import mlflow")
    assert proc.returncode != 0 and "blocked" in proc.stderr
