"""What every node module of the pack shares: the category root, the pack's own ComfyUI types,
model-folder registration, and the bridge from revpers_core's progress callbacks to ComfyUI's
progress bar and interrupt button. Nothing here does maths."""
import os

import comfy.model_management
import comfy.utils
import folder_paths

from revpers_core import row_budget

CATEGORY = "Reverse Personalization"


def category(sub=None):
    return CATEGORY if not sub else f"{CATEGORY}/{sub}"


# Types the pack adds (only where ComfyUI has no equivalent).
FACE_ANALYSIS = "REVPERS_FACE_ANALYSIS"  # a loaded InsightFace analyser
FACES = "REVPERS_FACES"  # detected faces: image index, box, landmarks, transform, score
EMBEDDING = "REVPERS_EMBEDDING"  # identity embeddings, one row per face
FACEID_ADAPTER = "REVPERS_FACEID_ADAPTER"  # IP-Adapter-FaceID weights (projection, to_k/v_ip, LoRA)
INVERSION = "REVPERS_INVERSION"  # x_T, noise maps and schedule of an edit-friendly inversion
ANONYMITY_REPORT = "REVPERS_ANONYMITY_REPORT"  # per-face identity similarity before/after
AUDIT_REPORT = "REVPERS_AUDIT_REPORT"  # the audit of final images: per face and recognizer, verdicts

# The row budget of Invert and Anonymized Sampler (revpers_core.row_budget).
MAX_ROWS_INPUT = ("INT", {
    "default": 0, "min": 0, "max": row_budget.MAX_ROWS, "step": 2,
    "tooltip": "Most latent rows per model call (each face takes 2: both branches). More faces are taken in "
               "chunks, each through all steps, with the same result as one batch. 0 = automatic, from the "
               "device's free memory by ComfyUI's own estimate."})

def bounded_float(default, bounds, tooltip, step=0.01):
    """A FLOAT widget whose limits are a core rule's bounds, so no widget value gets past the core's check."""
    return ("FLOAT", {"default": default, "min": bounds[0], "max": bounds[1], "step": step, "tooltip": tooltip})


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
