"""Edit-friendly DDPM inversion and injected-noise sampling with the SDE-DPM-Solver++(2M) step.

This is the numerical heart of Reverse Personalization (Kung, Varanka, Sebe, WACV 2026), which
inverts a face with the edit-friendly DDPM inversion of Huberman-Spiegelglas et al. (LEDITS++
flavour, second-order SDE-DPM-Solver++) and then replays the same solver with the recorded noise
maps under a different (identity-guided, negative) conditioning.

Notation (variance-preserving form, as in the DPM-Solver++ paper, arXiv:2211.01095):

* ᾱ_t   cumulative product of (1 − β) for the discrete training timestep t ∈ {0, …, T−1}
* α_t = √ᾱ_t,  σ_t = √(1 − ᾱ_t),  λ_t = log α_t − log σ_t (half log-SNR)
* x_t = α_t x_0 + σ_t ε  (``add_noise``)
* m    the (guided) data prediction of the model at the current point, m = (x − σ_s ε̂)/α_s
* one step from s to t (t < s; t = 0 after the last step) has h = λ_t − λ_s and

      first order  (eq. DPM-Solver++(1), SDE form):
          x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) D0 + σ_t √(1 − e^{−2h}) z
      second order (multistep, midpoint):
          D1 = (m0 − m1)/r0,  r0 = (λ_s − λ_{s_prev})/h
          x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) (D0 + ½ D1) + σ_t √(1 − e^{−2h}) z

  with D0 = m0 = m(x_s), m1 the data prediction of the previous step (at s_prev) and z ~ N(0, I).

Edit-friendly inversion (Huberman-Spiegelglas et al., arXiv:2304.06140, Algorithm 1): draw
independent noisy latents x_t = add_noise(x_0, ε_t) for every timestep, then walk down the chain and
solve each step for the noise z_t that lands exactly on the next latent:
``z = (x_target − μ)/(σ_t √(1 − e^{−2h}))``, where μ is the deterministic part of the step above.
The target is overwritten with μ + σ_t √(1 − e^{−2h}) z to avoid drift. Replaying the steps from x_T
with the stored z under the same model reproduces x_0; under a different conditioning it edits.

All coefficient arithmetic is float32 on 0-dim tensors in the same order as the published
reference, so the pack reproduces its numerics; the step is written once (`step_coefficients`,
`StepCoefficients.mean`) and used by both inversion (solving for z) and sampling (injecting z).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .guidance import DEFAULT as DEFAULT_GUIDANCE

__all__ = [
    "MIN_STEPS",
    "MAX_STEPS",
    "DEFAULT_STEPS",
    "SKIP_MIN",
    "SKIP_MAX",
    "DEFAULT_SKIP",
    "MAX_SEED",
    "check_steps",
    "check_skip",
    "check_seed",
    "NoiseSchedule",
    "StepCoefficients",
    "step_coefficients",
    "inversion_timesteps",
    "generation_step_orders",
    "inversion_step_orders",
    "InversionRecord",
    "invert",
    "sample",
]

# denoise(x_s, step_index) -> m, the guided data prediction at timestep timesteps[step_index]
Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
OnStep = Callable[[int, int], None]

# The knobs of the inversion and their bounds. Widgets and command-line options take their limits
# from here, and the check functions below are the one place each rule is enforced.
MIN_STEPS = 2  # the second-order multistep needs a previous step
MAX_STEPS = 1000  # no more steps than the training schedule has timesteps
DEFAULT_STEPS = 100  # the paper's N
SKIP_MIN = 0.01  # the fraction of the chain left out at the noisy end, strictly inside (0, 1)
SKIP_MAX = 0.99
DEFAULT_SKIP = 0.7  # the paper's value: timesteps 299 ... 1
MAX_SEED = 2 ** 64 - 1  # seeds are unsigned 64-bit integers (what torch.Generator.manual_seed takes)


def check_steps(steps) -> int:
    """The number of solver steps as an int, or ValueError saying the bounds."""
    if isinstance(steps, bool) or int(steps) != steps:
        raise ValueError(f"steps must be a whole number (got {steps})")
    steps = int(steps)
    if steps < MIN_STEPS:
        raise ValueError(f"steps must be at least {MIN_STEPS} (got {steps}); the paper uses {DEFAULT_STEPS}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS} (got {steps}); the paper uses {DEFAULT_STEPS}")
    return steps


def check_skip(skip) -> float:
    """The skipped fraction as a float snapped to 6 decimals, or ValueError saying the bounds. (UI float
    widgets deliver values such as 0.7000000000000001, which would truncate the first timestep to 298
    instead of the reference's 299, or fall just outside a bound.)"""
    skip = round(float(skip), 6)
    if not SKIP_MIN <= skip <= SKIP_MAX:
        raise ValueError(f"skip must lie strictly between 0 and 1, from {SKIP_MIN:g} to {SKIP_MAX:g} (got {skip:g}); "
                         f"the paper uses {DEFAULT_SKIP:g}")
    return skip


def check_seed(seed) -> int:
    """A seed as an int, or ValueError saying the bounds."""
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED} (got {seed})")
    return int(seed)


