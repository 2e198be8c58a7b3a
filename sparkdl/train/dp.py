"""Differentially private training (DP-SGD) on Horovod: the settings, the privacy accountant, the sampling.

A fit with `dp=` trains each step on a Poisson sample of the rows: each row is in step t's batch with probability
q, decided by a hash of (row, t, key), so no state is shared between ranks and the sample is the one the
accountant assumes. The key is drawn from the OS's entropy for each fit and never stored (subsampling amplifies
privacy only while the sample is secret), and the noise generator is seeded from the OS's entropy too. Each rank
clips the gradient of each of its rows in the batch to L2 norm `clip_norm` and sums them
(`sparkdl.train.dp_clipping`: ghost clipping, or the per-example Jacobian); rank 0 alone adds Gaussian noise of
standard deviation `noise_multiplier × clip_norm`; a sum-allreduce adds the ranks' sums, and the result is divided
by the expected global batch q·N (Opacus' DistributedDPOptimizer recipe; Horovod's averaging optimizer is not used,
so nothing is scaled twice). `sparkdl.train.dp_worker` runs that loop for either Keras flavour.

The accountant is Google's dp-accounting (`rdp` by default, or `pld`): it calibrates the noise multiplier for a
target ε at δ over the fit's steps, or, with a given noise multiplier, gives the ε spent; training stops when the
next step would pass the budget. What the guarantee covers, and what it does not, is in docs/privacy.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from sparkdl.errors import ConfigError

ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True)
class DPConfig:
    """The `dp` param of `KerasEstimator` (YAML `train.dp`).

    Params:
        epsilon: the privacy budget ε (> 0).
        delta: δ (default: 1/N rounded down to a power of ten, N the training rows).
        clip_norm: the L2 bound of each example's gradient.
        noise_multiplier: σ; None calibrates it from `epsilon` for the fit's steps.
        accountant: "rdp" (default) or "pld".
    """

    epsilon: float
    clip_norm: float = 1.0
    delta: float | None = None
    noise_multiplier: float | None = None
    accountant: str = "rdp"

    def __post_init__(self):
        for name in ("epsilon", "clip_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"dp.{name} must be a positive number, got {value!r}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta!r}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"dp.noise_multiplier must be positive, got {self.noise_multiplier!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"dp.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")

    @classmethod
    def of(cls, value: Any) -> DPConfig | None:
        """A DPConfig from itself, a mapping (YAML `train.dp`) or None. Raises ConfigError naming a bad key."""
        if value is None or isinstance(value, DPConfig):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"dp must be a mapping such as {{epsilon: 3, clip_norm: 1.0}}, got {value!r}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"dp: unknown key(s) {unknown}; allowed: {', '.join(cls.__dataclass_fields__)}")
        if "epsilon" not in value:
            raise ConfigError("dp.epsilon (the privacy budget) is required")
        return cls(**value)


@dataclass(frozen=True)
class DPPlan:
    """What a DP fit does and guarantees: sampling rate q, noise σ, steps, and the (ε, δ) of those steps."""

    q: float
    noise_multiplier: float
    steps: int
    steps_requested: int
    epsilon: float
    delta: float
    clip_norm: float
    accountant: str
    expected_batch: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampling": "poisson", "accountant_library": "dp-accounting"}


def default_delta(rows: int) -> float:
    """1/N rounded down to a power of ten."""
    return 10.0 ** -math.ceil(math.log10(max(rows, 2)))


def epsilon_for(q: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε of `steps` Poisson-sampled Gaussian steps (rate q, noise σ) at δ, by dp-accounting."""
    import dp_accounting
    from dp_accounting import pld, rdp

    if steps <= 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def plan(config: DPConfig, rows: int, expected_batch: float, epochs: int) -> DPPlan:
    """The fit's plan: q = expected batch / rows, steps = epochs × rows / expected batch; σ calibrated for ε when not
    given; with a given σ, the steps the budget allows (the fit stops there).

    Raises:
        ConfigError: an expected batch larger than the data, or a budget that allows no step.
    """
    if not 0 < expected_batch < rows:
        raise ConfigError(f"dp: the expected batch ({expected_batch:g} = batch_size x num_proc) must be smaller than "
                          f"the training rows ({rows})")
    q = expected_batch / rows
    steps_requested = max(1, int(round(epochs / q)))
    delta = config.delta if config.delta is not None else default_delta(rows)
    if config.noise_multiplier is None:
        sigma = calibrate_noise(q, steps_requested, config.epsilon, delta, config.accountant)
        steps = steps_requested
    else:
        sigma = config.noise_multiplier
        steps = budget_steps(q, sigma, config.epsilon, delta, steps_requested, config.accountant)
        if steps == 0:
            raise ConfigError(f"dp: with noise_multiplier={sigma:g} not one step fits epsilon={config.epsilon:g} "
                              f"(delta={delta:g}, q={q:.4g}); raise the noise or the budget")
    spent = epsilon_for(q, sigma, steps, delta, config.accountant)
    return DPPlan(q, float(sigma), steps, steps_requested, spent, delta, float(config.clip_norm),
                  config.accountant, float(expected_batch), int(rows))


