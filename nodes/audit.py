"""Audit node: is any original face still recognizable anywhere in the image that will be saved?"""
import logging

from comfy_api.v0_0_2 import io

from revpers_core.faces import audit, recognizers, redact

from . import _images
from .common import AuditReport, FaceAnalysis, Faces, Progress, bounded_float, category, check_options

log = logging.getLogger("revpers")


class RevPersAudit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersAudit",
            display_name="Audit Anonymized Photos (RevPers)",
            category=category("Faces"),
            description=(
                "Audits the final photos (after Paste Back) against the originals. Faces are looked for in both "
                "with the analysis' detector and, when installed, dlib's HOG detector (plus the faces Detect and "
                "Align recorded). Every original face is compared, by ArcFace and by dlib's ResNet descriptor (a "
                "recognizer the method never optimized against), with what is at its place in the final photo "
                "and with every face found anywhere in the final photos, so a face left, moved or duplicated is "
                "caught. Any original face still recognized by any recognizer fails the audit: the run stops "
                "(default) and nothing is saved, or, if you choose so explicitly, the photo is saved with a NOT "
                "ANONYMIZED mark, or the failing faces are covered with a flat fill and the photo is audited "
                "again (redact). Faces left un-anonymized on request (beyond max_faces) are reported, not "
                "failed. Thresholds are bounded so the audit cannot be switched off by a widget value. Connect "
                "its images output to Save Image."),
            inputs=[
                FaceAnalysis.Input("analysis", tooltip="From Face Analysis Loader (its detector and ArcFace)."),
                io.Image.Input("original", tooltip="The photos that went into Detect and Align Faces."),
                io.Image.Input("anonymized",
                               tooltip="The final photos, after Paste Back Faces (what will be saved)."),
                bounded_float(
                    "arcface_threshold", recognizers.ARCFACE_DEFAULT, recognizers.ARCFACE_BOUNDS,
                    "ArcFace cosine similarity at or above which two faces count as the same person. Lower is "
                    "stricter."),
                bounded_float(
                    "dlib_threshold", recognizers.DLIB_DEFAULT, recognizers.DLIB_BOUNDS,
                    "dlib descriptor distance at or below which two faces count as the same person (dlib's own "
                    "rule: 0.6). Higher is stricter."),
                io.Combo.Input(
                    "second_recognizer", options=list(audit.SECOND_RECOGNIZER), default=audit.SECOND_RECOGNIZER[0],
                    tooltip="dlib's detector and recognizer beside ArcFace (pip install dlib-bin "
                            "face-recognition-models). 'off' leaves ArcFace alone, and the report says so."),
                io.Combo.Input(
                    "on_fail", options=list(audit.ON_FAIL), default=audit.ON_FAIL[0],
                    tooltip="When a face is still recognizable: stop the run so nothing is saved; hand the "
                            "photos on with the failed ones marked NOT ANONYMIZED (an explicit choice); or "
                            "redact: cover each such face with the flat fill small faces get, over its whole "
                            "face region, audit again, and hand the photos on only if that audit passes (the "
                            "report names every face covered). Stop suits one photo you look at; redact suits "
                            "folders and clips, where one stubborn face would otherwise lose the whole item."),
                Faces.Input("faces", optional=True,
                            tooltip="From Detect and Align Faces: its faces are audited even if no detector finds "
                                    "them again, and faces left by request are named."),
            ],
            outputs=[
                io.Image.Output(display_name="images",
                                tooltip="The final photos, handed on only if the audit passed (or marked, with "
                                        "on_fail 'save marked')."),
                AuditReport.Output(display_name="report",
                                   tooltip="Per face and recognizer: size, similarity, threshold, verdict."),
                io.String.Output(display_name="text", tooltip="The report as readable text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, second_recognizer=None, on_fail=None):
        return check_options(cls, second_recognizer=second_recognizer, on_fail=on_fail)

    @classmethod
    def execute(cls, analysis, original, anonymized, arcface_threshold, dlib_threshold, second_recognizer,
                on_fail, faces=None):
        if on_fail not in audit.ON_FAIL:  # a linked value is not checked at queue time
            raise ValueError(f"on_fail must be one of {audit.ON_FAIL}, not {on_fail!r}")
        originals = _images.image_batch(original, "original")
        finals = _images.image_batch(anonymized, "anonymized")
        auditor = audit.make_auditor(analysis.analyser, arcface_threshold, dlib_threshold, second_recognizer,
                                     detect_threshold=analysis.threshold)
        report = audit.audit(auditor, originals, finals, faceset=faces, on_step=Progress(2 * len(originals) + 1))
        if not report.passed and on_fail == audit.REDACT:
            finals, report = redact.redact(auditor, originals, finals, report, faceset=faces)
            if report.passed:
                text = report.text()
                log.warning("revpers: audit: %d face(s) redacted: %s", len(report.redactions),
                            text.replace("\n", "; "))
                return io.NodeOutput(_images.to_image(finals), report, text,
                                     ui={"text": [text], "revpers_audit": [report.summary()]})
        text = report.text()
        # the text for people; the verdicts as data for API clients (the CLI reads only these)
        ui = {"text": [text], "revpers_audit": [report.summary()]}
        if not report.passed:
            if on_fail in (audit.STOP, audit.REDACT):
                what = " even after covering the failing faces" if on_fail == audit.REDACT else ""
                raise ValueError(f"Audit failed{what} - the output is not safe to use, nothing was saved:\n" + text)
            log.warning("revpers: audit FAILED, saving marked images by request: %s", text.replace("\n", "; "))
            return io.NodeOutput(_images.to_image(audit.mark_failed(finals, report)), report, text, ui=ui)
        if report.left or report.notes:
            log.warning("revpers: %s", text.replace("\n", "; "))
        return io.NodeOutput(anonymized, report, text, ui=ui)


NODES = [RevPersAudit]
