"""Conformance suite every registered TimestepSampler joins (Optuna's pytest_samplers idea).

Each test is parametrized over every name in ``SAMPLERS``, both processes (vp on the linear
schedule, flow matching) and two parameter variants:
``default`` (``Params()`` on linear T = 1000) and ``exercised`` (small T and small histories or
probe intervals, so that warm-ups end and state-changing paths run within a few steps). A sampler
without an ``EXERCISED`` entry runs the default variant only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch

from tsearch.diffusion.schedule import NoiseSchedule
from tsearch.timesteps import (
    SAMPLERS,
    Draw,
    ProbeResult,
    ProbeSpec,
    StepContext,
    TimestepSampler,
)

NAMES = sorted(SAMPLERS)

# name -> (num_timesteps, Params overrides) that make the sampler change state quickly.
EXERCISED: dict[str, tuple[int, dict]] = {
    "uniform": (50, {}),
    "lsm": (50, {"history": 2}),
    "gradvar": (50, {"bins": 5, "probe_every": 1, "rows_per_probe": 4}),
    "speed": (50, {"tau": 30, "k": 3.0}),
    "curriculum": (50, {"ramp_start": 0.1, "ramp_end": 0.6}),
    "lognormal": (50, {}),
    "logit_normal": (50, {"m": -0.5, "s": 1.5}),
    "mode": (50, {"s": -0.8}),
    "laplace": (50, {"mu": 1.0, "scale": 2.0, "shape": "cauchy"}),
    "adaptive": (50, {"update_every": 1, "scan_stride": 5, "hidden": 16, "queue_size": 4,
                      "baseline": True}),
}

Factory = Callable[..., TimestepSampler]


@pytest.fixture(params=["vp", "flow"])
def process(request) -> str:
    return request.param


@pytest.fixture(params=["default", "exercised"])
def make(request, name: str, process: str) -> Factory:
    """A builder ``make(seed)`` of the sampler under test, constructed as the registry does,
    on the linear schedule (vp) or flow matching's noise levels (flow)."""
    cls = SAMPLERS[name]
    table = "flow" if process == "flow" else "linear"
    if request.param == "default":
        schedule, params = NoiseSchedule.create(table), cls.Params()
    else:
        if name not in EXERCISED:
            pytest.skip(f"no exercised params for {name!r}")
        num_timesteps, overrides = EXERCISED[name]
        schedule = NoiseSchedule.create(table, num_timesteps=num_timesteps)
        params = cls.Params(**overrides)

    def build(seed: int = 0) -> TimestepSampler:
        return cls(schedule, params, seed)

    return build


def check_draw(draw: Draw, n: int, T: int) -> None:
    assert draw.t.dtype == torch.int64 and draw.t.shape == (n,)
    assert int(draw.t.min()) >= 0 and int(draw.t.max()) < T
    w = draw.importance_weight
    assert w.shape == (n,) and w.is_floating_point()
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())


def check_probs(sampler: TimestepSampler) -> torch.Tensor:
    p = sampler.probs()
    assert p.shape == (sampler.num_timesteps,) and p.dtype == torch.float64
    assert bool(torch.isfinite(p).all()) and bool((p >= 0).all())
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    return p


def synthetic_losses(t: torch.Tensor, T: int, gen: torch.Generator, bad: bool) -> torch.Tensor:
    """Losses that fall with t (like eps-MSE) plus noise; NaN/inf/-inf planted if ``bad``."""
    losses = (2.0 - t.float() / T) * (0.5 + torch.rand(len(t), generator=gen))
    if bad:
        losses[0] = float("nan")
        losses[1 % len(t)] = float("inf")
        losses[2 % len(t)] = float("-inf")
    return losses


def synthetic_probe(spec: ProbeSpec, gen: torch.Generator, bad: bool) -> ProbeResult:
    """A ProbeResult of the requested kind and shape, as ``ProbeRunner.after`` returns it."""
    m = len(spec.t)
    before = torch.rand(m, generator=gen)
    after = grad = None
    if spec.kind == "delta":
        after = before - 0.1 * torch.rand(m, generator=gen)
        forwards = 2 * m
    else:
        grad = (1.0 + spec.t.float()) * torch.rand(m, generator=gen)
        forwards = 4 * m
    if bad:
        for x in (before, after, grad):
            if x is not None:
                x[0] = float("nan")
                x[-1] = float("inf")
    return ProbeResult(spec=spec, before=before, after=after, grad_sq_norm=grad,
                       forwards=forwards)


