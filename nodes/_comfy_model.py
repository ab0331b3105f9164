"""ComfyUI glue for the method (not a node module): the FaceID patches on a ModelPatcher, the noise
schedule of a ComfyUI model, and the inversion / anonymized sampling run through ComfyUI's own
sampling entry point with the pack's solver as the sampler function.

How a solver step reaches the model: `comfy.sample.sample_custom` with a `comfy.samplers.KSAMPLER`
whose function runs `revpers_core.solver`. ComfyUI then does cond processing (SDXL size/pooled
conditioning), model patches, ControlNet, and ONE batched call per step carrying the conditional
and the unconditional branch of every face, guided as m = m_u + g·(m_c − m_u) on the data
prediction (g may be negative there). ComfyUI's x is in variance-exploding form,
x_ve = x_vp·√(σ_ve² + 1) with σ_ve = σ_t/α_t; the solver works in variance-preserving form, so each
model call converts on the way in (the model's own input scaling undoes it) and receives the data
prediction m, which is the same in both forms.

Identity attention: every cross-attention ``attn2`` of the UNet is replaced (ModelPatcher
``set_model_attn2_replace``) by text attention + scale·attention(q, to_k_ip(tokens), to_v_ip(tokens)),
where the tokens of each batch row are the face's identity tokens on the conditional branch and the
null-embedding tokens on the unconditional branch (ComfyUI tells which chunk is which through
``cond_or_uncond``). The FaceID LoRA is added as weight patches (W + up·down, weight 1).
"""
from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers

from revpers_core import row_budget, solver
from revpers_core.faceid import FaceIDAdapter, TransformerSlot

COND, UNCOND = 0, 1
_UUID_NAMESPACE = uuid.UUID("5f0c2a3e-8d7b-4c1e-9a55-3b1e0c6f4d21")


# ---------------------------------------------------------------------------------------------
# the model's attention layers

@dataclass(frozen=True)
class AttentionSite:
    """Where one transformer block of the UNet sits, for ComfyUI's patch keys and weight names."""

    block_name: str  # "input" | "middle" | "output"
    number: int  # index of the block in its list (0 for the middle block)
    index: int  # index of the transformer block inside its SpatialTransformer
    prefix: str  # state-dict prefix of the transformer block, e.g. diffusion_model.input_blocks.4.1.transformer_blocks.0
    slot: TransformerSlot


def _weight_shapes(block) -> Dict[str, Tuple[int, int]]:
    shapes = {}
    for attn in ("attn1", "attn2"):
        layer = getattr(block, attn)
        for proj in ("to_q", "to_k", "to_v"):
            shapes[f"{attn}.{proj}"] = tuple(getattr(layer, proj).weight.shape)
        shapes[f"{attn}.to_out"] = tuple(layer.to_out[0].weight.shape)
    return shapes


def attention_sites(model) -> List[AttentionSite]:
    """The transformer blocks of a ComfyUI UNet in the IP-Adapter's layer order: input blocks ascending,
    output blocks ascending, then the middle block (diffusers' down, up, mid)."""
    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise ValueError(f"the MODEL ({model_name(model)}) is not a UNet with input/output blocks; the FaceID adapter "
                         "needs an SD1.5- or SDXL-family UNet")
    groups = [("input", "input_blocks", list(dm.input_blocks)), ("output", "output_blocks", list(dm.output_blocks)),
              ("middle", "middle_block", [dm.middle_block] if getattr(dm, "middle_block", None) is not None else [])]
    sites = []
    for block_name, attr, blocks in groups:
        for number, block in enumerate(blocks):
            for j, layer in enumerate(block):
                if not isinstance(layer, comfy_attention.SpatialTransformer):
                    continue
                base = f"diffusion_model.{attr}.{j}" if block_name == "middle" else f"diffusion_model.{attr}.{number}.{j}"
                for index, tb in enumerate(layer.transformer_blocks):
                    if getattr(tb, "attn2", None) is None:
                        continue
                    prefix = f"{base}.transformer_blocks.{index}"
                    name = prefix[len("diffusion_model."):]
                    sites.append(AttentionSite(block_name, number, index, prefix, TransformerSlot(name, _weight_shapes(tb))))
    return sites


