"""tsearch.data: real datasets from real on-disk formats, and the seeded infinite loader."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from tsearch.config import DataConfig
from tsearch.data import InfiniteLoader, dataset_fingerprint, load_images, load_labels
from tsearch.errors import DataError


def to_uint8(x: torch.Tensor, levels: float = 255.0) -> torch.Tensor:
    """Invert the [-1, 1] scaling of integer-valued pixels."""
    return torch.round((x + 1) * (levels / 2)).to(torch.int64)


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_and_split_sizes():
    train = load_images(DataConfig(name="digits", resolution=16), "train")
    test = load_images(DataConfig(name="digits", resolution=16), "test")
    assert train.dtype == torch.float32 and train.shape == (1437, 1, 16, 16)
    assert test.shape == (360, 1, 16, 16)
    assert train.shape[0] + test.shape[0] == 1797
    for x in (train, test):
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.min() == -1.0 and x.max() == 1.0  # the range is used, not squeezed
    # split defaults to cfg.split
    assert torch.equal(load_images(DataConfig(name="digits", split="test")), test)


def test_digits_split_is_a_stratified_partition_with_aligned_labels():
    # At the native 8x8 the pixel values 0..16 survive exactly, so each image can be traced back.
    bunch = load_digits()
    originals = {}
    for i, img in enumerate(bunch.images.astype(np.int64)):
        originals.setdefault(img.tobytes(), []).append(i)
    seen = []
    for split in ("train", "test"):
        cfg = DataConfig(name="digits", resolution=8, split=split)
        pixels = to_uint8(load_images(cfg), 16.0).numpy()[:, 0]
        labels = load_labels(cfg).numpy()
        assert labels.dtype == np.int64 and labels.shape == (pixels.shape[0],)
        for img, label in zip(pixels, labels, strict=True):
            candidates = originals[img.tobytes()]  # KeyError: not an original image
            assert label in bunch.target[candidates]
            seen.append(img.tobytes())
        counts = np.bincount(labels, minlength=10)
        share = counts / np.bincount(bunch.target, minlength=10)
        assert np.all(np.abs(share - (0.8 if split == "train" else 0.2)) < 0.02)  # stratified
    # train + test is the dataset as a multiset: disjoint and complete.
    assert sorted(seen) == sorted(img.tobytes() for img in bunch.images.astype(np.int64))


def test_digits_read_without_sklearn_equal_sklearns_split():
    # The reader parses sklearn's shipped file and splits by stored indices, so that a trial
    # does not import sklearn: it must give exactly what load_digits + train_test_split give.
    from sklearn.model_selection import train_test_split

    from tsearch.data.datasets import _read_digits

    bunch = load_digits()
    train_idx, test_idx = train_test_split(np.arange(len(bunch.target)), test_size=0.2,
                                           random_state=0, stratify=bunch.target)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        images, labels = _read_digits(None, split)
        idx = np.sort(idx)
        assert torch.equal(images, torch.from_numpy(bunch.images[idx].astype(np.uint8)[:, None]))
        assert torch.equal(labels, torch.from_numpy(bunch.target[idx].astype(np.int64)))


def test_digits_reader_does_not_import_sklearn():
    code = ("import sys; from tsearch.data.datasets import _read_digits;"
            " _read_digits(None, 'test');"
            " print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def test_digits_resolution_channels_and_limit():
    big = load_images(DataConfig(name="digits", resolution=32, channels=3))
    assert big.shape == (1437, 3, 32, 32)
    assert torch.equal(big[:, 0], big[:, 1]) and torch.equal(big[:, 0], big[:, 2])
    native_rgb = load_images(DataConfig(name="digits", resolution=8, channels=3))  # no resize
    assert native_rgb.shape == (1437, 3, 8, 8) and native_rgb.is_contiguous()
    small = load_images(DataConfig(name="digits", resolution=4))
    assert small.shape == (1437, 1, 4, 4) and small.min() >= -1 and small.max() <= 1
    # Shrinking is antialiased: it matches PIL's bilinear (triangle-filter) resize.
    native = load_images(DataConfig(name="digits", resolution=8))
    for img, got in zip(native[:20, 0].numpy(), small[:20, 0].numpy(), strict=True):
        ref = Image.fromarray(img, mode="F").resize((4, 4), Image.Resampling.BILINEAR)
        np.testing.assert_allclose(got, np.asarray(ref), atol=1e-5)

    full = DataConfig(name="digits")
    part = DataConfig(name="digits", limit=100)
    assert load_images(part).shape == (100, 1, 16, 16)
    assert torch.equal(load_images(part), load_images(full)[:100])
    assert torch.equal(load_labels(part), load_labels(full)[:100])
    # the order is a shuffle: the first 100 training images cover every class
    assert len(torch.unique(load_labels(part))) == 10


def test_dataset_fingerprint_tracks_recipe_and_content(tmp_path):
    a = DataConfig(name="digits")
    assert dataset_fingerprint(a, "train") == dataset_fingerprint(a, "train")
    others = {
        dataset_fingerprint(a, "test"),
        dataset_fingerprint(DataConfig(name="digits", limit=50), "train"),
        dataset_fingerprint(DataConfig(name="digits", resolution=8), "train"),
        dataset_fingerprint(DataConfig(name="digits", channels=3), "train"),
    }
    assert dataset_fingerprint(a, "train") not in others and len(others) == 4
    # same recipe, different pixels -> different fingerprint; same pixels elsewhere -> same
    for name, value in (("one", 10), ("two", 200), ("three", 10)):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8), value).save(tmp_path / name / "x.png")
    fps = [
        dataset_fingerprint(DataConfig(name="folder", root=str(tmp_path / n), channels=1), "train")
        for n in ("one", "two", "three")
    ]
    assert fps[0] != fps[1] and fps[0] == fps[2]
    assert all(len(f) == 16 and int(f, 16) >= 0 for f in fps)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        load_images(DataConfig(name="digits"), "validation")


# --------------------------------------------------------------------------------------------
# folder


def _write_folder(root):
    """Images with known values whatever the resizing: solid colors, one center-crop probe."""
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "deep").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "cats" / "a_red.png")
    Image.new("L", (8, 8), 0).save(root / "cats" / "b_black.PNG")  # upper-case suffix
    probe = np.zeros((10, 30, 3), dtype=np.uint8)  # left third red, middle green, right blue
    probe[:, :10, 0] = 255
    probe[:, 10:20, 1] = 255
    probe[:, 20:, 2] = 255
    Image.fromarray(probe).save(root / "dogs" / "c_probe.png")
    Image.new("RGBA", (12, 12), (0, 0, 255, 128)).save(root / "dogs" / "deep" / "d_rgba.png")
    wide = np.full((9, 9), 32896, dtype=np.uint16)  # 16-bit gray: 128 * 257
    Image.fromarray(wide).save(root / "dogs" / "e_gray16.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(root / "dogs" / "f_blue.jpg", quality=100)
    Image.new("P", (5, 7), 0).save(root / "dogs" / "g_palette.bmp")
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_folder_loader_rgb(tmp_path):
    _write_folder(tmp_path)
    cfg = DataConfig(name="folder", root=str(tmp_path), resolution=6, limit=None)
    x = load_images(cfg)
    labels = load_labels(cfg)
    assert x.shape == (7, 3, 6, 6) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Every image is uniform after the center crop; match (label, color) as a multiset.
    px = to_uint8(x)
    assert (px.amax(dim=(2, 3)) - px.amin(dim=(2, 3))).max() <= 2
    got = sorted(
        (int(lab), *(int(v) for v in m))
        for lab, m in zip(labels, px.float().mean(dim=(2, 3)).round(), strict=True)
    )
    expected = sorted([
        (0, 255, 0, 0),  # cats/a_red
        (0, 0, 0, 0),  # cats/b_black
        (1, 0, 255, 0),  # dogs/c_probe: the center third is pure green
        (1, 0, 0, 255),  # dogs/deep/d_rgba: alpha dropped, recursive
        (1, 128, 128, 128),  # dogs/e_gray16: 16-bit scaled, not clipped to white
        (1, 0, 0, 255),  # dogs/f_blue.jpg
        (1, 0, 0, 0),  # dogs/g_palette.bmp (palette index 0 is black)
    ])
    assert np.abs(np.array(got) - np.array(expected)).max() <= 2
    # "test" is the same folder (documented: a folder has no split)
    assert torch.equal(load_images(cfg, "test"), x)


def test_folder_loader_gray_and_flat(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (40, 20), 200).save(tmp_path / "gray.webp", lossless=True)
    x = load_images(DataConfig(name="folder", root=str(tmp_path), resolution=8, channels=1))
    assert x.shape == (2, 1, 8, 8)
    values = sorted(int(v) for v in to_uint8(x).flatten().unique())
    assert values == [76, 200]  # PIL's luma of pure red is 76
    assert load_labels(DataConfig(name="folder", root=str(tmp_path))).tolist() == [0, 0]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_images(DataConfig(name="folder", root=str(tmp_path / "missing")))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        load_images(DataConfig(name="folder", root=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8)).save(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png") as info:
        load_images(DataConfig(name="folder", root=str(bad)))
    assert "\n" not in str(info.value)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        truncated / "cut.png"
    )
    data = (truncated / "cut.png").read_bytes()
    (truncated / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_images(DataConfig(name="folder", root=str(truncated)))


# --------------------------------------------------------------------------------------------
# CIFAR-10 and MNIST in their real on-disk formats


def _write_cifar(root, per_batch=4, n_test=5):
    """cifar-10-batches-py as the official tarball has it: latin1 pickles of dicts."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    offset = 0
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(offset, offset + n)  # red of pixel (0,0) identifies the image
        offset += n
        lab = rng.integers(0, 10, n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": lab, "data": data, "filenames": []}, f)
        images[name], labels[name] = data, lab
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    train = np.concatenate([images[n] for n in names[:5]]).reshape(-1, 3, 32, 32)
    train_labels = sum((labels[n] for n in names[:5]), [])
    test = images["test_batch"].reshape(-1, 3, 32, 32)
    return (train, train_labels), (test, labels["test_batch"])


@pytest.fixture
def no_md5(monkeypatch):
    """Test-written files cannot match the official MD5s: check existence only.

    Only the checksum comparison is replaced; torchvision's real CIFAR10 class still finds,
    unpickles and reshapes the files.
    """
    real = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: real(fpath, None))


