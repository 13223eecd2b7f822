"""Noise schedules, the denoising network, losses and image generation."""

from tsearch.diffusion.generate import generate_images
from tsearch.diffusion.model import Denoiser, build_model
from tsearch.diffusion.schedule import NoiseSchedule

__all__ = ["Denoiser", "NoiseSchedule", "build_model", "generate_images"]