def model_name(model) -> str:
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.model).__name__


def describe_model(model, sites: Sequence[AttentionSite]) -> str:
    ctx = sorted({s.slot.context_dim for s in sites})
    return f"'{model_name(model)}' ({len(sites)} transformer blocks, cross-attention width {', '.join(map(str, ctx)) or '?'})"


# ---------------------------------------------------------------------------------------------
# identity attention

class IdentityTokens:
    """The identity tokens of one patched MODEL: per face for the conditional branch, and those of the
    null (zero) embedding for the unconditional branch, with the adapter scale. Shared by all layers."""

    def __init__(self, cond_tokens: torch.Tensor, null_tokens: torch.Tensor, scale: float, has_identity: bool,
                 adapter_name: str):
        self.cond_tokens = cond_tokens
        self.null_tokens = null_tokens
        self.scale = float(scale)
        self.has_identity = bool(has_identity)
        self.adapter_name = adapter_name
        self.window = None  # (start, stop): the faces of the chunk being sampled; None = all

    @property
    def faces(self) -> int:
        return int(self.cond_tokens.shape[0])

    @contextlib.contextmanager
    def chunk(self, start: int, stop: int):
        """Within this, the conditional branch carries the tokens of faces start..stop-1 only (the chunk of
        the batch under sampling; see revpers_core.row_budget)."""
        self.window = (start, stop) if self.faces > 1 else None
        try:
            yield self
        finally:
            self.window = None

    def rows(self, cond_or_uncond: Sequence[int], rows_per_chunk: int, device, dtype) -> torch.Tensor:
        """Identity tokens for each row of a batch made of chunks (cond or uncond) of rows_per_chunk rows."""
        cond_tokens = self.cond_tokens if self.window is None else self.cond_tokens[self.window[0]:self.window[1]]
        if cond_tokens.shape[0] not in (1, rows_per_chunk):
            raise ValueError(
                f"the identity-conditioned MODEL carries {self.faces} identity embeddings but is sampling a batch of "
                f"{rows_per_chunk} latents: connect exactly one embedding per face, in the order of the latents")
        parts = []
        for c in cond_or_uncond:
            src = cond_tokens if c == COND else self.null_tokens
            parts.append(src.expand(rows_per_chunk, -1, -1) if src.shape[0] == 1 else src)
        return torch.cat(parts).to(device=device, dtype=dtype)


