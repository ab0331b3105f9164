"""What every node module of the pack shares: the category root, the pack's own ComfyUI types, the
inputs several nodes declare alike, model-folder registration, and the bridge from revpers_core's
progress callbacks to ComfyUI's progress bar and interrupt button. Nothing here does maths.

The nodes are ComfyUI V3 nodes (`io.ComfyNode`: `define_schema` declares, `execute` runs), written
against the versioned API `comfy_api.v0_0_2`, which ComfyUI 0.3.75 and 0.33 carry alike."""
import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.v0_0_2 import io

from revpers_core import row_budget

CATEGORY = "Reverse Personalization"


def category(sub=None):
    return CATEGORY if not sub else f"{CATEGORY}/{sub}"


# Types the pack adds (only where ComfyUI has no equivalent). The strings are the type names the front
# end, /object_info and saved workflows see; each node module uses the classes (`Faces.Input(...)`).
FaceAnalysis = io.Custom("REVPERS_FACE_ANALYSIS")  # a loaded InsightFace analyser
Faces = io.Custom("REVPERS_FACES")  # detected faces: image index, box, landmarks, transform, score
Embedding = io.Custom("REVPERS_EMBEDDING")  # identity embeddings, one row per face
FaceIDAdapter = io.Custom("REVPERS_FACEID_ADAPTER")  # IP-Adapter-FaceID weights (projection, to_k/v_ip, LoRA)
Inversion = io.Custom("REVPERS_INVERSION")  # x_T, noise maps and schedule of an edit-friendly inversion
AnonymityReport = io.Custom("REVPERS_ANONYMITY_REPORT")  # per-face identity similarity before/after
AuditReport = io.Custom("REVPERS_AUDIT_REPORT")  # the audit of final images: per face and recognizer, verdicts


def max_rows_input():
    """The row budget of Invert and Anonymized Sampler (revpers_core.row_budget), an optional input."""
    return io.Int.Input(
        "max_rows", optional=True, default=0, min=0, max=row_budget.MAX_ROWS, step=2,
        tooltip="Most latent rows per model call (each face takes 2: both branches). More faces are taken in "
                "chunks, each through all steps, with the same result as one batch. 0 = automatic, from the "
                "device's free memory by ComfyUI's own estimate.")


def bounded_float(name, default, bounds, tooltip, step=0.01):
    """A FLOAT widget whose limits are a core rule's bounds, so no widget value gets past the core's check."""
    return io.Float.Input(name, default=default, min=bounds[0], max=bounds[1], step=step, tooltip=tooltip)


def check_options(node, **values):
    """The body of a node's `validate_inputs` for its Combo inputs: True, or a message naming the value
    that is not one of the input's options.

    Every ComfyUI refused a V1 combo value outside its list when the prompt was queued; ComfyUI 0.3.75
    does not check a V3 Combo's value at all (0.33 does), so a mistyped choice (an `on_fail` of the audit,
    a model pack path) would reach the node. Nodes name their Combo inputs in `validate_inputs`, which the
    host calls at queue time on both versions. A linked value is not known then (None) and is not
    checked, as before."""
    options = {i.id: i.options for i in node.define_schema().inputs if isinstance(i, io.Combo.Input)}
    for name, value in values.items():
        if value is not None and value not in options[name]:
            shown = options[name] if len(options[name]) <= 20 else f"the {len(options[name])} listed"
            return f"{name}: {value!r} is not one of {shown}"
    return True


# Model folders the pack reads, with the extensions it accepts in each.
MODEL_FOLDERS = {
    "ipadapter": {".bin", ".safetensors"},
    "insightface": {".onnx"},
}


def register_model_folders():
    """Register models/ipadapter and models/insightface with folder_paths (idempotent).

    A folder an extra_model_paths.yaml already declared keeps its paths; ours is added beside them
    and the extensions are merged, so both IPAdapter_plus users' layout and our own work.
    """
    for name, exts in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))


def model_folder_paths(name):
    """All paths registered for a model folder (the default one first if nothing else is set)."""
    return list(folder_paths.get_folder_paths(name))


class Progress:
    """revpers_core reports long work as `on_step(done, total)`; this shows it on ComfyUI's progress
    bar (and so on the websocket) and stops the run between steps when the user presses Cancel."""

    def __init__(self, total):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)
