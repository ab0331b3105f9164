"""ComfyUI glue (not a node module): where the attention layers of a ComfyUI UNet sit, in the order the
IP-Adapter numbers them, with the names ComfyUI's patches and weight keys use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import comfy.ldm.modules.attention as comfy_attention

from revpers_core.faceid import TransformerSlot


@dataclass(frozen=True)
class AttentionSite:
    """Where one transformer block of the UNet sits, for ComfyUI's patch keys and weight names."""

    block_name: str  # "input" | "middle" | "output"
    number: int  # index of the block in its list (0 for the middle block)
    index: int  # index of the transformer block inside its SpatialTransformer
    prefix: str  # state-dict prefix of the transformer block, e.g. diffusion_model.input_blocks.4.1.transformer_blocks.0
    slot: TransformerSlot

    def weight_key(self, attention: str, projection: str) -> str:
        """The state-dict key of a projection's weight, e.g. (attn2, to_out) → …attn2.to_out.0.weight."""
        return f"{self.prefix}.{attention}.{'to_out.0' if projection == 'to_out' else projection}.weight"


def _weight_shapes(block) -> Dict[str, Tuple[int, int]]:
    shapes = {}
    for attn in ("attn1", "attn2"):
        layer = getattr(block, attn)
        for proj in ("to_q", "to_k", "to_v"):
            shapes[f"{attn}.{proj}"] = tuple(getattr(layer, proj).weight.shape)
        shapes[f"{attn}.to_out"] = tuple(layer.to_out[0].weight.shape)
    return shapes


def _block_groups(dm):
    middle = [dm.middle_block] if getattr(dm, "middle_block", None) is not None else []
    return [("input", "input_blocks", list(dm.input_blocks)), ("output", "output_blocks", list(dm.output_blocks)),
            ("middle", "middle_block", middle)]


def attention_sites(model) -> List[AttentionSite]:
    """The transformer blocks of a ComfyUI UNet in the IP-Adapter's layer order: input blocks ascending,
    output blocks ascending, then the middle block (diffusers' down, up, mid)."""
    dm = getattr(model.model, "diffusion_model", None)
    if dm is None or not hasattr(dm, "input_blocks"):
        raise ValueError(f"the MODEL ({model_name(model)}) is not a UNet with input/output blocks; the FaceID adapter "
                         "needs an SD1.5- or SDXL-family UNet")
    sites = []
    for block_name, attr, blocks in _block_groups(dm):
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