class IdentityAttention:
    """attn2 replacement: text attention + scale · attention(q, to_k_ip(tokens), to_v_ip(tokens))."""

    def __init__(self, tokens: IdentityTokens, adapter: FaceIDAdapter, block: int, inner=None):
        self.tokens = tokens
        self.adapter = adapter  # holds to_k_ip / to_v_ip (one copy per device, shared by every patched MODEL)
        self.block = block
        self.inner = inner  # an attn2 replacement that was there before ours (its result is the text attention)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(q, k, v, heads)
        chunks = extra_options.get("cond_or_uncond") or [COND]
        if q.shape[0] % len(chunks):
            raise ValueError(f"batch of {q.shape[0]} rows does not split into {len(chunks)} cond/uncond chunks")
        tokens = self.tokens.rows(chunks, q.shape[0] // len(chunks), q.device, q.dtype)
        to_k_ip, to_v_ip = self.adapter.identity_weights_on(self.block, q.device)
        ip_k = F.linear(tokens, to_k_ip.to(dtype=q.dtype))
        ip_v = F.linear(tokens, to_v_ip.to(dtype=q.dtype))
        return out + self.tokens.scale * comfy_attention.optimized_attention(q, ip_k, ip_v, heads)

    def to(self, *args, **kwargs):
        # ComfyUI hands patches the model's device when it loads it (and a dtype, which the weights ignore: they
        # are cast per call, so no second full-precision copy is kept). When the model is offloaded, drop the
        # device copies.
        targets = [a for a in list(args) + list(kwargs.values()) if isinstance(a, (torch.device, str))]
        for target in targets:
            if torch.device(target).type == "cpu":
                self.adapter.release_device_copies()
            else:
                self.adapter.identity_weights_on(self.block, target)
        return self

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; the adapter and tokens are shared, never copied.
        return IdentityAttention(self.tokens, self.adapter, self.block, self.inner)


def _attn2_replacements(model) -> Dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def identity_of(model) -> Optional[IdentityTokens]:
    """The identity tokens a MODEL was patched with by `apply_faceid`, or None."""
    for patch in _attn2_replacements(model).values():
        if isinstance(patch, IdentityAttention):
            return patch.tokens
    return None


def apply_faceid(model, adapter: FaceIDAdapter, embeddings: Optional[torch.Tensor], scale: float):
    """A clone of ``model`` with the FaceID adapter: LoRA weight patches at weight 1 and identity attention
    in every cross-attention. ``embeddings`` [F, E] go to the conditional branch (face i ↔ latent i); with
    None both branches carry the null identity (the inversion's model). The input MODEL is not changed."""
    sites = attention_sites(model)
    adapter.check_fits([s.slot for s in sites], describe_model(model, sites))
    existing = _attn2_replacements(model)
    if any(isinstance(p, IdentityAttention) for p in existing.values()):
        raise ValueError("this MODEL already carries a FaceID identity patch (Identity Conditioning (RevPers) was applied "
                         "twice); connect the model from before the first one")

    if embeddings is None:
        cond = torch.zeros(1, adapter.embedding_dim)
    else:
        cond = torch.as_tensor(embeddings).detach().to(device="cpu", dtype=torch.float32)
        if cond.ndim != 2 or cond.shape[0] < 1 or cond.shape[1] != adapter.embedding_dim:
            raise ValueError(f"identity embeddings must be [faces, {adapter.embedding_dim}] for adapter "
                             f"'{adapter.name}' (got shape {tuple(cond.shape)})")
    cond_tokens, null_tokens = adapter.project_with_null(cond)
    tokens = IdentityTokens(cond_tokens, null_tokens, scale, embeddings is not None, adapter.name)

    patched = model.clone()
    weight_patches = {}
    for b, site in enumerate(sites):
        for name, delta in adapter.lora_deltas(b, _weight_dtype(model.model, site)).items():
            attn, proj = name.split(".")
            weight_patches[f"{site.prefix}.{attn}.{'to_out.0' if proj == 'to_out' else proj}.weight"] = (delta,)
    if weight_patches:
        accepted = set(patched.add_patches(weight_patches, 1.0))
        missing = sorted(set(weight_patches) - accepted)
        if missing:
            raise RuntimeError(f"the MODEL did not accept the FaceID LoRA for {len(missing)} weights (e.g. {missing[0]})")
        base_uuid = getattr(model, "patches_uuid", None)
        if base_uuid is not None and hasattr(patched, "patches_uuid"):
            # Two clones of one base with the same adapter have identical weights: let ComfyUI know, so it does
            # not re-patch the UNet between the inversion's model and the identity model.
            patched.patches_uuid = uuid.uuid5(_UUID_NAMESPACE, f"{base_uuid}/{adapter.uid}")
    for b, site in enumerate(sites):
        inner = existing.get((site.block_name, site.number, site.index))
        patched.set_model_attn2_replace(IdentityAttention(tokens, adapter, b, inner), site.block_name, site.number,
                                        site.index)
    return patched


def _weight_dtype(base_model, site: AttentionSite) -> torch.dtype:
    from comfy.utils import get_attr
    return get_attr(base_model, f"{site.prefix}.attn1.to_q.weight").dtype


# ---------------------------------------------------------------------------------------------
# schedule

def _model_sampling(model):
    getter = getattr(model, "get_model_object", None)
    if getter is not None:
        try:
            return getter("model_sampling")
        except Exception:
            pass
    return model.object_patches.get("model_sampling", model.model.model_sampling)


_BETA_NAMES = {"linear": "scaled_linear", "sqrt_linear": "linear"}  # ComfyUI name → diffusers name


def model_schedule(model) -> solver.NoiseSchedule:
    """The ᾱ table of a ComfyUI MODEL, computed the reference's way (float32, from its beta schedule) when the
    model uses a standard β schedule, else taken from the model's own sigmas."""
    ms = _model_sampling(model)
    cls = type(ms)
    discrete = isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete) and cls.__name__ != "StableCascadeSampling"
    eps_like = (cls.calculate_input is comfy.model_sampling.EPS.calculate_input
                and cls.calculate_denoised in (comfy.model_sampling.EPS.calculate_denoised,
                                               comfy.model_sampling.V_PREDICTION.calculate_denoised))
    if not (discrete and eps_like):
        raise ValueError(f"the MODEL ({model_name(model)}) uses {cls.__name__} sampling; the inversion needs a "
                         "discrete-time ε- or v-prediction model (SD1.5 / SDXL family)")
    sigmas = ms.sigmas.detach().to("cpu", torch.float64)
    comfy_ac = 1.0 / (1.0 + sigmas ** 2)
    settings = getattr(getattr(model.model, "model_config", None), "sampling_settings", {}) or {}
    name = _BETA_NAMES.get(settings.get("beta_schedule", "linear"))
    if name is not None and hasattr(ms, "linear_start") and not getattr(ms, "zsnr", False):
        ref = solver.NoiseSchedule.from_betas(name, ms.linear_start, ms.linear_end, len(sigmas))
        if torch.allclose(ref.alphas_cumprod.double(), comfy_ac, rtol=1e-5, atol=0):
            return ref
    return solver.NoiseSchedule(comfy_ac.float())


