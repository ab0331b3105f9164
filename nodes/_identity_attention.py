"""ComfyUI glue (not a node module): the FaceID adapter put on a ModelPatcher.

* Identity attention: every cross-attention ``attn2`` of the UNet is replaced (ModelPatcher
  ``set_model_attn2_replace``) by text attention + scale · attention(q, K_ip, V_ip), where K_ip and V_ip
  are the projected identity tokens of each batch row (revpers_core.conditioning routes them: the
  face's on the conditional branch, the null embedding's on the unconditional branch; ComfyUI tells
  which part of a batch is which through ``cond_or_uncond``).
* The FaceID LoRA, held as the file's low-rank factors and put on in one of two ways (`lora_mode`):
  "merge" where the model runs on a device apart from its offload device (a GPU): the factors go to
  ComfyUI's own LoRA loader (``comfy.lora.load_lora``, which returns them in the host's patch format: a
  weight adapter on current ComfyUI, a ``("lora", ...)`` tuple on the 2024 snapshot), and ComfyUI merges
  them, W + up·down at weight 1, when it loads the model; the device holds the merged weights only.
  "low-rank" where the model runs on its offload device (the CPU), where a merge would hold every patched
  weight twice (ComfyUI keeps the original beside the merged one, to unpatch): each projection adds
  up·(down·x) at run time (revpers_core.faceid.LoraForward, as object patches), so the LoRA costs what
  its factors cost in the file (float16 in the published files; where the model computes in float32, as on
  the CPU, each pair is cast at its call, as ComfyUI casts the UNet's own weights).
* The UNet's per-row layers computed two rows at a time, as for a face alone (revpers_core.row_budget.
  RowPairs, as object patches), so a face's result does not depend on how many faces share its call.

A MODEL and its clones: ComfyUI's ``clone()`` copies ``model_options`` and the patch tables to a depth that
differs between releases (a deep copy on some, a copy of the lists and dicts only on others), so the
objects the pack keeps there are shared by a model and its clones on some hosts. They hold nothing that
changes: the identity tokens are fixed when made, which faces a call carries comes with the call
(`FACE_WINDOW` in its transformer options, set for one run by nodes/_diffusion_runs.py), the LoRA and
row-pair patches keep only references. Where the pack writes into a clone (`own_tables`), it first makes
the tables it writes into the clone's own, whatever the host's copy did.
"""
from __future__ import annotations

import re
import uuid
from typing import Dict, Optional

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.lora
import comfy.utils

from revpers_core.conditioning import IdentityTokens, identity_tokens
from revpers_core.faceid import FaceIDAdapter, LoraForward
from revpers_core.row_budget import RowPairs

from ._unet_sites import attention_sites, describe_model

COND = 0  # ComfyUI's cond_or_uncond: 0 = the conditional branch, 1 = the unconditional one
# The transformer option that tells a call which faces it carries: (start, stop), one chunk of the faces
# (revpers_core.row_budget); absent = all of them.
FACE_WINDOW = "revpers_face_window"
_UUID_NAMESPACE = uuid.UUID("5f0c2a3e-8d7b-4c1e-9a55-3b1e0c6f4d21")
LORA_MODES = ("auto", "merge", "low-rank")
_PER_ROW_LAYER = re.compile(r"^(time_embed|label_emb)\.|\.emb_layers\.")


class IdentityAttention:
    """attn2 replacement: text attention + scale · attention(q, K_ip, V_ip). Holds references only (the
    tokens, its block, the replacement it wraps), none of them changed by a run: a clone may share it."""

    def __init__(self, tokens: IdentityTokens, block: int, inner=None):
        self.tokens = tokens  # shared by every layer of one patched MODEL
        self.block = block
        self.inner = inner  # an attn2 replacement that was there before ours (its result is the text attention)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = comfy_attention.optimized_attention(q, k, v, heads)
        conditional = [c == COND for c in extra_options.get("cond_or_uncond") or [COND]]
        return self.tokens.attend(q, out, self.block, conditional,
                                  lambda q_, k_, v_: comfy_attention.optimized_attention(q_, k_, v_, heads),
                                  extra_options.get(FACE_WINDOW))

    def to(self, *args, **kwargs):
        # ComfyUI hands patches the model's device when it loads or offloads it (and its dtype, which the keys
        # and values ignore: they are made in the dtype of the queries). Only the projected keys and values
        # move; the adapter's weights stay where the file was loaded.
        for target in list(args) + list(kwargs.values()):
            if isinstance(target, (torch.device, str)):
                self.tokens.to(torch.device(target))
        return self

    def __deepcopy__(self, memo):
        # Hosts whose clone() deep-copies model_options get this very object, as hosts that copy only the
        # lists and dicts do: nothing in it changes, and copying would copy every projected key and value.
        return self


