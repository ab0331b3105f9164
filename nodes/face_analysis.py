"""Face analysis loader and ArcFace identity embedding nodes."""
import logging
import os

import torch

from revpers_core.faces import analysis, pipeline, tracks

from . import _images
from .common import EMBEDDING, FACE_ANALYSIS, FACES, category, model_folder_paths

log = logging.getLogger("revpers")


def _packs():
    """buffalo_l first (so a graph naming it always validates and a missing pack is reported by the
    loader itself), then every other folder under <insightface>/models holding .onnx files."""
    names = [analysis.DEFAULT_PACK]
    for root in model_folder_paths("insightface"):
        base = os.path.join(root, "models")
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            if entry not in names and os.path.isdir(path):
                names.append(entry)
    return names


class RevPersFaceAnalysisLoader:
    DESCRIPTION = (
        "Loads InsightFace face analysis (detector + ArcFace recognition) from "
        "models/insightface/models/<pack> - buffalo_l, the pack IPAdapter-FaceID was trained with. "
        "Nothing is downloaded: a missing pack is an error saying what to put where. Loaded models are "
        "cached, so re-running a graph does not reload them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_pack": (_packs(), {
                    "default": analysis.DEFAULT_PACK,
                    "tooltip": "Folder under models/insightface/models holding the .onnx files "
                               "(buffalo_l: det_10g.onnx, w600k_r50.onnx, ...)."}),
                "provider": (list(analysis.PROVIDERS), {
                    "default": "auto",
                    "tooltip": "ONNX Runtime device: auto uses CUDA when onnxruntime-gpu is installed, "
                               "else the CPU."}),
                "det_size": ("INT", {
                    "default": analysis.DEFAULT_DET_SIZE, "min": 160, "max": 2048, "step": 32,
                    "tooltip": "Side of the square the detector looks at (photos are scaled to fit). "
                               "Larger finds smaller faces, slower."}),
                "det_thresh": ("FLOAT", {
                    "default": analysis.DEFAULT_THRESHOLD, "min": 0.01, "max": 0.99, "step": 0.01,
                    "tooltip": "Detection score a face needs. Lower finds more (and more false) faces. "
                               "Used by every node that detects with this analysis unless it sets its own."}),
            }
        }

    RETURN_TYPES = (FACE_ANALYSIS,)
    RETURN_NAMES = ("analysis",)
    OUTPUT_TOOLTIPS = ("The loaded face analysis, with its detection threshold.",)
    FUNCTION = "load"
    CATEGORY = category("Faces")

    def load(self, model_pack, provider, det_size, det_thresh):
        model_dir = analysis.find_model_dir(model_folder_paths("insightface"), model_pack)
        analyser = analysis.load_analyser(model_dir, provider=provider, det_size=det_size, pack=model_pack)
        return (analysis.BoundAnalyser(analyser, float(det_thresh)),)


class RevPersArcFaceEmbedding:
    DESCRIPTION = (
        "ArcFace identity embedding (512 values, L2-normalised, as IP-Adapter-FaceID expects), one row per "
        "image. Without 'faces' the face is detected in each image and the chosen one used (largest, as the "
        "reference). With 'faces' from Detect and Align Faces, the images must be its crops: each is "
        "embedded from the landmarks already found, with no second detection; faces tracked over the frames "
        "of a clip get one identity per person (identity 'per track'). No face is an error.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "analysis": (FACE_ANALYSIS, {"tooltip": "From Face Analysis Loader."}),
                "image": ("IMAGE", {"tooltip": "Face crops or photos; one embedding per image."}),
                "select": (["largest", "leftmost", "most confident"], {
                    "default": "largest",
                    "tooltip": "Which face to use when an image holds several (when detecting): the largest "
                               "box (the reference's choice), the leftmost, or the highest score."}),
            },
            "optional": {
                "faces": (FACES, {"tooltip": "Faces from Detect and Align Faces; then 'image' must be its "
                                             "crops, and their landmarks are used instead of detecting again."}),
                "identity": (list(tracks.IDENTITY), {
                    "default": tracks.IDENTITY[0],
                    "tooltip": "For faces from Detect and Track Faces: 'per track' gives every face of a person "
                               "the same identity, the normalised mean of the track's detected faces, so the "
                               "person becomes the same new face in every frame; 'per face' embeds each frame's "
                               "face on its own. Faces without a track (photos) always get their own."}),
            },
        }

    RETURN_TYPES = (EMBEDDING,)
    RETURN_NAMES = ("embedding",)
    OUTPUT_TOOLTIPS = ("Float tensor [N, 512]: the normed ArcFace embedding of each image's face.",)
    FUNCTION = "embed"
    CATEGORY = category("Faces")

    def embed(self, analysis, image, select, faces=None, identity=tracks.IDENTITY[0]):
        if faces is not None:
            if faces.placeholder:
                log.warning("revpers: no face was found in any image (pass-through mode); the embedding "
                            "is the null identity (zeros) for the placeholder crop")
            rows = pipeline.embed_aligned(analysis.analyser, _images.image_array(image), faces, identity)
        else:
            rows, _ = pipeline.embed_images(analysis.analyser, _images.image_batch(image),
                                            analysis.threshold, select)
        return (torch.from_numpy(rows).to(torch.float32),)


NODE_CLASS_MAPPINGS = {
    "RevPersFaceAnalysisLoader": RevPersFaceAnalysisLoader,
    "RevPersArcFaceEmbedding": RevPersArcFaceEmbedding,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RevPersFaceAnalysisLoader": "Face Analysis Loader (RevPers)",
    "RevPersArcFaceEmbedding": "ArcFace Embedding (RevPers)",
}
