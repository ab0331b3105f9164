"""ComfyUI glue (not a node module): the inversion and the anonymized sampling run through ComfyUI's own
sampling entry point (`comfy.sample.sample_custom`) with the pack's solver as the sampler function.

How a solver step reaches the model: a `comfy.samplers.KSAMPLER` whose function runs
`revpers_core.solver`. ComfyUI then does cond processing (SDXL size/pooled conditioning), model
patches, ControlNet, and ONE batched call per step carrying the conditional and the unconditional
branch of every face of the chunk, guided as m = m_u + g·(m_c − m_u) on the data prediction (g may be
negative there). ComfyUI's x is in variance-exploding form, x_ve = x_vp·√(σ_ve² + 1) with
σ_ve = σ_t/α_t; the solver works in variance-preserving form, so each model call converts on the way
in (the model's own input scaling undoes it) and receives the data prediction m, which is the same in
both forms.

Faces go in chunks under the row budget (revpers_core.row_budget), each chunk through all steps.

Each chunk's run has model options of its own: a copy of the MODEL's (every list and dict in it), to
which the run adds what is its alone, the faces the chunk carries (`FACE_WINDOW`) and per-face guidance.
Nothing of a run is written into the MODEL, its clones or the model they were cloned from.

One UNet for both runs: the inversion's model and the identity model are clones of one base with the
same FaceID weights; they differ only in their model options (the identity routing, per-face
guidance). A run takes the clone ComfyUI already has loaded when its weights and object patches are
the run's model's (ComfyUI's own `clone_has_same_weights`), carrying the run's own options while the run
lasts (its own are put back after), so that the second run of a prompt, and every warm re-run, loads and
patches nothing. While a run lasts, the LoRA's products of the text context (the same at every step) are
formed once (revpers_core.faceid.ContextProducts).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import List, Optional, Sequence, Tuple

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from revpers_core import heap, row_budget, solver
from revpers_core.conditioning import guided_rows
from revpers_core.faceid import LoraForward

from ._identity_attention import FACE_WINDOW, copied_tables
from ._schedule import model_schedule, step_sigmas


# ---------------------------------------------------------------------------------------------
# the solver as ComfyUI's sampler function

class _SolverRun:
    """One chunk's run of the solver as the function of a `comfy.samplers.KSAMPLER`: ComfyUI calls it with
    its guided model and σ_ve schedule; it hands `solve` a VP-form denoiser, denoise(x_vp, j) → m at
    sigmas[j]. What a run produces besides the final latent stays on the run object."""

    def __init__(self, on_step=None):
        self.on_step = on_step

    def sampler(self) -> "comfy.samplers.KSAMPLER":
        return comfy.samplers.KSAMPLER(self._sample)

    def _sample(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])

        def denoise(x_vp, j):
            sigma = sigmas[j] * s_in
            x_ve = solver.ve_input(x_vp, sigma)
            m = model(x_ve, sigma, **extra_args)
            if callback is not None:
                callback({"x": x_ve, "i": j, "sigma": sigmas[j], "sigma_hat": sigmas[j], "denoised": m})
            return m

        return self.solve(denoise, x)

    def solve(self, denoise, x):
        raise NotImplementedError


class _InversionRun(_SolverRun):
    """Edit-friendly inversion of the chunk's latents; the record is kept in `record`."""

    def __init__(self, schedule, timesteps, seed, guidance, on_step=None):
        super().__init__(on_step)
        self.schedule, self.timesteps, self.seed, self.guidance = schedule, timesteps, seed, guidance
        self.record: Optional[solver.InversionRecord] = None

    def solve(self, denoise, x0):
        self.record = solver.invert(x0, denoise, self.schedule, self.timesteps, self.seed, on_step=self.on_step,
                                    guidance=self.guidance)
        return self.record.x_T


class _ReplayRun(_SolverRun):
    """The solver replayed from the record's x_T with its noise maps."""

    def __init__(self, record, reference_compat, on_step=None):
        super().__init__(on_step)
        self.record, self.reference_compat = record, reference_compat

    def solve(self, denoise, x):
        rec = _record_to(self.record, x.device)
        return solver.sample(rec, denoise, reference_compat=self.reference_compat, on_step=self.on_step,
                             x_T=rec.x_T.to(dtype=x.dtype))


