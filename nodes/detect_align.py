"""Detect and Align Faces: photos in, upright aligned face crops out, with the face records Paste Back
needs to put the edited crops back."""
import logging

from comfy_api.v0_0_2 import io

from revpers_core.faces import align, pipeline

from . import _images
from .common import FaceAnalysis, Faces, Progress, category, check_options

log = logging.getLogger("revpers")


def detection_inputs(images, on_no_face):
    """The inputs of Detect and Align Faces, with its `images` and `on_no_face` inputs given (Detect and
    Track Faces declares the same ones for the frames of a clip, then its tracking settings)."""
    return [
        FaceAnalysis.Input("analysis", tooltip="From Face Analysis Loader."),
        images,
        io.Int.Input(
            "crop_size", default=align.DEFAULT_CROP_SIZE, min=align.MIN_CROP_SIZE, max=align.MAX_CROP_SIZE,
            step=8, tooltip="Side of the square face crops in pixels (multiple of 8). 1024 for SDXL."),
        io.Float.Input(
            "padding", default=align.DEFAULT_PADDING, min=0.0, max=align.MAX_PADDING, step=0.01,
            tooltip="Room around the face square on each side, as a fraction of it. 0 = tight "
                    "ArcFace framing; 0.15 = whole face with hair line and chin."),
        io.Float.Input(
            "threshold", default=0.0, min=0.0, max=0.99, step=0.01,
            tooltip="Detection score a face needs; 0 = use the Face Analysis Loader's threshold."),
        io.Int.Input(
            "min_face_size", default=0, min=0, max=8192,
            tooltip="Faces whose detected box is smaller than this (shorter side, pixels) are not "
                    "given to the model but covered with a flat fill by Paste Back, and reported. "
                    "0 = every face is anonymized by the model, however small (its crop is "
                    "resampled to the crop size)."),
        io.Int.Input(
            "max_faces", default=0, min=0, max=256,
            tooltip="Anonymize at most this many faces per image, the largest ones (0 = all). An "
                    "image with more stops the run unless beyond_max_faces leaves them visible."),
        io.Int.Input(
            "expected_faces", default=0, min=0, max=256,
            tooltip="Each image must yield at least this many faces (0 = at least one). "
                    "Fewer is handled by on_no_face."),
        on_no_face,
        io.Combo.Input(
            "beyond_max_faces", optional=True, options=list(pipeline.BEYOND_MAX_FACES),
            default=pipeline.BEYOND_MAX_FACES[0],
            tooltip="When an image has more faces than max_faces: stop with an error (default), or "
                    "leave the others exactly as they are - outlined, the photo marked 'N FACES LEFT "
                    "UN-ANONYMIZED', each reported by the audit."),
    ]


def detection_outputs():
    return [
        io.Image.Output(display_name="crops", tooltip="Aligned face crops [F, S, S, 3], in face order."),
        Faces.Output(display_name="faces",
                     tooltip="Face records (image index, box, landmarks, transform, score, sizes) for Paste Back."),
        io.Mask.Output(display_name="masks", tooltip="Face region of each crop [F, S, S]."),
        io.String.Output(display_name="warning",
                         tooltip="Empty, or which images were passed through unanonymized and why."),
    ]


class RevPersDetectAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersDetectAlign",
            display_name="Detect and Align Faces (RevPers)",
            category=category("Faces"),
            description=(
                "Finds every face in each image and cuts an upright, aligned square crop of it (none is dropped: "
                "faces below min_face_size are covered with a fill by Paste Back, faces beyond max_faces stop the "
                "run unless you choose to leave them, marked): the five landmarks "
                "are mapped by a similarity transform onto InsightFace's ArcFace template, placed in the crop with "
                "room for forehead and chin (the face square is moved down 5 % and grown by 'padding' on each "
                "side; default 0.15 frames faces like the reference's 1024 px crops). Faces are ordered by image, "
                "then left to right, then top to bottom. Outputs the crops, the face records Paste Back needs, "
                "and each crop's face mask. An image without the faces expected stops the run (default) or, if "
                "you choose 'pass through (marked)', goes through unanonymized and is marked NOT ANONYMIZED by "
                "Paste Back; if no image has a face, the crops output holds one grey placeholder."),
            inputs=detection_inputs(
                io.Image.Input("images", tooltip="Photos (any size; grey, RGB or RGBA)."),
                io.Combo.Input(
                    "on_no_face", options=list(pipeline.ON_NO_FACE), default="error",
                    tooltip="When an image has no face (or fewer than expected): stop with an error, or "
                            "let it through unanonymized, visibly marked NOT ANONYMIZED by Paste Back "
                            "and reported in the warning output.")),
            outputs=detection_outputs(),
        )

    @classmethod
    def validate_inputs(cls, on_no_face=None, beyond_max_faces=None):
        return check_options(cls, on_no_face=on_no_face, beyond_max_faces=beyond_max_faces)

    @classmethod
    def execute(cls, analysis, images, crop_size, padding, threshold, min_face_size, max_faces,
                expected_faces, on_no_face, beyond_max_faces=pipeline.BEYOND_MAX_FACES[0]):
        return io.NodeOutput(*detect_faces(analysis, images, crop_size, padding, threshold, min_face_size,
                                           max_faces, expected_faces, on_no_face, beyond_max_faces))


def detect_faces(analysis, images, crop_size, padding, threshold, min_face_size, max_faces, expected_faces,
                 on_no_face, beyond_max_faces, tracking=None):
    """The body of Detect and Align Faces (and, with tracking settings, of Detect and Track Faces)."""
    batch = _images.image_batch(images, "images")
    threshold = float(threshold) if threshold > 0 else analysis.threshold
    settings = pipeline.AlignSettings(crop_size=crop_size, padding=padding, threshold=threshold,
                                      min_size=float(min_face_size), max_faces=int(max_faces),
                                      expected_faces=int(expected_faces), on_no_face=on_no_face,
                                      beyond_max_faces=beyond_max_faces)
    faces, crops, masks = pipeline.detect_and_align(analysis.analyser, batch, settings, on_step=Progress(len(batch)),
                                                    tracking=tracking)
    warning = faces.warning()
    if warning:
        log.warning("revpers: %s", warning.replace("\n", "; "))
    return (_images.to_image(crops), faces, _images.to_mask(masks), warning)


NODES = [RevPersDetectAlign]
