"""CLI commands beyond train: timesteps list/show and fid-ref."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import run_cli
from conftest import ROOT
from PIL import Image


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsearch.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_timesteps_show_prints_and_plots(tmp_path):
    out = tmp_path / "speed.png"
    proc = cli("timesteps", "show", "speed", "--set", "k=5", "--set", "dual=false",
               "--weighting", "speed", "--wset", "lam=0.8", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # k/(T + tau(k-1)) below tau: the last quarter only holds t >= 750 -> 250/3800.
    assert "mass by quarter of t: " in proc.stdout
    last_quarter = float(proc.stdout.split("mass by quarter of t: ")[1].split()[3])
    assert abs(last_quarter - 250 / 3800) < 1e-3
    assert "weighting speed: min 0.2" in proc.stdout  # lam = 0.8 -> [0.2, 0.8], 1 above tau
    assert Image.open(out).size[0] > 300


def test_timesteps_show_curriculum_shows_progress(tmp_path):
    proc = cli("timesteps", "show", "curriculum", "-o", str(tmp_path / "c.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "progress 0 " in proc.stdout and "progress 1 " in proc.stdout


def test_timesteps_show_bad_param_one_line(tmp_path):
    proc = cli("timesteps", "show", "speed", "--set", "kk=5", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "timesteps.sampler.params.kk" in proc.stderr and "speed accepts" in proc.stderr


def test_timesteps_list_names_every_plugin(tmp_path):
    proc = cli("timesteps", "list", cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("uniform", "lsm", "gradvar", "lognormal", "speed", "curriculum", "adaptive",
                 "none", "vlb", "p2", "min_snr"):
        assert f"  {name} " in proc.stdout


def test_fid_ref_writes_cache(tmp_path):
    proc = cli("fid-ref", str(ROOT / "experiments" / "smoke.yaml"), "--set",
               f"eval.cache_dir={tmp_path}/cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().split("-> ")[1])
    assert path.is_file() and path.suffix == ".npz"
    assert "500 images" in proc.stdout  # smoke.yaml: eval.ref_images = 500


@pytest.mark.parametrize("schedule", ["linear", "flow"])
def test_timesteps_show_renders_every_sampler_and_weighting_on_both_processes(
        capfd, tmp_path, monkeypatch, schedule):
    from tsearch.timesteps import SAMPLERS, WEIGHTINGS

    monkeypatch.chdir(tmp_path)
    weightings = sorted(WEIGHTINGS)
    for i, name in enumerate(sorted(SAMPLERS)):
        weighting = weightings[i % len(weightings)]
        out = tmp_path / f"{name}.png"
        result = run_cli(capfd, "timesteps", "show", name, "--weighting", weighting,
                         "--schedule", schedule, "-o", str(out))
        assert result.code == 0, result.err
        assert f"on {schedule} (T=1000)" in result.out and f"weighting {weighting}:" in result.out
        assert Image.open(out).size[0] > 300
        if name == "logit_normal":  # SD3's default centres on SNR = 1: t = 1/2 under flow
            median = float(result.out.split("median t ")[1].split(",")[0])
            assert (495 <= median <= 505) == (schedule == "flow"), median
    for weighting in weightings[len(SAMPLERS):]:  # any weighting the loop above did not pair
        result = run_cli(capfd, "timesteps", "show", "uniform", "--weighting", weighting,
                         "--schedule", schedule, "-o", str(tmp_path / "w.png"))
        assert result.code == 0, result.err
