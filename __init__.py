"""Reverse Personalization for ComfyUI: face anonymization by negative identity guidance.

ComfyUI imports this package from its custom_nodes folder. Everything here only registers the pack:
the model folders it reads, and the node classes from `nodes/`. The method itself lives in
`revpers_core`, which never imports ComfyUI.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    # `revpers_core` is a top-level package of this repository; make it importable when ComfyUI
    # loads the pack from custom_nodes without it being pip-installed.
    sys.path.append(_here)

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ImportError:
    # Imported outside ComfyUI (pytest collecting this folder, a linter): there is no host to
    # register nodes with. revpers_core stays usable on its own.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.common import register_model_folders

    register_model_folders()

WEB_DIRECTORY = "./web"  # web/revpers.js: what the nodes report after a run, shown on the nodes
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def _warn_about_environment():
    import logging

    from revpers_core.environment import onnxruntime_clash

    message = onnxruntime_clash()
    if message:
        logging.warning("[Reverse Personalization] %s", message)


_warn_about_environment()
