"""Audit node: is any original face still recognizable anywhere in the image that will be saved?"""
import logging

from revpers_core.faces import audit, recognizers

from . import _images
from .common import AUDIT_REPORT, FACE_ANALYSIS, FACES, Progress, bounded_float, category

log = logging.getLogger("revpers")


class RevPersAudit:
    DESCRIPTION = (
        "Audits the final photos (after Paste Back) against the originals. Faces are looked for in both with "
        "the analysis' detector and, when installed, dlib's HOG detector (plus the faces Detect and Align "
        "recorded). Every original face is compared, by ArcFace and by dlib's ResNet descriptor (a recognizer "
        "the method never optimized against), with what is at its place in the final photo and with every "
        "face found anywhere in the final photos, so a face left, moved or duplicated is caught. Any original "
        "face still recognized by any recognizer fails the audit: the run stops (default) and nothing is "
        "saved, or, if you choose so explicitly, the photo is saved with a NOT ANONYMIZED mark. Faces left "
        "un-anonymized on request (beyond max_faces) are reported, not failed. Thresholds are bounded so the "
        "audit cannot be switched off by a widget value. Connect its images output to Save Image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "analysis": (FACE_ANALYSIS, {"tooltip": "From Face Analysis Loader (its detector and ArcFace)."}),
                "original": ("IMAGE", {"tooltip": "The photos that went into Detect and Align Faces."}),
                "anonymized": ("IMAGE", {"tooltip": "The final photos, after Paste Back Faces (what will be saved)."}),
                "arcface_threshold": bounded_float(
                    recognizers.ARCFACE_DEFAULT, recognizers.ARCFACE_BOUNDS,
                    "ArcFace cosine similarity at or above which two faces count as the same person. Lower is "
                    "stricter."),
                "dlib_threshold": bounded_float(
                    recognizers.DLIB_DEFAULT, recognizers.DLIB_BOUNDS,
                    "dlib descriptor distance at or below which two faces count as the same person (dlib's own "
                    "rule: 0.6). Higher is stricter."),
                "second_recognizer": (list(audit.SECOND_RECOGNIZER), {
                    "default": audit.SECOND_RECOGNIZER[0],
                    "tooltip": "dlib's detector and recognizer beside ArcFace (pip install dlib-bin "
                               "face-recognition-models). 'off' leaves ArcFace alone, and the report says so."}),
                "on_fail": (list(audit.ON_FAIL), {
                    "default": audit.ON_FAIL[0],
                    "tooltip": "When a face is still recognizable: stop the run so nothing is saved, or hand the "
                               "photos on with the failed ones marked NOT ANONYMIZED (an explicit choice)."}),
            },
            "optional": {
                "faces": (FACES, {"tooltip": "From Detect and Align Faces: its faces are audited even if no "
                                             "detector finds them again, and faces left by request are named."}),
            },
        }

    RETURN_TYPES = ("IMAGE", AUDIT_REPORT, "STRING")
    RETURN_NAMES = ("images", "report", "text")
    OUTPUT_TOOLTIPS = (
        "The final photos, handed on only if the audit passed (or marked, with on_fail 'save marked').",
        "Per face and recognizer: size, similarity, threshold, verdict.",
        "The report as readable text.",
    )
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = category("Faces")

    def run(self, analysis, original, anonymized, arcface_threshold, dlib_threshold, second_recognizer,
            on_fail, faces=None):
        originals = _images.image_batch(original, "original")
        finals = _images.image_batch(anonymized, "anonymized")
        auditor = audit.make_auditor(analysis.analyser, arcface_threshold, dlib_threshold, second_recognizer,
                                     detect_threshold=analysis.threshold)
        report = audit.audit(auditor, originals, finals, faceset=faces, on_step=Progress(2 * len(originals) + 1))
        text = report.text()
        # the text for people; the verdicts as data for API clients (the CLI's guaranteed mode reads them)
        ui = {"text": [text], "revpers_audit": [report.summary()]}
        if not report.passed:
            if on_fail == audit.ON_FAIL[0]:
                raise ValueError("Audit failed - the output is not safe to use, nothing was saved:\n" + text)
            log.warning("revpers: audit FAILED, saving marked images by request: %s", text.replace("\n", "; "))
            return {"ui": ui, "result": (_images.to_image(audit.mark_failed(finals, report)),
                                                      report, text)}
        if report.left or report.notes:
            log.warning("revpers: %s", text.replace("\n", "; "))
        return {"ui": ui, "result": (anonymized, report, text)}


NODE_CLASS_MAPPINGS = {"RevPersAudit": RevPersAudit}
NODE_DISPLAY_NAME_MAPPINGS = {"RevPersAudit": "Audit Anonymized Photos (RevPers)"}
