"""An endless, seeded, checkpointable stream of full training batches from an in-memory tensor.

The datasets here fit in memory, so a DataLoader with workers would only add overhead and hide
its RNG. This loader owns a ``torch.Generator``: the data order depends on its seed alone (two
trials with the same seed see the same batches whatever their timestep sampler), and its whole
state round-trips through ``state_dict`` so a resumed run continues with the same batches.
"""

from __future__ import annotations

from typing import Any

import torch


class InfiniteLoader:
    """Batches drawn without replacement within an epoch, reshuffled every epoch.

    Batches may span an epoch boundary, so every batch has exactly ``batch_size`` images (and a
    batch larger than the dataset spans several epochs).
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        seed: int,
        device: torch.device | str | None = None,
    ) -> None:
        if images.ndim < 1 or images.shape[0] == 0:
            raise ValueError("InfiniteLoader needs at least one image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images if device is None else images.to(device)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_images = int(images.shape[0])
        self._generator = torch.Generator().manual_seed(self.seed)
        self._perm = self._new_permutation()
        self._pos = 0
        self.epoch = 0  # epochs started before the current one

    def _new_permutation(self) -> torch.Tensor:
        return torch.randperm(self.num_images, generator=self._generator)

    def next_batch(self) -> torch.Tensor:
        """The next ``[batch_size, ...]`` batch (a new tensor; the dataset is not modified)."""
        parts = []
        need = self.batch_size
        while need > 0:  # at most a few iterations: one per epoch boundary crossed
            if self._pos == self.num_images:
                self._perm = self._new_permutation()
                self._pos = 0
                self.epoch += 1
            take = min(need, self.num_images - self._pos)
            parts.append(self._perm[self._pos : self._pos + take])
            self._pos += take
            need -= take
        index = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.images[index.to(self.images.device)]

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything that determines the following batches (safe for ``weights_only`` loads)."""
        return {
            "generator": self._generator.get_state(),
            "perm": self._perm.clone(),
            "pos": self._pos,
            "epoch": self.epoch,
            "num_images": self.num_images,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved loader was; refuses a different dataset size."""
        if int(state["num_images"]) != self.num_images:
            raise ValueError(
                f"loader state is for {state['num_images']} images but this dataset has "
                f"{self.num_images} (different data.limit or dataset?)"
            )
        perm = torch.as_tensor(state["perm"], dtype=torch.int64).cpu()
        if perm.shape != (self.num_images,):
            raise ValueError("loader state has a permutation of the wrong length")
        self._generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())
        self._perm = perm.clone()
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