def calibrate_noise(q: float, steps: int, epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """The smallest σ (to 1e-3 relative) whose `steps` steps at rate q stay within (ε, δ)."""
    low, high = 0.1, 1.0
    while epsilon_for(q, high, steps, delta, accountant) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ConfigError(f"dp: epsilon={epsilon:g} cannot be met for {steps} steps at q={q:.4g}")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if epsilon_for(q, mid, steps, delta, accountant) > epsilon else (low, mid)
    return high


def budget_steps(q: float, sigma: float, epsilon: float, delta: float, most: int, accountant: str = "rdp") -> int:
    """The most steps (up to `most`) whose ε stays within `epsilon` (binary search: ε grows with the steps)."""
    if epsilon_for(q, sigma, most, delta, accountant) <= epsilon:
        return most
    low, high = 0, most
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if epsilon_for(q, sigma, mid, delta, accountant) <= epsilon else (low, mid)
    return low


def poisson_mask(row_ids: np.ndarray, step: int, seed: int, q: float) -> np.ndarray:
    """Which rows are in step `step`'s batch: a uniform from a hash (splitmix64) of (row id, step, seed) below q.
    The same on every rank for one seed; independent across rows and steps. A DP fit passes a secret seed."""
    with np.errstate(over="ignore"):
        x = (row_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64((step * 0x632BE59BD9B4E019 + seed * 0x8CB92BA72F3D8DD7) & 0xFFFFFFFFFFFFFFFF))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < q


def refuse_unsafe_layers(model) -> None:
    """Refuse, by name, layers that break per-example privacy: batch normalization (its statistics mix the examples
    of a batch) and stateful recurrent layers (state carried across examples).

    Raises:
        ConfigError: naming the layer.
    """
    def walk(layer):
        yield layer
        for child in getattr(layer, "layers", None) or []:
            yield from walk(child)

    for layer in walk(model):
        kind = type(layer).__name__
        if "BatchNormalization" in kind:
            raise ConfigError(f"dp: layer {layer.name!r} ({kind}) mixes the examples of a batch, which breaks "
                              f"per-example privacy; use LayerNormalization or GroupNormalization")
        if getattr(layer, "stateful", False):
            raise ConfigError(f"dp: layer {layer.name!r} ({kind}) is stateful (state carried across examples); "
                              f"use stateful=False")


def with_steps(p: DPPlan, steps: int) -> DPPlan:
    """The plan after `steps` steps were taken (a fit stopped early spends less)."""
    return replace(p, steps=steps, epsilon=epsilon_for(p.q, p.noise_multiplier, steps, p.delta, p.accountant))
