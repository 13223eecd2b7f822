"""tsearch: search for the best diffusion timestep sampler."""

# The plugin registries type their config sections' params (tsearch.config cannot import them);
# importing them here means any `import tsearch.<module>` validates configs fully.
from tsearch.timesteps import registry as _registry  # noqa: F401