def _record_to(record: solver.InversionRecord, device) -> solver.InversionRecord:
    return dataclasses.replace(record, x_T=record.x_T.to(device), noise_maps=record.noise_maps.to(device),
                               timesteps=record.timesteps.cpu(), alphas_cumprod=record.alphas_cumprod.cpu(),
                               last_data_prediction=record.last_data_prediction.to(device),
                               step_orders=list(record.step_orders))


# ---------------------------------------------------------------------------------------------
# one loaded UNet

def _loaded_twin(model):
    """A clone ComfyUI has loaded whose weights and object patches are ``model``'s (None when there is
    none, or when it is ``model`` itself)."""
    for loaded in list(comfy.model_management.current_loaded_models):
        other = loaded.model
        if other is None or other is model:
            continue
        if other.clone_has_same_weights(model) and other.object_patches == model.object_patches:
            return other
    return None


@contextlib.contextmanager
def _on_loaded_unet(model, options):
    """The patcher to sample ``model`` with, carrying the run's ``options`` while the run lasts: ``model``'s
    loaded twin, else ``model`` itself. Its own options are put back after, untouched."""
    unet = _loaded_twin(model) or model
    own = unet.model_options
    unet.model_options = options
    try:
        yield unet
    finally:
        unet.model_options = own


def _run_options(model, window: Tuple[int, int], post_cfg=None) -> dict:
    """The model options of one chunk's run: a copy of ``model``'s (every list and dict in it), telling each
    call the faces ``window`` it carries, with ``post_cfg`` (per-face guidance) after the MODEL's own."""
    options = copied_tables(model.model_options)
    options.setdefault("transformer_options", {})[FACE_WINDOW] = (int(window[0]), int(window[1]))
    if post_cfg is not None:
        options.setdefault("sampler_post_cfg_function", []).append(post_cfg)
    return options


def _keeping_context_products(unet) -> contextlib.ExitStack:
    """While the run lasts, the FaceID LoRA's products of the text context are formed once and kept
    (revpers_core.faceid.ContextProducts), for every adapter whose LoRA the UNet adds at run time."""
    adapters = {id(p.adapter): p.adapter for p in unet.object_patches.values() if isinstance(p, LoraForward)}
    stack = contextlib.ExitStack()
    for adapter in adapters.values():
        stack.enter_context(adapter.context_products.kept())
    return stack


def heap_settings(model):
    """While a run of ``model`` lasts: on the CPU, the C heap keeps what a model call frees for the next one
    and hands it back after (revpers_core.heap); on any other device nothing (the casts live there)."""
    if torch.device(model.load_device).type == "cpu":
        return heap.freed_pages_kept()
    return contextlib.nullcontext(False)


def _sample_chunk(model, options, run: _SolverRun, latent, guidance, sigmas, positive, negative,
                  seed) -> torch.Tensor:
    with heap_settings(model), _on_loaded_unet(model, options) as unet, _keeping_context_products(unet):
        return comfy.sample.sample_custom(unet, torch.zeros_like(latent), float(guidance), run.sampler(), sigmas,
                                          positive, negative, latent, disable_pbar=True, seed=int(seed))


# ---------------------------------------------------------------------------------------------
# the two runs

def _chunked_progress(on_step, chunk: int, chunks: int):
    """A chunk's on_step(j, N), reported as the progress of the whole run over all chunks."""
    if on_step is None:
        return None
    return lambda j, n: on_step(chunk * n + j, chunks * n)


def face_chunks(model, latent_shape, faces: int, max_rows: int) -> List[Tuple[int, int]]:
    """The face chunks under the row budget (revpers_core.row_budget); max_rows 0 = automatic, from the free
    memory of the model's device and the host's own estimate of a model call's memory."""
    max_rows = row_budget.check_max_rows(max_rows)
    if max_rows == 0:
        shape = list(latent_shape[1:])
        max_rows = row_budget.automatic_rows(free_memory(model),
                                             lambda n: model.model.memory_required([n] + shape))
    return row_budget.face_chunks(faces, max_rows)


def free_memory(model) -> float:
    """The memory a model call may use on the model's device, as the host counts it for this model: its
    patcher's own count where it has one (current ComfyUI's, which in dynamic VRAM mode adds what the
    offloader can give back), else the device's free memory."""
    own = getattr(model, "get_free_memory", None)
    if callable(own):
        return float(own(model.load_device))
    return float(comfy.model_management.get_free_memory(model.load_device))