def test_cifar10_round_trips_pixels(tmp_path, no_md5):
    (train, train_labels), (test, test_labels) = _write_cifar(tmp_path)
    for split, (raw, labels) in (("train", (train, train_labels)), ("test", (test, test_labels))):
        cfg = DataConfig(name="cifar10", root=str(tmp_path), resolution=32, split=split)
        x = load_images(cfg)
        assert x.shape == (raw.shape[0], 3, 32, 32)
        px = to_uint8(x)
        first = raw[:, 0, 0, 0].astype(np.int64)
        pos = {int(v): i for i, v in enumerate(first)}
        order = torch.tensor([pos[int(v)] for v in px[:, 0, 0, 0]])
        assert sorted(order.tolist()) == list(range(raw.shape[0]))  # a permutation
        assert torch.equal(px, torch.from_numpy(raw.astype(np.int64))[order])
        assert load_labels(cfg).tolist() == [labels[i] for i in order.tolist()]
    gray = load_images(DataConfig(name="cifar10", root=str(tmp_path), channels=1, resolution=16))
    assert gray.shape == (20, 1, 16, 16)


def test_cifar10_checksum_mismatch_is_a_data_error(tmp_path):
    _write_cifar(tmp_path)
    with pytest.raises(DataError, match="corrupt or not the official release") as info:
        load_images(DataConfig(name="cifar10", root=str(tmp_path), resolution=32))
    assert "\n" not in str(info.value) and "download=True" not in str(info.value)


