"""ComfyUI glue (not a node module): the noise schedule of a ComfyUI MODEL, as the solver's
`revpers_core.solver.NoiseSchedule`, and the model's noise levels of the solver's timesteps."""
from __future__ import annotations

import torch

import comfy.model_sampling

from revpers_core import solver

from ._unet_sites import model_name

_BETA_NAMES = {"linear": "scaled_linear", "sqrt_linear": "linear"}  # ComfyUI name → diffusers name


def model_sampling(model):
    """The MODEL's sampling object (its σ table), object patches included (e.g. Model Sampling Discrete)."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    if "model_sampling" in model.object_patches:
        return model.object_patches["model_sampling"]
    # while another clone's patch is applied, the model's own object is in the shared backup
    return model.object_patches_backup.get("model_sampling", model.model.model_sampling)


def _maps_discrete_timesteps(ms) -> bool:
    """Whether the sampling has a table of σ per discrete training timestep and maps each σ back to its
    timestep (continuous-time schedules, such as Stable Cascade's, map them into [0, 1] instead)."""
    sigmas = getattr(ms, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        return False
    probe = torch.tensor([0, sigmas.numel() // 2, sigmas.numel() - 1])
    back = ms.timestep(sigmas[probe.to(sigmas.device)]).detach().cpu().round().long()
    return back.tolist() == probe.tolist()


def _predicts_eps_or_v(ms) -> bool:
    cls = type(ms)
    return (cls.calculate_input is comfy.model_sampling.EPS.calculate_input
            and cls.calculate_denoised in (comfy.model_sampling.EPS.calculate_denoised,
                                           comfy.model_sampling.V_PREDICTION.calculate_denoised))


def model_schedule(model) -> solver.NoiseSchedule:
    """The ᾱ table of a ComfyUI MODEL, computed the reference's way (float32, from its beta schedule) when the
    model uses a standard β schedule, else taken from the model's own sigmas."""
    ms = model_sampling(model)
    if not (_maps_discrete_timesteps(ms) and _predicts_eps_or_v(ms)):
        raise ValueError(f"the MODEL ({model_name(model)}) uses {type(ms).__name__} sampling; the inversion needs a "
                         "discrete-time ε- or v-prediction model (SD1.5 / SDXL family)")
    settings = getattr(getattr(model.model, "model_config", None), "sampling_settings", {}) or {}
    name = _BETA_NAMES.get(settings.get("beta_schedule", "linear"))
    ref = None
    if name is not None and hasattr(ms, "linear_start") and not getattr(ms, "zsnr", False):
        ref = solver.NoiseSchedule.from_betas(name, ms.linear_start, ms.linear_end, len(ms.sigmas))
    return solver.NoiseSchedule.from_ve_sigmas(ms.sigmas, ref)


def step_sigmas(model, schedule: solver.NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """σ_ve of every step's timestep, then of t = 0 (after the last step); checks that the model maps each back
    to exactly its discrete timestep."""
    ts = [int(t) for t in timesteps]
    sig = torch.stack([schedule.sigma_ve(t) for t in ts] + [schedule.sigma_ve(0)])
    ms = model_sampling(model)
    back = ms.timestep(sig[:-1].to(ms.sigmas.device)).detach().cpu().round().long()
    if back.tolist() != ts:
        raise RuntimeError(f"the MODEL's sampling maps the solver's noise levels to timesteps {back.tolist()[:5]}… "
                           f"instead of {ts[:5]}…; its noise schedule is not the one the solver assumes")
    return sig
