"""Streaming feature statistics and the Frechet distance between two Gaussians (FID).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule..."):
    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).
The distance is computed exactly as pytorch-fid's ``calculate_frechet_distance`` (v0.3.0) so our
numbers are comparable with published ones; the statistics are accumulated in float64 batch by
batch (like EDM's ``fid.py``) so no feature matrix is ever held in memory.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from tsearch.errors import DataError
from tsearch.metrics._cache import atomic_write


class FeatureStats:
    """Running mean and covariance of feature vectors, in float64.

    Sums are taken around a shift (the first batch's mean) so that the covariance does not lose
    digits to cancellation when features have a large mean relative to their spread.
    """

    def __init__(self, dim: int | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.dim = dim
        self.count = 0
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None  # sum of (x - shift)
        self._outer: torch.Tensor | None = None  # sum of (x - shift)(x - shift)^T
        self._loaded: tuple[np.ndarray, np.ndarray] | None = None  # exact mu, sigma of a file

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch ``[n, dim]`` (one matmul per batch)."""
        x = torch.as_tensor(features).detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [n, dim], got shape {tuple(x.shape)}")
        if self.dim is None:
            self.dim = int(x.shape[1])
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dim {x.shape[1]}, these statistics have {self.dim}")
        if x.shape[0] == 0:
            return
        self._loaded = None
        if self._shift is None:
            self._shift = x.mean(dim=0)
            self._sum = torch.zeros(self.dim, dtype=torch.float64)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        assert self._sum is not None and self._outer is not None
        x = x - self._shift
        self._sum += x.sum(dim=0)
        self._outer += x.T @ x
        self.count += int(x.shape[0])

    def mean(self) -> np.ndarray:
        """mu [dim] (float64)."""
        if self.count < 1 or self._shift is None or self._sum is None:
            raise ValueError("mean of empty FeatureStats")
        if self._loaded is not None:
            return self._loaded[0].copy()
        return (self._shift + self._sum / self.count).numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance [dim, dim] (float64), like ``np.cov(x, rowvar=False)``."""
        if self.count < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"covariance needs at least 2 feature vectors, have {self.count}")
        if self._loaded is not None:
            return self._loaded[1].copy()
        m = self._sum / self.count
        c = (self._outer - self.count * torch.outer(m, m)) / (self.count - 1)
        return (0.5 * (c + c.T)).numpy()

    def is_finite(self) -> bool:
        """False once a NaN/inf feature was added (e.g. images of a diverged model)."""
        return self._outer is not None and bool(torch.isfinite(self._outer).all())

    def save(self, path: str | Path) -> None:
        """Write mu, sigma, count and the metadata (as JSON) to an .npz, atomically."""
        mu, sigma = self.mean(), self.cov()
        meta = json.dumps(self.metadata, sort_keys=True, default=str)

        def write(handle: Any) -> None:
            np.savez(handle, mu=mu, sigma=sigma, count=np.int64(self.count), metadata=meta)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read an .npz written by :meth:`save`; DataError if it is missing or unreadable."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as data:
                mu = np.asarray(data["mu"], dtype=np.float64)
                sigma = np.asarray(data["sigma"], dtype=np.float64)
                count = int(data["count"])
                metadata = json.loads(str(data["metadata"]))
        except FileNotFoundError:
            raise DataError(f"feature statistics file {str(p)!r} does not exist") from None
        except Exception as exc:  # zip/pickle/json/key errors from a truncated or foreign file
            raise DataError(
                f"feature statistics file {str(p)!r} is unreadable ({type(exc).__name__}); "
                "delete it so it is recomputed"
            ) from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or count < 2:
            raise DataError(
                f"feature statistics file {str(p)!r} has inconsistent shapes; delete it so it is "
                "recomputed"
            )
        return cls.from_moments(mu, sigma, count, metadata)

    @classmethod
    def from_moments(
        cls, mu: np.ndarray, sigma: np.ndarray, count: int, metadata: dict[str, Any] | None = None
    ) -> FeatureStats:
        """Statistics equivalent to ``count`` vectors with this mean and covariance.

        Further ``update`` calls continue exactly as if those vectors had been streamed.
        """
        stats = cls(dim=int(mu.shape[0]), metadata=metadata)
        stats._shift = torch.as_tensor(mu, dtype=torch.float64).clone()
        stats._sum = torch.zeros(stats.dim, dtype=torch.float64)
        stats._outer = torch.as_tensor(sigma, dtype=torch.float64) * (count - 1)
        stats.count = int(count)
        stats._loaded = (np.array(mu, dtype=np.float64), np.array(sigma, dtype=np.float64))
        return stats


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid 0.3.0.

    Same steps as ``pytorch_fid.fid_score.calculate_frechet_distance`` (Dougal Sutherland's stable
    version): ``scipy.linalg.sqrtm`` of sigma1 @ sigma2; if that is not finite (near-singular
    product) retry with ``eps`` added to both diagonals; drop an imaginary part from numerical
    error but raise ValueError if the diagonal's imaginary part exceeds 1e-3.
    """
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")

    diff = mu1 - mu2
    # Product might be almost singular.
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov "
            "estimates",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    # Numerical error might give a slight imaginary component.
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"Imaginary component {m}")
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular-matrix warning.

    Covariances of ReLU features are routinely singular (dead units); the finiteness check above
    is what handles a failed root. pytorch-fid passes ``disp=False``, deprecated since SciPy 1.16;
    the algorithm and the result are the same.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)
