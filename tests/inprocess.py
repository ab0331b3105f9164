"""ComfyUI inside the pytest process, for tests that call the pack's node classes directly on
ComfyUI's own model classes (no HTTP in between)."""
import importlib.util
import sys

from paths import HOST, REPO

PACK_NAME = "revpers_pack"


def load_comfy_and_pack():
    """Make ComfyUI importable on the CPU with PyTorch attention, then import the pack as ComfyUI
    would (as a package from its folder). Returns the pack module."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    if not (HOST / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {HOST}: run `bash scripts/install_host.sh` or set COMFYUI_DIR")
    if str(HOST) not in sys.path:
        sys.path.insert(0, str(HOST))
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401  (reads args once, at import)
    import folder_paths  # noqa: F401
    import nodes  # noqa: F401  ComfyUI's own nodes.py, before the pack's nodes/ package is importable

    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return pack
