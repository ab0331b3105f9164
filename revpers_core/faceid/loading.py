"""Loading a FaceID adapter: a checkpoint read safely (`files`), validated, and wrapped as a `FaceIDAdapter`."""
from __future__ import annotations

import os
import re
from typing import Dict, Mapping, Tuple

import torch

from .adapter import LORA_PROJECTIONS, FaceIDAdapter
from .files import WHERE_TO_GET, _load_state

IMAGE_PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip|to_(?:q|k|v|out)_lora\.(?:down|up))\.weight$")


def _split_sections(state: Mapping, name: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    if not isinstance(state, Mapping):
        raise ValueError(f"FaceID adapter '{name}' does not hold a dictionary of weights (found {type(state).__name__}).")
    if "image_proj" in state and "ip_adapter" in state:
        image_proj, ip_adapter = state["image_proj"], state["ip_adapter"]
        if not isinstance(image_proj, Mapping) or not isinstance(ip_adapter, Mapping):
            raise ValueError(f"FaceID adapter '{name}': 'image_proj' and 'ip_adapter' must both be dictionaries of tensors.")
        image_proj, ip_adapter = dict(image_proj), dict(ip_adapter)
    else:
        image_proj = {k[len("image_proj."):]: v for k, v in state.items() if str(k).startswith("image_proj.")}
        ip_adapter = {k[len("ip_adapter."):]: v for k, v in state.items() if str(k).startswith("ip_adapter.")}
        if not image_proj or not ip_adapter:
            sample = ", ".join(sorted(map(str, state.keys()))[:6])
            raise ValueError(f"FaceID adapter '{name}' is not an IP-Adapter file: expected the sections image_proj and "
                             f"ip_adapter (nested, or flattened as image_proj.* / ip_adapter.* keys); found keys like "
                             f"{sample or '(none)'}. {WHERE_TO_GET}.")
    for section, tensors in (("image_proj", image_proj), ("ip_adapter", ip_adapter)):
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"FaceID adapter '{name}': {section}.{k} is a {type(v).__name__}, not a tensor.")
    return image_proj, ip_adapter


def faceid_adapter_from_state_dict(state: Mapping, name: str) -> FaceIDAdapter:
    """Validate a loaded checkpoint and wrap it as a `FaceIDAdapter` (errors name the file)."""
    image_proj, ip_adapter = _split_sections(state, name)

    missing = [k for k in IMAGE_PROJ_KEYS if k not in image_proj]
    extra = sorted(set(image_proj) - set(IMAGE_PROJ_KEYS))
    if missing or extra:
        hint = ""
        if any("perceiver" in k or "latents" in k or "proj_in" in k for k in image_proj):
            hint = " It looks like a FaceID Plus / Portrait or image IP-Adapter, which this node does not use."
        raise ValueError(f"FaceID adapter '{name}' is not an IP-Adapter-FaceID file: its image_proj must hold exactly "
                         f"{', '.join(IMAGE_PROJ_KEYS)} (missing: {', '.join(missing) or 'none'}; unexpected: "
                         f"{', '.join(extra[:6]) or 'none'}).{hint} {WHERE_TO_GET}.")
    w1, b1, w2, b2 = (image_proj[k] for k in IMAGE_PROJ_KEYS[:4])
    nw, nb = image_proj["norm.weight"], image_proj["norm.bias"]
    D = int(nw.shape[0]) if nw.ndim == 1 else -1
    ok = (w1.ndim == 2 and b1.shape == (w1.shape[0],) and w2.ndim == 2 and w2.shape[1] == w1.shape[0]
          and b2.shape == (w2.shape[0],) and nw.ndim == 1 and nb.shape == nw.shape and D > 0 and w2.shape[0] % D == 0)
    if not ok:
        raise ValueError(f"FaceID adapter '{name}': the projection's shapes are inconsistent (proj.0 {tuple(w1.shape)}, "
                         f"proj.2 {tuple(w2.shape)}, norm {tuple(nw.shape)}); the file is damaged or not a FaceID adapter.")

    processors: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, tensor in ip_adapter.items():
        m = _IP_KEY.match(str(key))
        if m is None:
            raise ValueError(f"FaceID adapter '{name}': unexpected key ip_adapter.{key} (expected {{n}}.to_k_ip.weight, "
                             f"{{n}}.to_v_ip.weight or {{n}}.to_{{q,k,v,out}}_lora.{{down,up}}.weight).")
        processors.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
    if not processors:
        raise ValueError(f"FaceID adapter '{name}' has no attention layers in ip_adapter.")
    P = max(processors) + 1
    if P % 2:
        raise ValueError(f"FaceID adapter '{name}': the attention layers must come in self/cross pairs, but the last "
                         f"layer is number {P - 1}.")
    for n in range(P):
        p = processors.get(n, {})
        has_ip = "to_k_ip" in p or "to_v_ip" in p
        if n % 2 == 1:
            if "to_k_ip" not in p or "to_v_ip" not in p:
                raise ValueError(f"FaceID adapter '{name}': cross-attention layer {n} lacks to_k_ip/to_v_ip "
                                 f"(the file is incomplete).")
            k_ip, v_ip = p["to_k_ip"], p["to_v_ip"]
            if k_ip.ndim != 2 or k_ip.shape != v_ip.shape or k_ip.shape[1] != D:
                raise ValueError(f"FaceID adapter '{name}': layer {n} to_k_ip {tuple(k_ip.shape)} / to_v_ip "
                                 f"{tuple(v_ip.shape)} must both be (inner width, {D}).")
        elif has_ip:
            raise ValueError(f"FaceID adapter '{name}': self-attention layer {n} carries to_k_ip/to_v_ip, which only "
                             f"cross-attention layers (odd numbers) have.")
        for proj in LORA_PROJECTIONS:
            down, up = p.get(f"{proj}_lora.down"), p.get(f"{proj}_lora.up")
            if (down is None) != (up is None):
                raise ValueError(f"FaceID adapter '{name}': layer {n} has only half of its {proj} LoRA (down and up "
                                 f"must both be present).")
            if down is not None and (down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]):
                raise ValueError(f"FaceID adapter '{name}': layer {n} {proj} LoRA shapes do not chain "
                                 f"(up {tuple(up.shape)}, down {tuple(down.shape)}).")
    return FaceIDAdapter(name=name, image_proj=dict(image_proj), processors=processors, num_processors=P)


def load_faceid_adapter(path: str) -> FaceIDAdapter:
    """Load an IP-Adapter-FaceID checkpoint (.bin torch pickle or .safetensors) without running any code
    it might contain, and validate its layout. The identity projections are let go after the check and
    read from the file again when identity tokens are projected (`FaceIDAdapter.reading_identity_weights`)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FaceID adapter '{name}' not found at {path}. {WHERE_TO_GET}.")
    # Memory-mapped where the file allows (a zip-format .bin): the identity projections' bytes are not read here.
    adapter = faceid_adapter_from_state_dict(_load_state(path, mmap=True), name)
    adapter.release_identity_weights(path)
    return adapter