def test_cifar10_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DataError) as info:
        load_images(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))
    msg = str(info.value)
    assert "does not exist" in msg
    for part in ("cifar-10-batches-py", "data_batch_1..5", "test_batch", "batches.meta"):
        assert part in msg
    _write_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_images(DataConfig(name="cifar10", root=str(tmp_path)))


def _write_idx(path, array):
    """The idx format: zero bytes, a type code (0x08 = ubyte), ndim, big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root, folder="MNIST", n_train=7, n_test=3):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_round_trips_pixels(tmp_path, name, folder):
    written = _write_mnist(tmp_path, folder)
    for split, (raw, labels) in written.items():
        cfg = DataConfig(name=name, root=str(tmp_path), resolution=28, split=split)
        x = load_images(cfg)
        assert x.shape == (raw.shape[0], 1, 28, 28)
        px = to_uint8(x)[:, 0]
        order = px[:, 0, 0]
        assert sorted(order.tolist()) == list(range(raw.shape[0]))
        assert torch.equal(px, torch.from_numpy(raw.astype(np.int64))[order])
        assert torch.equal(load_labels(cfg), torch.from_numpy(labels.astype(np.int64))[order])
    rgb = load_images(DataConfig(name=name, root=str(tmp_path), channels=3, resolution=16))
    assert rgb.shape == (7, 3, 16, 16)


def test_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError) as info:
        load_images(DataConfig(name="mnist", root=str(tmp_path)))
    msg = str(info.value)
    assert "MNIST/raw" in msg and "train-images-idx3-ubyte" in msg and "t10k-labels" in msg
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\xff" * 64)
    with pytest.raises(DataError, match="could not be parsed") as info:
        load_images(DataConfig(name="mnist", root=str(tmp_path)))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# InfiniteLoader


def _ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].long().tolist()


def test_loader_every_image_once_per_epoch_and_full_batches():
    n, bs = 10, 3
    loader = InfiniteLoader(torch.arange(n, dtype=torch.float32)[:, None], bs, seed=0)
    seen = []
    for _ in range(10):  # 30 items = 3 epochs, batches span epoch boundaries
        batch = loader.next_batch()
        assert batch.shape == (bs, 1)
        seen += _ids(batch)
    epochs = [seen[i : i + n] for i in range(0, 30, n)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled
    assert loader.epoch == 2


def test_loader_batch_larger_than_dataset():
    loader = InfiniteLoader(torch.arange(4.0)[:, None], batch_size=10, seed=3)
    items = _ids(next(loader)) + _ids(next(iter(loader)))
    assert len(items) == 20
    assert all(sorted(items[i : i + 4]) == [0, 1, 2, 3] for i in range(0, 20, 4))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), bs=st.integers(1, 50), seed=st.integers(0, 2**31))
def test_loader_epochs_are_permutations(n, bs, seed):
    loader = InfiniteLoader(torch.arange(n, dtype=torch.float32)[:, None], bs, seed=seed)
    batches = -(-3 * n // bs)
    seen = sum((_ids(loader.next_batch()) for _ in range(batches)), [])
    for e in range(3):
        assert sorted(seen[e * n : (e + 1) * n]) == list(range(n))


def _same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def test_loader_seeding_and_state_round_trip():
    images = torch.randn(13, 1, 2, 2)
    a = InfiniteLoader(images, 4, seed=7)
    b = InfiniteLoader(images, 4, seed=7)
    c = InfiniteLoader(images, 4, seed=8)
    first_a = [a.next_batch() for _ in range(5)]
    assert _same(first_a, [b.next_batch() for _ in range(5)])
    assert not _same(first_a, [c.next_batch() for _ in range(5)])
    # Save mid-epoch, through the checkpoint format (weights_only load), into a loader that
    # was built with another seed and has drawn other batches.
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = InfiniteLoader(images, 4, seed=99)
    resumed.next_batch()
    resumed.load_state_dict(state)
    expected = [a.next_batch() for _ in range(8)]  # crosses several epoch boundaries
    got = [resumed.next_batch() for _ in range(8)]
    assert _same(expected, got)
    assert resumed.epoch == a.epoch
    with pytest.raises(ValueError, match="images"):
        InfiniteLoader(images[:5], 4, seed=7).load_state_dict(state)


def test_loader_device_and_copy_semantics():
    images = torch.arange(6.0)[:, None]
    loader = InfiniteLoader(images, 6, seed=0, device="cpu")
    batch = loader.next_batch()
    batch.zero_()  # a batch is a gathered copy: the dataset is untouched
    assert torch.equal(images, torch.arange(6.0)[:, None])
    assert loader.images.device.type == "cpu"
    with pytest.raises(ValueError):
        InfiniteLoader(images, 0, seed=0)
