"""Reverse Personalization for ComfyUI: face anonymization by negative identity guidance.

ComfyUI imports this package from its custom_nodes folder. Everything here only registers the pack:
the model folders it reads, and the nodes of `nodes/` through ComfyUI's V3 extension entry point
(`comfy_entrypoint`, returning a ComfyExtension whose node list ComfyUI registers). The method itself
lives in `revpers_core`, which never imports ComfyUI.
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
    # register nodes with, and no entry point is offered. revpers_core stays usable on its own.
    pass
else:
    from comfy_api.v0_0_2 import ComfyExtension

    from .nodes import NODE_LIST
    from .nodes.common import register_model_folders

    register_model_folders()

    class ReversePersonalization(ComfyExtension):
        async def get_node_list(self):
            return list(NODE_LIST)

    async def comfy_entrypoint():
        """ComfyUI's V3 entry point (the pack defines no NODE_CLASS_MAPPINGS, which would take precedence)."""
        return ReversePersonalization()

WEB_DIRECTORY = "./web"  # web/revpers.js: what the nodes report after a run, shown on the nodes


def _warn_about_environment():
    import logging

    from revpers_core.environment import onnxruntime_clash

    message = onnxruntime_clash()
    if message:
        logging.warning("[Reverse Personalization] %s", message)


_warn_about_environment()
