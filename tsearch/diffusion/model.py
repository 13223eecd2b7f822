"""The denoising network, built from config with diffusers (no hand-written UNet)."""

from __future__ import annotations

import torch
from torch import nn

from tsearch.config import ModelConfig


class Denoiser(nn.Module):
    """Wraps a diffusers network as ``net(x_t, t) -> prediction`` with the input's shape.

    Hides diffusers' output dataclasses and DiT's class labels (one dummy class: unconditional).
    """

    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.net = net
        self.arch = arch

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.arch == "dit":
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            return self.net(x, timestep=t, class_labels=labels, return_dict=False)[0]
        return self.net(x, t, return_dict=False)[0]


def build_model(
    cfg: ModelConfig, channels: int, resolution: int, num_timesteps: int = 1000
) -> Denoiser:
    """A diffusers ``UNet2DModel`` or ``DiTTransformer2DModel`` sized by ``cfg``.

    Args:
        cfg: the model section of the config.
        channels: image channels (input = output: the network predicts eps, v or x0).
        resolution: square image side.
        num_timesteps: T, recorded in the UNet's config for reference.
    """
    if cfg.arch == "unet":
        from diffusers import UNet2DModel

        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
        net = UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(cfg.channels),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            dropout=cfg.dropout,
            attention_head_dim=8,
            num_train_timesteps=num_timesteps,
        )
        return Denoiser(net, "unet")
    from diffusers import DiTTransformer2DModel

    net = DiTTransformer2DModel(
        num_attention_heads=cfg.dit_heads,
        attention_head_dim=cfg.dit_head_dim,
        in_channels=channels,
        out_channels=channels,
        num_layers=cfg.dit_layers,
        dropout=cfg.dropout,
        sample_size=resolution,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=num_timesteps,
    )
    return Denoiser(net, "dit")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
