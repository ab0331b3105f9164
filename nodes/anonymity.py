"""Anonymity check node: how much identity is left in each anonymized face."""
import logging

from comfy_api.v0_0_2 import io

from revpers_core.faces import metrics, pipeline, recognizers

from . import _images
from .common import AnonymityReport, Embedding, FaceAnalysis, Faces, bounded_float, category

log = logging.getLogger("revpers")


class RevPersAnonymityCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersAnonymityCheck",
            display_name="Anonymity Check (RevPers)",
            category=category("Faces"),
            description=(
                "Measures, per face, the ArcFace cosine similarity between the original and the anonymized face "
                "crop (1 = same face, about 0 = unrelated) and shows it as text. A face at or above the threshold "
                "would likely still be matched to the person by a face-verification system; the default 0.30 "
                "is at the strict end of the 0.28-0.4 range used with InsightFace's ArcFace models. With "
                "'fail_if_recognizable' the run stops on such a face, on a face that cannot be measured, or on a "
                "photo passed through unanonymized, so images wired through this node are never saved then. "
                "For whole photos use Audit Anonymized Photos instead: it judges the pasted-back image itself, "
                "with a second recognizer."),
            inputs=[
                FaceAnalysis.Input("analysis", tooltip="From Face Analysis Loader."),
                io.Image.Input("anonymized", tooltip="Anonymized face crops (with 'faces': the crops of those "
                                                     "faces, in order) or photos (largest face measured)."),
                bounded_float(
                    "threshold", metrics.DEFAULT_THRESHOLD, recognizers.ARCFACE_BOUNDS,
                    "Similarity at or above which a face counts as still recognizable (bounded: no value switches "
                    "the check off)."),
                io.Boolean.Input(
                    "fail_if_recognizable", default=True,
                    tooltip="Stop the run (error) if any face is at or above the threshold, cannot be "
                            "measured, or was passed through unanonymized. Off: only report."),
                io.Image.Input("original", optional=True,
                               tooltip="The original crops/photos, paired with 'anonymized' (or one for all)."),
                Embedding.Input("original_embedding", optional=True,
                                tooltip="The original identities instead of 'original' images (one row per face, "
                                        "or one for all)."),
                Faces.Input("faces", optional=True,
                            tooltip="From Detect and Align Faces: use its landmarks for both sides instead of "
                                    "detecting, and report passed-through photos."),
                io.Image.Input("images", optional=True,
                               tooltip="Anything to hand on only if the check passes (e.g. the pasted-back "
                                       "photos, to save after this node)."),
            ],
            outputs=[
                AnonymityReport.Output(display_name="report", tooltip="Per-face similarities, threshold and verdicts."),
                io.String.Output(display_name="text", tooltip="The report as readable text."),
                io.Image.Output(display_name="images",
                                tooltip="'images' (or 'anonymized' when not connected), handed on after the check."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, analysis, anonymized, threshold, fail_if_recognizable, original=None,
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
        # the text for people; the verdicts as data for API clients (the CLI reads only these)
        return io.NodeOutput(report, text, passed_on, ui={"text": [text], "revpers_check": [report.summary()]})


NODES = [RevPersAnonymityCheck]
