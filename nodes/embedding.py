"""ArcFace embedding, the paper's first stage: the identity of each face, as IP-Adapter-FaceID takes it."""
import logging

import torch

from revpers_core.faces import pipeline, tracks

from . import _images
from .common import EMBEDDING, FACE_ANALYSIS, FACES, category

log = logging.getLogger("revpers")


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


NODE_CLASS_MAPPINGS = {"RevPersArcFaceEmbedding": RevPersArcFaceEmbedding}
NODE_DISPLAY_NAME_MAPPINGS = {"RevPersArcFaceEmbedding": "ArcFace Embedding (RevPers)"}
