"""tsearch: search for the best diffusion timestep sampler."""
