"""Anonymity check node: how much identity is left in each anonymized face."""
import logging

from revpers_core.faces import metrics, pipeline, recognizers

from . import _images
from .common import ANONYMITY_REPORT, EMBEDDING, FACE_ANALYSIS, FACES, bounded_float, category

log = logging.getLogger("revpers")


class RevPersAnonymityCheck:
    DESCRIPTION = (
        "Measures, per face, the ArcFace cosine similarity between the original and the anonymized face crop "
        "(1 = same face, about 0 = unrelated) and shows it as text. A face at or above the threshold "
        "would likely still be matched to the person by a face-verification system; the default 0.30 "
        "is at the strict end of the 0.28-0.4 range used with InsightFace's ArcFace models. With "
        "'fail_if_recognizable' the run stops on such a face, on a face that cannot be measured, or on a "
        "photo passed through unanonymized, so images wired through this node are never saved then. "
        "For whole photos use Audit Anonymized Photos instead: it judges the pasted-back image itself, "
        "with a second recognizer.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "analysis": (FACE_ANALYSIS, {"tooltip": "From Face Analysis Loader."}),
                "anonymized": ("IMAGE", {"tooltip": "Anonymized face crops (with 'faces': the crops of those "
                                                    "faces, in order) or photos (largest face measured)."}),
                "threshold": bounded_float(
                    metrics.DEFAULT_THRESHOLD, recognizers.ARCFACE_BOUNDS,
                    "Similarity at or above which a face counts as still recognizable (bounded: no value switches "
                    "the check off)."),
                "fail_if_recognizable": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Stop the run (error) if any face is at or above the threshold, cannot be "
                               "measured, or was passed through unanonymized. Off: only report."}),
            },
            "optional": {
                "original": ("IMAGE", {"tooltip": "The original crops/photos, paired with 'anonymized' "
                                                  "(or one for all)."}),
                "original_embedding": (EMBEDDING, {"tooltip": "The original identities instead of 'original' "
                                                              "images (one row per face, or one for all)."}),
                "faces": (FACES, {"tooltip": "From Detect and Align Faces: use its landmarks for both sides "
                                             "instead of detecting, and report passed-through photos."}),
                "images": ("IMAGE", {"tooltip": "Anything to hand on only if the check passes (e.g. the "
                                                "pasted-back photos, to save after this node)."}),
            },
        }

    RETURN_TYPES = (ANONYMITY_REPORT, "STRING", "IMAGE")
    RETURN_NAMES = ("report", "text", "images")
    OUTPUT_TOOLTIPS = (
        "Per-face similarities, threshold and verdicts.",
        "The report as readable text.",
        "'images' (or 'anonymized' when not connected), handed on after the check.",
    )
    FUNCTION = "check"
    OUTPUT_NODE = True
    CATEGORY = category("Faces")

    def check(self, analysis, anonymized, threshold, fail_if_recognizable, original=None,
              original_embedding=None, faces=None, images=None):
        threshold = recognizers.check_threshold(threshold, recognizers.ARCFACE_BOUNDS, "ArcFace")
        anon = _images.image_batch(anonymized, "anonymized")
        orig = _images.image_batch(original, "original") if original is not None else None
        emb = _images.embedding_rows(original_embedding, "original_embedding") \
            if original_embedding is not None else None
        if emb is not None and orig is not None:
            log.info("revpers: anonymity check uses original_embedding; the original images are not used")
        report = pipeline.check_anonymity(
            analysis.analyser, anon, original=orig, original_embeddings=emb, faceset=faces,
            threshold=float(threshold), detect_threshold=analysis.threshold)
        text = report.text()
        if fail_if_recognizable and not report.passed:
            raise ValueError("Anonymity check failed - the output is not safe to use:\n" + text)
        if not report.passed:
            log.warning("revpers: %s", text.replace("\n", "; "))
        passed_on = images if images is not None else anonymized
        return {"ui": {"text": [text]}, "result": (report, text, passed_on)}


NODE_CLASS_MAPPINGS = {"RevPersAnonymityCheck": RevPersAnonymityCheck}
NODE_DISPLAY_NAME_MAPPINGS = {"RevPersAnonymityCheck": "Anonymity Check (RevPers)"}