def copied_tables(value):
    """``value`` with every dict and list in it copied, all the way down; other objects kept (shared)."""
    if isinstance(value, dict):
        return {k: copied_tables(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copied_tables(v) for v in value]
    return value


def own_tables(patcher):
    """``patcher`` (a fresh clone) made the owner of every table the pack writes into: its model options
    (down to the lists and dicts inside), its object patches and its weight patches (each key's list), so
    that nothing written into it reaches the model it was cloned from, whatever the host's clone copied."""
    patcher.model_options = copied_tables(patcher.model_options)
    patcher.object_patches = dict(patcher.object_patches)
    patcher.patches = {key: list(patches) for key, patches in patcher.patches.items()}
    return patcher


def _attn2_replacements(model) -> Dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def identity_of(model) -> Optional[IdentityTokens]:
    """The identity tokens a MODEL was patched with by `apply_faceid`, or None."""
    for patch in _attn2_replacements(model).values():
        if isinstance(patch, IdentityAttention):
            return patch.tokens
    return None


def _lora_patches(adapter: FaceIDAdapter, sites) -> Dict:
    """The adapter's LoRA as ComfyUI's own loader makes LoRA patches for this host: {weight key: patch}."""
    factors, targets = {}, {}
    for b, site in enumerate(sites):
        for attn, proj, up, down in adapter.lora_layers(b):
            name = f"{b}.{attn}.{proj}"  # the loader's "{name}_lora.up.weight" naming (diffusers')
            factors[f"{name}_lora.up.weight"], factors[f"{name}_lora.down.weight"] = up, down
            targets[name] = site.weight_key(attn, proj)
    patches = comfy.lora.load_lora(factors, targets)
    if len(patches) != len(targets):
        raise RuntimeError(f"ComfyUI's LoRA loader made {len(patches)} patches of the FaceID LoRA's {len(targets)} "
                           "layers; this ComfyUI does not read diffusers-style LoRA factors")
    return patches


def lora_mode(model) -> str:
    """How `apply_faceid` puts the FaceID LoRA on ``model`` by default: "merge" where ComfyUI loads it on a
    device apart from its offload device, "low-rank" where both are one device (see the module's text)."""
    return "merge" if torch.device(model.load_device) != torch.device(model.offload_device) else "low-rank"


def _add_lora_merged(patched, adapter: FaceIDAdapter, sites, base_uuid) -> None:
    lora = _lora_patches(adapter, sites)
    accepted = set(patched.add_patches(lora, 1.0))
    if accepted != set(lora):
        missing = sorted(set(lora) - accepted)
        raise RuntimeError(f"the MODEL did not accept the FaceID LoRA for {len(missing)} weights (e.g. {missing[0]})")
    if base_uuid is not None:
        # Two clones of one base with the same adapter have identical weights: let ComfyUI know, so it does
        # not patch the UNet again between the inversion's model and the identity model.
        patched.patches_uuid = uuid.uuid5(_UUID_NAMESPACE, f"{base_uuid}/{adapter.uid}")


def _model_forward(patched, key: str, module):
    """The forward the MODEL itself runs for ``module`` (object patch ``key``): its own object patch there
    (another node's, kept under ours), else the layer class's forward. Never the live attribute, which is
    that of whichever clone ComfyUI has loaded at the moment (another node's, or ours)."""
    own = patched.object_patches.get(key)
    return own if own is not None else type(module).forward.__get__(module)


def _add_lora_low_rank(patched, adapter: FaceIDAdapter, sites) -> None:
    """Object patches: every projection the LoRA covers computed through LoraForward with the file's factors.
    No weight changes, so ComfyUI loads and patches no weight for them; it swaps the object patches whenever
    it loads another clone of the model (the base model runs without them)."""
    for b, site in enumerate(sites):
        for attn, n, proj, _, _ in adapter.lora_pairs(b):
            path = site.weight_key(attn, proj)[:-len(".weight")]
            key = f"{path}.forward"
            forward = _model_forward(patched, key, comfy.utils.get_attr(patched.model, path))
            patched.add_object_patch(key, LoraForward(forward, adapter, n, proj))


def _pair_per_row_layers(patched) -> None:
    """Object patches: every Linear of the UNet that takes one vector per batch row computed through RowPairs."""
    dm = patched.model.diffusion_model
    for name, module in dm.named_modules():
        if isinstance(module, torch.nn.Linear) and _PER_ROW_LAYER.search(name):
            key = f"diffusion_model.{name}.forward"
            forward = _model_forward(patched, key, module)
            patched.add_object_patch(key, forward if isinstance(forward, RowPairs) else RowPairs(forward))


def apply_faceid(model, adapter: FaceIDAdapter, embeddings: Optional[torch.Tensor], scale: float,
                 lora: str = "auto"):
    """A clone of ``model`` with the FaceID adapter: the LoRA at weight 1 (``lora``: "merge", "low-rank", or
    "auto" for `lora_mode`) and identity attention in every cross-attention. ``embeddings`` [F, E] go to
    the conditional branch (face i ↔ latent i); with None both branches carry the null identity (the
    inversion's model). The input MODEL is not changed."""
    if lora not in LORA_MODES:
        raise ValueError(f"lora must be one of {', '.join(LORA_MODES)} (got {lora!r})")
    sites = attention_sites(model)
    adapter.check_fits([s.slot for s in sites], describe_model(model, sites))
    existing = _attn2_replacements(model)
    if any(isinstance(p, IdentityAttention) for p in existing.values()):
        raise ValueError("this MODEL already carries a FaceID identity patch (Identity Conditioning (RevPers) was applied "
                         "twice); connect the model from before the first one")
    tokens = identity_tokens(adapter, embeddings, scale)

    patched = own_tables(model.clone())
    if adapter.has_lora:
        if (lora_mode(model) if lora == "auto" else lora) == "merge":
            _add_lora_merged(patched, adapter, sites, getattr(model, "patches_uuid", None))
        else:
            _add_lora_low_rank(patched, adapter, sites)
    _pair_per_row_layers(patched)
    for b, site in enumerate(sites):
        inner = existing.get((site.block_name, site.number, site.index))
        patched.set_model_attn2_replace(IdentityAttention(tokens, b, inner), site.block_name, site.number, site.index)
    return patched