def run_inversion(model, latent: torch.Tensor, positive, negative, guidance: float, steps: int, skip: float, seed: int,
                  on_step=None, max_rows: int = 0) -> Tuple[solver.InversionRecord, torch.Tensor]:
    """Edit-friendly inversion of LATENT samples (user latent space) → (record in the model's latent space,
    x_T in user latent space), the faces in chunks under the row budget."""
    schedule = model_schedule(model)
    timesteps = solver.inversion_timesteps(steps, skip, schedule.num_train_timesteps)
    sigmas = step_sigmas(model, schedule, timesteps)
    chunks = face_chunks(model, latent.shape, latent.shape[0], max_rows)
    records, starts = [], []
    for c, (a, b) in enumerate(chunks):
        run = _InversionRun(schedule, timesteps, seed, guidance, _chunked_progress(on_step, c, len(chunks)))
        starts.append(_sample_chunk(model, _run_options(model, (a, b)), run, latent[a:b], guidance, sigmas,
                                    positive, negative, seed))
        records.append(run.record)
    record = records[0] if len(records) == 1 else solver.InversionRecord.joined(records)
    return _record_to(record, "cpu"), torch.cat(starts)


def with_size(conditioning, size: int):
    """Copies of the conds whose SDXL size conditioning (width/height/target_width/target_height) is ``size``."""
    return [[c[0], {**c[1], "width": size, "height": size, "target_width": size, "target_height": size}]
            for c in conditioning]


class _RowGuidance:
    """ComfyUI post-CFG function: the faces whose guidance differs are guided with their own scale
    (revpers_core.conditioning.guided_rows); the other rows keep ComfyUI's result, bit for bit."""

    def __init__(self, scales: Sequence[float], rows: Sequence[int]):
        self.scales, self.rows = [float(g) for g in scales], list(rows)

    def __call__(self, args):
        guided = args["denoised"]
        if guided.shape[0] != len(self.scales):
            raise ValueError(f"per-face guidance has {len(self.scales)} rows but the sampler's batch has "
                             f"{guided.shape[0]}")
        return guided_rows(guided, args["cond_denoised"], args["uncond_denoised"], self.rows,
                           [self.scales[i] for i in self.rows])


def row_guidance(guidance: float, scales: Optional[Sequence[float]]) -> Optional[_RowGuidance]:
    """None when every row is guided with ``guidance`` (or ``scales`` is None); else the post-CFG function
    that guides the rows whose scale differs with their own (see `_RowGuidance`): guaranteed mode re-samples
    failing faces while the others come out identical."""
    rows = [] if scales is None else [i for i, g in enumerate(scales) if float(g) != float(guidance)]
    return _RowGuidance(scales, rows) if rows else None


def run_sampling(model, record: solver.InversionRecord, positive, negative, guidance: float,
                 reference_compat: bool = False, reference_size: int = 1024, on_step=None,
                 row_scales: Optional[Sequence[float]] = None, max_rows: int = 0) -> torch.Tensor:
    """Replay the solver from the record's x_T with its noise maps → final latents (user latent space), the
    faces in chunks under the row budget. ``row_scales``: one guidance per face (see `row_guidance`);
    None = ``guidance`` for all."""
    schedule = model_schedule(model)
    if not schedule.same_as(record.schedule):
        raise ValueError("the MODEL's noise schedule differs from the one the inversion used: sample with the same "
                         "checkpoint that was inverted")
    sigmas = step_sigmas(model, record.schedule, record.timesteps)
    if reference_compat:
        positive, negative = with_size(positive, reference_size), with_size(negative, reference_size)
    chunks = face_chunks(model, record.x_T.shape, record.batch_size, max_rows)
    outs = []
    for c, (a, b) in enumerate(chunks):
        part = record.faces(a, b)
        post_cfg = row_guidance(guidance, None if row_scales is None else row_scales[a:b])
        run = _ReplayRun(part, reference_compat, _chunked_progress(on_step, c, len(chunks)))
        latent = model.model.process_latent_out(part.x_T.clone())
        outs.append(_sample_chunk(model, _run_options(model, (a, b), post_cfg), run, latent, guidance, sigmas,
                                  positive, negative, record.seed))
    return torch.cat(outs)