def _step_sigmas(model, schedule: solver.NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """σ_ve of every step's timestep, then of t = 0 (after the last step); checks that the model maps each back
    to exactly its discrete timestep."""
    ts = [int(t) for t in timesteps]
    sig = torch.stack([schedule.sigma_ve(t) for t in ts] + [schedule.sigma_ve(0)])
    ms = _model_sampling(model)
    back = ms.timestep(sig[:-1].to(ms.sigmas.device)).detach().cpu().round().long()
    if back.tolist() != ts:
        raise RuntimeError(f"the MODEL's sampling maps the solver's noise levels to timesteps {back.tolist()[:5]}… "
                           f"instead of {ts[:5]}…; its noise schedule is not the one the solver assumes")
    return sig


def _solver_sampler(run: Callable) -> "comfy.samplers.KSAMPLER":
    """A KSAMPLER whose function hands the solver a VP-form denoiser: denoise(x_vp, j) → m at sigmas[j]."""

    def sample_fn(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])

        def denoise(x_vp, j):
            sigma = sigmas[j] * s_in
            # the model divides its input by √(σ² + 1) (computed the same way there), giving back x_vp
            x_ve = x_vp * (sigma.view(-1, *([1] * (x_vp.ndim - 1))) ** 2 + 1.0) ** 0.5
            m = model(x_ve, sigma, **extra_args)
            if callback is not None:
                callback({"x": x_ve, "i": j, "sigma": sigmas[j], "sigma_hat": sigmas[j], "denoised": m})
            return m

        return run(denoise, x)

    return comfy.samplers.KSAMPLER(sample_fn)


def _record_to(record: solver.InversionRecord, device) -> solver.InversionRecord:
    return solver.InversionRecord(record.x_T.to(device), record.noise_maps.to(device), record.timesteps.cpu(),
                                  record.alphas_cumprod.cpu(), record.last_data_prediction.to(device), record.guidance,
                                  record.skip, record.seed, list(record.step_orders))


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
        free = comfy.model_management.get_free_memory(model.load_device)
        max_rows = row_budget.automatic_rows(free, lambda n: model.model.memory_required([n] + shape))
    return row_budget.face_chunks(faces, max_rows)


