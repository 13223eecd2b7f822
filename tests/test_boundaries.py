"""Module boundaries of docs/design.md section 2, read from the source: every import, at any depth.

Each "never" arrow of the design is a rule here; a lazy import inside a function counts as much
as one at the top. The trainer must also import with ray, optuna and mlflow absent, and
``import tsearch.config`` must load neither torch nor a plugin (checked in a subprocess).
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
LEAVES = {"tsearch.errors", "tsearch.labels", "tsearch.log", "tsearch.names", "tsearch.seeding"}
# Modules (and packages) that import only the leaves (and, a package, itself).
ON_LEAVES = {"tsearch.config", "tsearch.records", "tsearch.tracker"}

# (importer prefix, imported prefix): docs/design.md's "never" arrows.
NEVER = [
    ("tsearch.train", "tsearch.tracking"),
    ("tsearch.train", "tsearch.search"),
    ("tsearch.timesteps", "tsearch.train"),
    ("tsearch.diffusion", "tsearch.timesteps"),
    ("tsearch.tracking", "tsearch.search"),
    ("tsearch.report", "tsearch.tracking"),
]
TIMESTEPS = "tsearch.timesteps"
REGISTRY = "tsearch.timesteps.registry"
# Not plugins, though the registry imports them: the contracts and private helpers.
SHARED = {"tsearch.timesteps.base"}


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


def plugins(edges: dict[str, set[str]], top: str = "tsearch") -> set[str]:
    """The timestep plugins: the modules the registry imports, but the contracts and private
    helpers (``_name``), which any plugin may use."""
    ts = TIMESTEPS.replace("tsearch", top, 1)
    shared = {m.replace("tsearch", top, 1) for m in SHARED}
    return {m for m in edges.get(REGISTRY.replace("tsearch", top, 1), set())
            if m in edges and _under(m, ts) and m != ts and m not in shared
            and not m.rpartition(".")[2].startswith("_")}


def violations(edges: dict[str, set[str]], top: str = "tsearch") -> list[str]:
    """Each module that breaks a rule, once per rule: 'importer -> imported (rule)'."""
    bad: dict[tuple[str, str], str] = {}
    leaves = {m.replace("tsearch", top, 1) for m in LEAVES}
    on_leaves = {m.replace("tsearch", top, 1) for m in ON_LEAVES}
    plugin = plugins(edges, top)
    for src, targets in edges.items():
        if src == top:  # the package's own __init__
            continue
        for dst in sorted(targets - {top}):
            for a, b in NEVER:
                a, b = a.replace("tsearch", top, 1), b.replace("tsearch", top, 1)
                if _under(src, a) and _under(dst, b):
                    bad.setdefault((src, b), f"{src} -> {dst} (never {a} -> {b})")
            home = next((m for m in on_leaves if _under(src, m)), None)
            if home and not _under(dst, home) and not any(_under(dst, x) for x in leaves):
                bad.setdefault((src, "on-leaves"),
                               f"{src} -> {dst} ({home} imports only {sorted(leaves)})")
            if src in leaves:
                bad.setdefault((src, "leaf"), f"{src} -> {dst} (a leaf imports nothing)")
            if src in plugin and dst in plugin and dst != src:
                bad.setdefault((src, "plugin"),
                               f"{src} -> {dst} (a timesteps plugin imports no other plugin)")
    return sorted(bad.values())


def test_no_never_arrow_in_the_source():
    assert violations(graph(PACKAGE)) == []


# A small tree with every kind of module the rules name, and what each imports when all is well.
TREE = {
    "__init__.py": "", "errors.py": "", "names.py": "", "seeding.py": "", "labels.py": "",
    "records.py": "from pkg import names\n", "tracker.py": "from pkg.names import TAG\n",
    "config/__init__.py": "from pkg.config.schema import Config\n",
    "config/schema.py": "from pkg.errors import E\nfrom pkg import names\n",
    "train/__init__.py": "", "train/loop.py": "from pkg.timesteps import registry\n",
    "timesteps/__init__.py": "", "timesteps/base.py": "from pkg.config import Config\n",
    "timesteps/_cells.py": "from pkg.timesteps.base import Params\n",
    "timesteps/lognormal.py": "from pkg.timesteps._cells import cell\n",
    "timesteps/laplace.py": "from pkg.timesteps.base import Params\n",
    "timesteps/registry.py": "from pkg.timesteps import base, lognormal, laplace, _cells\n",
    "diffusion/__init__.py": "", "diffusion/schedule.py": "",
    "tracking/__init__.py": "", "tracking/queries.py": "from pkg.records import TrialRecord\n",
    "search/__init__.py": "", "search/tuner.py": "from pkg.tracking import queries\n",
    "report/__init__.py": "", "report/analysis.py": "from pkg.records import TrialRecord\n",
}


@pytest.mark.parametrize("importer,line", [
    ("train/loop.py", "from pkg.tracking import thing"),
    ("train/loop.py", "def f():\n    from pkg.search.tuner import run\n"),
    ("train/loop.py", "from ..search import tuner"),
    ("timesteps/base.py", "import pkg.train.loop"),
    ("diffusion/schedule.py", "from pkg.timesteps import base"),
    ("config/schema.py", "from pkg.timesteps import registry"),
    ("config/schema.py", "def f():\n    from ..timesteps.laplace import Params\n"),
    ("config/__init__.py", "import torch\nfrom pkg.diffusion import schedule"),
    ("records.py", "from pkg.tracking.queries import x"),
    ("tracking/queries.py", "from pkg import search"),
    ("names.py", "from pkg.config import Config"),
    ("report/analysis.py", "from pkg.tracking.queries import TrialRecord"),
    ("report/analysis.py", "def f():\n    from pkg import tracking\n"),
    ("timesteps/laplace.py", "from pkg.timesteps.lognormal import cell"),
    ("timesteps/lognormal.py", "from .laplace import LaplaceSampler"),
])
def test_an_added_arrow_is_caught(tmp_path, importer, line):
    """The checker itself: a tree with one forbidden import added is reported, once."""
    root = tmp_path / "pkg"
    for rel, text in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert violations(graph(root), top="pkg") == []
    assert plugins(graph(root), top="pkg") == {"pkg.timesteps.lognormal", "pkg.timesteps.laplace"}
    path = root / importer
    path.write_text(path.read_text() + line + "\n")
    found = violations(graph(root), top="pkg")
    assert len(found) == 1, found


def test_the_source_has_plugins_to_check():
    """The plugin rule reads the registry: it must find the samplers (else it checks nothing)."""
    found = plugins(graph(PACKAGE))
    assert {"tsearch.timesteps.uniform", "tsearch.timesteps.laplace",
            "tsearch.timesteps.adaptive"} <= found
    assert "tsearch.timesteps.base" not in found


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


def test_config_imports_no_torch_and_no_plugin():
    """The leaf in fact, not only in the source: importing config loads nothing above it."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import tsearch.config
        leaves = {"tsearch", "tsearch.errors", "tsearch.labels", "tsearch.names",
                  "tsearch.seeding"}
        ours = [m for m in sys.modules if m.split(".")[0] == "tsearch"
                and m not in leaves and not m.startswith("tsearch.config")]
        heavy = [m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "ray", "mlflow"}]
        print(sorted(ours), sorted(heavy))
    """)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []"