def drive(sampler: TimestepSampler, steps: int, n: int = 32, seed: int = 0, start: int = 0,
          total: int | None = None, bad: bool = False) -> list[Draw]:
    """Call the sampler exactly as ``train/loop.py`` does for ``steps`` optimizer steps.

    sample -> probe_request -> observe(unweighted losses) -> [optimizer step] -> observe_probe.
    Losses and probe values come from their own generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    total = total or start + steps
    T = sampler.num_timesteps
    draws = []
    for i in range(start, start + steps):
        x0 = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
        ctx = StepContext(step=i, kimg=i * n / 1000, progress=i / total, lr=1e-3, x0=x0)
        draw = sampler.sample(n, ctx)
        check_draw(draw, n, T)
        spec = sampler.probe_request(ctx)
        sampler.observe(draw, synthetic_losses(draw.t, T, gen, bad), ctx)
        if spec is not None:
            assert spec.kind in ("delta", "grad_norm") and spec.loss in ("vlb", "mse")
            assert spec.t.dtype == torch.int64 and spec.image_index.dtype == torch.int64
            assert spec.t.shape == spec.image_index.shape and spec.t.ndim == 1
            assert int(spec.t.min()) >= 0 and int(spec.t.max()) < T
            assert int(spec.image_index.min()) >= 0 and int(spec.image_index.max()) < n
            sampler.observe_probe(synthetic_probe(spec, gen, bad), ctx)
        draws.append(draw)
    return draws


def same_draws(a: list[Draw], b: list[Draw]) -> bool:
    return all(torch.equal(x.t, y.t) and torch.equal(x.importance_weight, y.importance_weight)
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_draws_shapes_ranges_and_probs(make: Factory):
    sampler = make(0)
    check_probs(sampler)
    drive(sampler, 20)
    check_probs(sampler)
    for n in (1, 2, 3, 7):  # odd and tiny batches (SpeeD's dual split is n-dependent)
        ctx = StepContext(step=20, kimg=0.64, progress=1.0, lr=1e-3, x0=torch.zeros(n, 1, 8, 8))
        check_draw(sampler.sample(n, ctx), n, sampler.num_timesteps)
        check_probs(sampler)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_draws(make: Factory):
    a, b, c = make(0), make(0), make(1)
    draws_a, draws_b, draws_c = drive(a, 12), drive(b, 12), drive(c, 12)
    assert same_draws(draws_a, draws_b)
    assert torch.equal(a.probs(), b.probs())
    assert not all(torch.equal(x.t, y.t) for x, y in zip(draws_a, draws_c, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(make: Factory):
    a = make(0)
    drive(a, 20, total=30)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make(12345)  # a different seed: the state must carry the generator
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.probs(), b.probs())
    rest_a = drive(a, 10, seed=7, start=20, total=30)
    rest_b = drive(b, 10, seed=7, start=20, total=30)
    assert same_draws(rest_a, rest_b)
    assert torch.equal(a.probs(), b.probs())
    assert a.metrics() == b.metrics()


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_losses_and_probe_values_are_ignored(make: Factory):
    sampler = make(0)
    drive(sampler, 20, bad=True)
    check_probs(sampler)
    # A batch whose losses are all non-finite.
    T, n = sampler.num_timesteps, 8
    ctx = StepContext(step=20, kimg=0.64, progress=1.0, lr=1e-3, x0=torch.zeros(n, 1, 8, 8))
    draw = sampler.sample(n, ctx)
    sampler.observe(draw, torch.full((n,), float("nan")), ctx)
    sampler.observe(draw, torch.full((n,), float("inf")), ctx)
    spec = ProbeSpec(t=torch.arange(0, T, max(T // 10, 1)), image_index=torch.zeros(
        len(range(0, T, max(T // 10, 1))), dtype=torch.int64), kind="grad_norm", loss="mse")
    nan = torch.full((len(spec.t),), float("nan"))
    sampler.observe_probe(ProbeResult(spec=spec, before=nan, grad_sq_norm=nan), ctx)
    sampler.observe_probe(ProbeResult(spec=ProbeSpec(t=spec.t, image_index=spec.image_index),
                                      before=nan, after=nan), ctx)
    check_probs(sampler)
    check_draw(sampler.sample(n, ctx), n, T)
    assert all(math.isfinite(v) for v in sampler.metrics().values())


@pytest.mark.parametrize("name", NAMES)
def test_importance_weights(make: Factory):
    """Unbiased samplers return 1/(T p_t), so sum_t p_t w_t L_t = mean_t L_t; others ones."""
    sampler = make(0)
    drive(sampler, 20)
    T, n = sampler.num_timesteps, 256
    ctx = StepContext(step=20, kimg=0.64, progress=1.0, lr=1e-3, x0=torch.zeros(n, 1, 8, 8))
    p = sampler.probs()
    draw = sampler.sample(n, ctx)
    if not sampler.unbiased:
        assert torch.equal(draw.importance_weight, torch.ones(n))
        return
    expected = (1.0 / (T * p[draw.t])).float()
    torch.testing.assert_close(draw.importance_weight, expected, rtol=1e-6, atol=0)
    assert bool((p > 0).all())  # an unbiased sampler must be able to reach every t
    table = torch.rand(T, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    w = 1.0 / (T * p)
    assert float((p * w * table).sum()) == pytest.approx(float(table.mean()), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_metrics_are_finite_floats(make: Factory):
    sampler = make(0)
    for m in (sampler.metrics(), (drive(sampler, 20), sampler.metrics())[1]):
        assert "sampler/entropy" in m
        assert all(isinstance(k, str) and isinstance(v, float) and math.isfinite(v)
                   for k, v in m.items())
        assert 0.0 <= m["sampler/entropy"] <= math.log(sampler.num_timesteps) + 1e-9
