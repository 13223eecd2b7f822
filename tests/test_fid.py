"""tsearch.metrics.fid: closed forms, pytorch-fid equality, streaming statistics, the cache lock."""

from __future__ import annotations

import math
import multiprocessing
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from tsearch.errors import DataError
from tsearch.metrics import FeatureStats, compute_fid, frechet_distance
from tsearch.metrics._cache import atomic_write, load_or_build
from tsearch.metrics.extractors import FeatureExtractor


def _gaussian(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ a + shift


def _pytorch_fid(mu1, s1, mu2, s2) -> float:
    with warnings.catch_warnings():  # pytorch-fid passes scipy's deprecated disp=False
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(mu1, s1, mu2, s2))


def test_identical_statistics_give_zero():
    x = _gaussian(np.random.default_rng(0), 500, 32)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    # scalars work like pytorch-fid's (atleast_1d / atleast_2d)
    assert frechet_distance(0.0, 4.0, 1.0, 1.0) == pytest.approx(1.0 + 4 + 1 - 2 * 2)


@pytest.mark.parametrize(("n1", "n2", "d"), [(400, 300, 16), (20, 30, 64)])  # 2nd: rank-deficient
def test_equals_pytorch_fid(n1, n2, d):
    rng = np.random.default_rng(d)
    x1, x2 = _gaussian(rng, n1, d), _gaussian(rng, n2, d, shift=0.3)
    args = (x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    ours = frechet_distance(*args)
    assert isinstance(ours, float) and ours > 0
    assert ours == pytest.approx(_pytorch_fid(*args), rel=1e-12, abs=1e-12)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="lengths"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streaming_equals_numpy():
    rng = np.random.default_rng(2)
    # A large mean next to a small spread: naive sum-of-squares would lose most digits.
    x = _gaussian(rng, 1000, 24, shift=1e4) * 1.0
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 7, 300, 301, 999]):  # uneven, incl. a single row
        stats.update(torch.from_numpy(chunk).float() if len(chunk) == 1 else chunk)
    exact = FeatureStats()
    exact.update(x)
    assert stats.count == exact.count == 1000
    np.testing.assert_allclose(exact.mean(), x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(exact.cov(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    # the float32 single row costs precision only in that row's contribution
    np.testing.assert_allclose(stats.cov(), np.cov(x, rowvar=False), rtol=1e-3, atol=1e-3)
    assert stats.mean().dtype == np.float64 and stats.cov().shape == (24, 24)
    np.testing.assert_array_equal(stats.cov(), stats.cov().T)


def test_feature_stats_errors():
    stats = FeatureStats()
    with pytest.raises(ValueError):
        stats.mean()
    stats.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.cov()
    with pytest.raises(ValueError, match="dim"):
        stats.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\[n, dim\]"):
        stats.update(np.ones(3))


def test_feature_stats_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x1, x2 = _gaussian(rng, 50, 6), _gaussian(rng, 70, 6, shift=2.0)
    stats = FeatureStats(metadata={"dataset": "digits", "n": 50})
    stats.update(x1)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mean(), stats.mean())
    np.testing.assert_array_equal(loaded.cov(), stats.cov())
    assert loaded.count == 50 and loaded.metadata == {"dataset": "digits", "n": 50}
    with np.load(path) as raw:
        assert set(raw.files) == {"mu", "sigma", "count", "metadata"}
    # a loaded file keeps streaming as if the original vectors were still there
    loaded.update(x2)
    both = np.concatenate([x1, x2])
    np.testing.assert_allclose(loaded.mean(), both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(loaded.cov(), np.cov(both, rowvar=False), rtol=1e-10, atol=1e-12)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_feature_stats_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FeatureStats.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match="unreadable"):
        FeatureStats.load(bad)
    np.savez(tmp_path / "other.npz", something=np.ones(3))
    with pytest.raises(DataError, match="unreadable"):
        FeatureStats.load(tmp_path / "other.npz")


class PixelMoments(FeatureExtractor):
    """A fixed, real extractor: per-channel mean, std and quadrant means of the pixels."""

    name = "pixel-moments"
    dim = 6
    in_channels = 1
    fingerprint = "pixel-moments-v1"
    batch_size = 7  # several internal batches per call

    def __init__(self) -> None:
        super().__init__(torch.nn.Identity())

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.cat([x.mean(dim=(1, 2, 3))[:, None], x.std(dim=(1, 2, 3))[:, None], q], 1)


def test_compute_fid_streams_and_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    fake = (torch.rand(200, 1, 8, 8, generator=g) * 2 - 1) * 0.5
    ext = PixelMoments()
    ref = FeatureStats()
    ref.update(ext(real))
    assert ext(real).shape == (300, 6)
    assert compute_fid(real, ext, ref, batch_size=64) == pytest.approx(0.0, abs=1e-6)
    fid = compute_fid(fake, ext, ref, batch_size=64)
    f_fake, f_real = ext(fake).double().numpy(), ext(real).double().numpy()
    direct = frechet_distance(
        f_fake.mean(0), np.cov(f_fake, rowvar=False), f_real.mean(0), np.cov(f_real, rowvar=False)
    )
    assert fid == pytest.approx(direct, rel=1e-6) and fid > 0.01
    assert compute_fid(iter(fake.split(33)), ext, ref) == pytest.approx(fid, rel=1e-9)
    nan_images = fake.clone()
    nan_images[5] = float("nan")
    assert math.isnan(compute_fid(nan_images, ext, ref))


# --------------------------------------------------------------------------------------------
# The build-once cache used by extractor weights and reference statistics


def _race(path: str, log: str, out: str) -> None:
    """One 'trial': load or build a slow entry; append to ``log`` when it really builds."""

    def load(p: Path) -> str | None:
        return p.read_text() or None

    def build() -> str:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        value = f"value-{multiprocessing.current_process().pid}"
        atomic_write(Path(path), lambda h: h.write(value.encode()))
        return value

    value, _ = load_or_build(Path(path), load, build)
    Path(out).write_text(value)


def test_concurrent_builders_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the workers touch files only, never torch
    path, log = tmp_path / "cache" / "entry.txt", tmp_path / "builds.log"
    procs = [
        ctx.Process(target=_race, args=(str(path), str(log), str(tmp_path / f"out{i}")))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    values = {(tmp_path / f"out{i}").read_text() for i in range(3)}
    assert values == {path.read_text()}


def test_load_or_build_rebuilds_unusable_entries(tmp_path):
    path = tmp_path / "entry.txt"
    path.write_text("corrupt")
    calls = []

    def build() -> str:
        calls.append(1)
        atomic_write(path, lambda h: h.write(b"good"))
        return "good"

    load = lambda p: p.read_text() if p.read_text() == "good" else None  # noqa: E731
    assert load_or_build(path, load, build) == ("good", True)
    assert load_or_build(path, load, build) == ("good", False)
    assert len(calls) == 1
