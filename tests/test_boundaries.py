"""Module boundaries of DESIGN.md 2: the trainer never needs ray, optuna or mlflow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
        import tsearch.metrics, tsearch.config, tsearch.tracking.base
        bad = [m for m in sys.modules if m.split(".")[0] in {"ray", "optuna", "mlflow"}]
        assert not bad, bad
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_blocker_really_blocks():
    proc = run("import mlflow")
    assert proc.returncode != 0 and "blocked" in proc.stderr
