"""ArcFace embedding, the paper's first stage: the identity of each face, as IP-Adapter-FaceID takes it."""
import logging

import torch
from comfy_api.v0_0_2 import io

from revpers_core.faces import pipeline, tracks

from . import _images
from .common import Embedding, FaceAnalysis, Faces, category, check_options

log = logging.getLogger("revpers")


class RevPersArcFaceEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersArcFaceEmbedding",
            display_name="ArcFace Embedding (RevPers)",
            category=category("Faces"),
            description=(
                "ArcFace identity embedding (512 values, L2-normalised, as IP-Adapter-FaceID expects), one row per "
                "image. Without 'faces' the face is detected in each image and the chosen one used (largest, as the "
                "reference). With 'faces' from Detect and Align Faces, the images must be its crops: each is "
                "embedded from the landmarks already found, with no second detection; faces tracked over the frames "
                "of a clip get one identity per person (identity 'per track'). No face is an error."),
            inputs=[
                FaceAnalysis.Input("analysis", tooltip="From Face Analysis Loader."),
                io.Image.Input("image", tooltip="Face crops or photos; one embedding per image."),
                io.Combo.Input(
                    "select", options=["largest", "leftmost", "most confident"], default="largest",
                    tooltip="Which face to use when an image holds several (when detecting): the largest "
                            "box (the reference's choice), the leftmost, or the highest score."),
                Faces.Input("faces", optional=True,
                            tooltip="Faces from Detect and Align Faces; then 'image' must be its crops, and their "
                                    "landmarks are used instead of detecting again."),
                io.Combo.Input(
                    "identity", optional=True, options=list(tracks.IDENTITY), default=tracks.IDENTITY[0],
                    tooltip="For faces from Detect and Track Faces: 'per track' gives every face of a person "
                            "the same identity, the normalised mean of the track's detected faces, so the "
                            "person becomes the same new face in every frame; 'per face' embeds each frame's "
                            "face on its own. Faces without a track (photos) always get their own."),
            ],
            outputs=[
                Embedding.Output(display_name="embedding",
                                 tooltip="Float tensor [N, 512]: the normed ArcFace embedding of each image's face."),
            ],
        )

    @classmethod
    def validate_inputs(cls, select=None, identity=None):
        return check_options(cls, select=select, identity=identity)

    @classmethod
    def execute(cls, analysis, image, select, faces=None, identity=tracks.IDENTITY[0]):
        if faces is not None:
            if faces.placeholder:
                log.warning("revpers: no face was found in any image (pass-through mode); the embedding "
                            "is the null identity (zeros) for the placeholder crop")
            rows = pipeline.embed_aligned(analysis.analyser, _images.image_array(image), faces, identity)
        else:
            rows, _ = pipeline.embed_images(analysis.analyser, _images.image_batch(image),
                                            analysis.threshold, select)
        return io.NodeOutput(torch.from_numpy(rows).to(torch.float32))


NODES = [RevPersArcFaceEmbedding]