class NoiseSchedule:
    """The discrete VP noise schedule: tables of ᾱ_t, α_t, σ_t, λ_t for t = 0 … T−1 (float32).

    The tables are computed exactly as the reference's scheduler computes them (float32 cumprod of
    float32 betas, then sqrt / log on the float32 tensors), so step coefficients match it bit for bit.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float32).flatten()
        if ac.numel() < 2:
            raise ValueError("a noise schedule needs at least two timesteps")
        if not torch.all((ac > 0) & (ac < 1)):
            raise ValueError("ᾱ_t must lie strictly between 0 and 1 for every timestep (zero-terminal-SNR "
                             "schedules are not supported by the inversion)")
        self.alphas_cumprod = ac
        self.alpha = torch.sqrt(ac)
        self.sigma = torch.sqrt(1 - ac)
        self.lambda_ = torch.log(self.alpha) - torch.log(self.sigma)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @classmethod
    def from_betas(cls, beta_schedule: str, beta_start: float, beta_end: float,
                   num_train_timesteps: int = 1000) -> "NoiseSchedule":
        """β schedules by their diffusers names: ``scaled_linear`` (SD/SDXL: linspace of √β, squared)
        and ``linear``; ᾱ = cumprod(1 − β), all in float32 like the reference."""
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        else:
            raise ValueError(f"unknown beta schedule {beta_schedule!r} (expected 'scaled_linear' or 'linear')")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_ve_sigmas(cls, sigmas: torch.Tensor, reference: Optional["NoiseSchedule"] = None) -> "NoiseSchedule":
        """The schedule of a host's VE noise levels σ_t (ᾱ_t = 1 / (1 + σ_t²)); ``reference`` (the table made
        from the model's β schedule, as the reference makes it) when it gives the same ᾱ to 1e-5 relative,
        so step coefficients match the reference's bit for bit."""
        ac = 1.0 / (1.0 + torch.as_tensor(sigmas).detach().to("cpu", torch.float64) ** 2)
        if reference is not None and reference.alphas_cumprod.shape == ac.shape and torch.allclose(
                reference.alphas_cumprod.double(), ac, rtol=1e-5, atol=0):
            return reference
        return cls(ac.float())

    def sigma_ve(self, t: int) -> torch.Tensor:
        """σ_t/α_t: the variance-exploding noise level (k-diffusion's sigma) of timestep t."""
        return self.sigma[t] / self.alpha[t]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (the forward process, DDPM eq. 4)."""
        ac = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t]
        return ac ** 0.5 * x0 + (1 - ac) ** 0.5 * noise

    def same_as(self, other: "NoiseSchedule", rtol: float = 1e-5) -> bool:
        a, b = self.alphas_cumprod, other.alphas_cumprod
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=0))


def ve_input(x_vp: torch.Tensor, sigma_ve: torch.Tensor) -> torch.Tensor:
    """x_ve = x_vp · √(σ² + 1): the VP latent x_t = α_t x_0 + σ_t ε in the VE form x_0 + σ ε a k-diffusion
    host's model takes (σ = σ_t/α_t per row; the host divides by √(σ² + 1) again, giving back x_vp)."""
    return x_vp * (sigma_ve.view(-1, *([1] * (x_vp.ndim - 1))) ** 2 + 1.0) ** 0.5


