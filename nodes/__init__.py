"""The pack's ComfyUI nodes, one module per stage (docs/architecture.md):

    face_analysis.py   Face Analysis Loader (InsightFace's detector and ArcFace, for every face stage)
    detect_align.py    Detect and Align Faces        detect_track.py   Detect and Track Faces (clips)
    embedding.py       ArcFace embedding             adapter.py        FaceID Adapter Loader
    latent.py          VAE Encode (mode)             inversion.py      inverse diffusion (Invert)
    identity.py        identity-guided conditioning  modulation.py     attribute modulation
    sampler.py         anonymized sampling           paste_back.py     Paste Back Faces
    anonymity.py, audit.py   the checks of the result

Every node is a ComfyUI V3 node (`io.ComfyNode`). Each module lists its nodes in NODES; they are
gathered here in module order into NODE_LIST, which the pack's ComfyExtension hands to ComfyUI
(__init__.py, `comfy_entrypoint`), and into BY_ID, node id -> class, for tests and tools: each class
is named after its node id (schemas are not built at import, as one lists model folders that the
pack registers first). A node id defined twice is an error at import time.
"""
import importlib
import pkgutil

NODE_LIST = []
BY_ID = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "common":
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _cls in getattr(_module, "NODES", ()):
        if _cls.__name__ in BY_ID:
            raise RuntimeError(f"node {_cls.__name__} is defined twice (again in nodes/{_info.name}.py)")
        BY_ID[_cls.__name__] = _cls
        NODE_LIST.append(_cls)
