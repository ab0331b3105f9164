"""The pack's ComfyUI nodes, one module per stage (docs/architecture.md):

    face_analysis.py   Face Analysis Loader (InsightFace's detector and ArcFace, for every face stage)
    detect_align.py    Detect and Align Faces        detect_track.py   Detect and Track Faces (clips)
    embedding.py       ArcFace embedding             adapter.py        FaceID Adapter Loader
    latent.py          VAE Encode (mode)             inversion.py      inverse diffusion (Invert)
    identity.py        identity-guided conditioning  modulation.py     attribute modulation
    sampler.py         anonymized sampling           paste_back.py     Paste Back Faces
    anonymity.py, audit.py   the checks of the result

Each module defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for its own nodes; they are
gathered here in module order, and a name defined twice is an error at import time.
"""
import importlib
import pkgutil

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "common":
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name, _cls in getattr(_module, "NODE_CLASS_MAPPINGS", {}).items():
        if _name in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"node {_name} is defined twice (again in nodes/{_info.name}.py)")
        NODE_CLASS_MAPPINGS[_name] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