def inversion_timesteps(steps: int, skip: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The discrete timesteps of the inversion, descending: ``linspace(T(1−skip)−1, 1, steps)``
    truncated to integers, as the reference does. ``skip`` is the fraction of the chain left out at
    the noisy end (0.7 keeps timesteps 299 … 1): the larger, the closer the result stays to the input."""
    steps = check_steps(steps)
    skip = check_skip(skip)  # snapped to 6 decimals
    T = int(num_train_timesteps)
    start = T - skip * T - 1
    if start < 1:
        raise ValueError(f"skip {skip} leaves no timesteps to invert (first timestep would be {start:.1f} < 1); "
                         "lower skip")
    ts = np.linspace(start, 1, int(steps)).astype(np.int64)
    if len(np.unique(ts)) != len(ts):
        raise ValueError(f"{steps} steps do not fit between timestep {int(ts[0])} and 1 without repeating a "
                         f"timestep (skip {skip} leaves only {int(ts[0])} distinct timesteps); lower steps or skip")
    return torch.from_numpy(ts)


@dataclass(frozen=True)
class StepCoefficients:
    """One solver step s → t written as  x_t = μ + C·z,  μ = A·x_s + B·D0 (+ B1·D1).

    A = (σ_t/σ_s) e^{−h},  B = α_t (1 − e^{−2h}),  B1 = ½B (second order only),
    C = σ_t √(1 − e^{−2h}),  and for second order D1 = (1/r0)(m0 − m1)."""

    order: int
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    B1: Optional[torch.Tensor] = None
    inv_r0: Optional[torch.Tensor] = None

    def mean(self, x: torch.Tensor, m0: torch.Tensor, m1: Optional[torch.Tensor] = None) -> torch.Tensor:
        """μ, the deterministic part of the step (D0 = m0; D1 from m1 for second order)."""
        if self.order == 1:
            return self.A * x + self.B * m0
        if m1 is None:
            raise ValueError("a second-order step needs the previous data prediction m1")
        D1 = self.inv_r0 * (m0 - m1)
        return self.A * x + self.B * m0 + self.B1 * D1


def step_coefficients(schedule: NoiseSchedule, s: int, t: int, order: int,
                      s_prev: Optional[int] = None) -> StepCoefficients:
    """Coefficients of one SDE-DPM-Solver++ step from timestep s to t (t < s), of order 1 or 2.

    ``s_prev`` is the timestep of the previous data prediction (second order only); h = λ_t − λ_s,
    r0 = (λ_s − λ_{s_prev})/h."""
    lam, alpha, sigma = schedule.lambda_, schedule.alpha, schedule.sigma
    lambda_t, lambda_s = lam[t], lam[s]
    alpha_t, sigma_t, sigma_s = alpha[t], sigma[t], sigma[s]
    h = lambda_t - lambda_s
    A = sigma_t / sigma_s * torch.exp(-h)
    B = alpha_t * (1 - torch.exp(-2.0 * h))
    C = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
    if order == 1:
        return StepCoefficients(1, A, B, C)
    if order != 2:
        raise ValueError(f"solver order must be 1 or 2 (got {order})")
    if s_prev is None:
        raise ValueError("a second-order step needs s_prev")
    h_0 = lambda_s - lam[s_prev]
    r0 = h_0 / h
    return StepCoefficients(2, A, B, C, B1=0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))), inv_r0=1.0 / r0)


def _next_timestep(timesteps: Sequence[int], j: int) -> int:
    return int(timesteps[j + 1]) if j + 1 < len(timesteps) else 0


def inversion_step_orders(steps: int) -> List[int]:
    """The inversion starts with a first-order step (no previous prediction) and is second order after."""
    return [1] + [2] * (steps - 1)


def generation_step_orders(steps: int, reference_compat: bool) -> List[int]:
    """Step orders of the generation.

    Clean method: the same orders as the inversion, so replaying it under the inversion's own
    conditioning reproduces x_0 exactly. ``reference_compat``: the reference's orders — its solver
    state is not reset after inversion, so the first step is already second order, and with fewer
    than 15 steps its ``lower_order_final`` rule makes the last step first order."""
    if not reference_compat:
        return inversion_step_orders(steps)
    orders = [2] * steps
    if steps < 15:
        orders[-1] = 1
    return orders


@dataclass
class InversionRecord:
    """What an edit-friendly inversion leaves for the sampler (all in the model's latent space).

    x_T: [B, C, H, W] the start of generation (the noisy latent at timesteps[0]).
    noise_maps: [N, B, C, H, W], noise_maps[i] is the z injected by the step from timesteps[i].
    timesteps: [N] int64, descending, the discrete timesteps of the steps.
    alphas_cumprod: [T] float32, the schedule the steps were taken on.
    last_data_prediction: [B, C, H, W], the inversion's data prediction at timesteps[-1] (the stale
        solver state the reference carries into generation; used only by ``reference_compat``).
    guidance: the inversion's guidance scale (the sampler says when it uses another, `guidance_note`).
    seed: the seed of the inversion's noise draws.
    step_orders: the solver order of every step.
    """

    x_T: torch.Tensor
    noise_maps: torch.Tensor
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    last_data_prediction: torch.Tensor
    guidance: float = 0.0
    seed: int = 0
    step_orders: List[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return int(self.timesteps.numel())

    @property
    def batch_size(self) -> int:
        return int(self.x_T.shape[0])

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.alphas_cumprod)

    def face(self, i: int) -> "InversionRecord":
        """The record of face i alone (a batch of one)."""
        return self.faces(i, i + 1)

    def guidance_note(self, guidance: float) -> str:
        """What the sampler says when it guides with another scale than the inversion did ("" when they
        agree): the method inverts and samples with one guidance g, so the replay starts from noise maps
        made for another g."""
        if float(guidance) == float(self.guidance):
            return ""
        return (f"the sampler's guidance {float(guidance):g} differs from the inversion's {float(self.guidance):g}: the "
                f"method uses one guidance for both (the paper's {DEFAULT_GUIDANCE:g}); set Invert's guidance to the sampler's")

    def faces(self, start: int, stop: int) -> "InversionRecord":
        """The record of faces start..stop-1 (a chunk of the batch)."""
        return replace(self, x_T=self.x_T[start:stop], noise_maps=self.noise_maps[:, start:stop],
                       last_data_prediction=self.last_data_prediction[start:stop], step_orders=list(self.step_orders))

    @classmethod
    def joined(cls, records: Sequence["InversionRecord"]) -> "InversionRecord":
        """One record of the faces of several (chunk records of one inversion, in order)."""
        return replace(records[0], x_T=torch.cat([r.x_T for r in records]),
                       noise_maps=torch.cat([r.noise_maps for r in records], dim=1),
                       last_data_prediction=torch.cat([r.last_data_prediction for r in records]),
                       step_orders=list(records[0].step_orders))


def _draw_noise(generators: Sequence[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """One standard normal draw per face, each from its own CPU generator (face i of a batch gets the
    draws it would get alone)."""
    shape = (1,) + tuple(like.shape[1:])
    eps = [torch.randn(shape, generator=g, device="cpu", dtype=torch.float32) for g in generators]
    return torch.cat(eps).to(device=like.device, dtype=like.dtype)


def invert(x0: torch.Tensor, denoise: Denoiser, schedule: NoiseSchedule, timesteps: torch.Tensor, seed: int,
           on_step: Optional[OnStep] = None, guidance: float = 0.0) -> InversionRecord:
    """Edit-friendly DDPM inversion of the latents x0 [B, C, H, W] (all faces at once).

    1. For t ascending (timesteps[-1] … timesteps[0]) draw ε_t per face from a CPU generator seeded
       with ``seed`` and form x_t = add_noise(x0, ε_t, t).
    2. For each step j (t = timesteps[j] descending) evaluate m = denoise(x, j) once, take the step
       mean μ and solve z_j = (x_target − μ)/C with x_target the next noisy latent (x0 after the last
       step); the corrected latent μ + C z_j is the next step's input.
    """
    if x0.ndim != 4:
        raise ValueError(f"latents must be [batch, channels, height, width] (got shape {tuple(x0.shape)})")
    ts = [int(t) for t in timesteps]
    N = len(ts)
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(x0.shape[0])]
    # xs[k] is the latent at timestep ts[N-k]; xs[0] = x0. Noise is drawn for t ascending.
    xs: List[torch.Tensor] = [x0]
    for k in range(1, N + 1):
        xs.append(schedule.add_noise(x0, _draw_noise(generators, x0), ts[N - k]))
    x_T = xs[N]
    orders = inversion_step_orders(N)
    zs = torch.empty((N,) + tuple(x0.shape), dtype=x0.dtype, device=x0.device)
    x = x_T
    m_prev = None
    for j, s in enumerate(ts):
        m = denoise(x, j)
        coef = step_coefficients(schedule, s, _next_timestep(ts, j), orders[j], ts[j - 1] if j > 0 else None)
        mu = coef.mean(x, m, m_prev)
        z = (xs[N - j - 1] - mu) / coef.C
        zs[j] = z
        x = mu + coef.C * z
        m_prev = m
        if on_step is not None:
            on_step(j + 1, N)
    return InversionRecord(x_T=x_T.clone(), noise_maps=zs, timesteps=torch.tensor(ts, dtype=torch.int64),
                           alphas_cumprod=schedule.alphas_cumprod.clone(), last_data_prediction=m_prev,
                           guidance=float(guidance), seed=int(seed), step_orders=orders)


def sample(record: InversionRecord, denoise: Denoiser, reference_compat: bool = False,
           on_step: Optional[OnStep] = None, x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Replay the solver from x_T with the recorded noise maps: x ← μ(x, m) + C z_j for every step.

    ``reference_compat`` reproduces the reference's quirks: the first step is second order with
    m1 = the inversion's last data prediction and s_prev = timesteps[-1] (its solver state is never
    reset), and below 15 steps the last step is first order. Default: fresh state, the inversion's
    step orders (exact reconstruction under the inversion's own conditioning)."""
    schedule = record.schedule
    ts = [int(t) for t in record.timesteps]
    N = len(ts)
    orders = generation_step_orders(N, reference_compat)
    x = record.x_T if x_T is None else x_T
    m_prev = record.last_data_prediction.to(device=x.device, dtype=x.dtype) if reference_compat else None
    zs = record.noise_maps
    for j, s in enumerate(ts):
        m = denoise(x, j)
        # s_prev = ts[j-1]; at j = 0 the index wraps to ts[-1], which is what the reference's stale state uses.
        coef = step_coefficients(schedule, s, _next_timestep(ts, j), orders[j], ts[j - 1])
        x = coef.mean(x, m, m_prev) + coef.C * zs[j].to(device=x.device, dtype=x.dtype)
        m_prev = m
        if on_step is not None:
            on_step(j + 1, N)
    return x