def run_inversion(model, latent: torch.Tensor, positive, negative, guidance: float, steps: int, skip: float, seed: int,
                  on_step=None, max_rows: int = 0) -> Tuple[solver.InversionRecord, torch.Tensor]:
    """Edit-friendly inversion of LATENT samples (user latent space) → (record in the model's latent space,
    x_T in user latent space), the faces in chunks under the row budget."""
    schedule = model_schedule(model)
    timesteps = solver.inversion_timesteps(steps, skip, schedule.num_train_timesteps)
    sigmas = _step_sigmas(model, schedule, timesteps)
    chunks = face_chunks(model, latent.shape, latent.shape[0], max_rows)
    records, starts = [], []
    for c, (a, b) in enumerate(chunks):
        progress = _chunked_progress(on_step, c, len(chunks))

        def run(denoise, x0):
            records.append(solver.invert(x0, denoise, schedule, timesteps, seed, on_step=progress,
                                         guidance=guidance, skip=skip))
            return records[-1].x_T

        starts.append(comfy.sample.sample_custom(model, torch.zeros_like(latent[a:b]), float(guidance),
                                                 _solver_sampler(run), sigmas, positive, negative, latent[a:b],
                                                 disable_pbar=True, seed=int(seed)))
    record = records[0] if len(records) == 1 else solver.InversionRecord.joined(records)
    return _record_to(record, "cpu"), torch.cat(starts)


def with_size(conditioning, size: int):
    """Copies of the conds whose SDXL size conditioning (width/height/target_width/target_height) is ``size``."""
    return [[c[0], {**c[1], "width": size, "height": size, "target_width": size, "target_height": size}]
            for c in conditioning]


def with_row_guidance(model, guidance: float, scales: Sequence[float]):
    """``model`` itself when every row is guided with ``guidance``; else a clone whose guided data prediction
    is, for each row i whose scale g_i differs, m_u + (m_c − m_u)·g_i (ComfyUI's own formula, so a row's
    arithmetic depends only on its own scale). The other rows keep ComfyUI's result untouched, bit for bit:
    guaranteed mode re-samples failing faces while the others come out identical."""
    rows = [i for i, g in enumerate(scales) if float(g) != float(guidance)]
    if not rows:
        return model

    def post_cfg(args):
        guided = args["denoised"]
        cond, uncond = args["cond_denoised"], args["uncond_denoised"]
        if guided.shape[0] != len(scales):
            raise ValueError(f"per-face guidance has {len(scales)} rows but the sampler's batch has {guided.shape[0]}")
        out = guided.clone()
        index = torch.tensor(rows, device=guided.device)
        g = torch.tensor([float(scales[i]) for i in rows], dtype=guided.dtype, device=guided.device)
        g = g.view(-1, *([1] * (guided.ndim - 1)))
        out[index] = uncond[index] + (cond[index] - uncond[index]) * g
        return out

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(post_cfg)
    return patched


def run_sampling(model, record: solver.InversionRecord, positive, negative, guidance: float,
                 reference_compat: bool = False, reference_size: int = 1024, on_step=None,
                 row_scales: Optional[Sequence[float]] = None, max_rows: int = 0) -> torch.Tensor:
    """Replay the solver from the record's x_T with its noise maps → final latents (user latent space), the
    faces in chunks under the row budget. ``row_scales``: one guidance per face (see `with_row_guidance`);
    None = ``guidance`` for all."""
    schedule = model_schedule(model)
    if not schedule.same_as(record.schedule):
        raise ValueError("the MODEL's noise schedule differs from the one the inversion used: sample with the same "
                         "checkpoint that was inverted")
    sigmas = _step_sigmas(model, record.schedule, record.timesteps)
    if reference_compat:
        positive, negative = with_size(positive, reference_size), with_size(negative, reference_size)
    tokens = identity_of(model)
    chunks = face_chunks(model, record.x_T.shape, record.batch_size, max_rows)
    outs = []
    for c, (a, b) in enumerate(chunks):
        part, progress = record.faces(a, b), _chunked_progress(on_step, c, len(chunks))
        chunk_model = model if row_scales is None else with_row_guidance(model, guidance, row_scales[a:b])

        def run(denoise, x, part=part, progress=progress):
            rec = _record_to(part, x.device)
            return solver.sample(rec, denoise, reference_compat=reference_compat, on_step=progress,
                                 x_T=rec.x_T.to(dtype=x.dtype))

        latent = model.model.process_latent_out(part.x_T.clone())
        with tokens.chunk(a, b) if tokens is not None else contextlib.nullcontext():
            outs.append(comfy.sample.sample_custom(chunk_model, torch.zeros_like(latent), float(guidance),
                                                   _solver_sampler(run), sigmas, positive, negative, latent,
                                                   disable_pbar=True, seed=int(record.seed)))
    return torch.cat(outs)
