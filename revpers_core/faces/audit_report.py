"""The audit's report: per face and recognizer, the verdicts as text for people (`AuditReport.text`) and
as plain data (`summary`, `rows`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .audit import FaceAudit


@dataclass
class AuditReport:
    faces: list[FaceAudit]
    recognizers: list[str]
    notes: list[str] = field(default_factory=list)
    image_count: int = 0
    rows_known: bool = False  # the face records were given: each anonymized face's sampler row is known
    judges: list[str] = field(default_factory=list)  # the recognizers' names ("ArcFace", "dlib")
    redactions: list = field(default_factory=list)   # redact.Redaction of the faces covered before this audit

    @property
    def failed(self) -> list[FaceAudit]:
        return [f for f in self.faces if f.failed]

    @property
    def left(self) -> list[FaceAudit]:
        return [f for f in self.faces if f.status == "left by request"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def failed_images(self) -> list[int]:
        return sorted({f.image_index for f in self.failed})

    @property
    def failed_rows(self) -> list[int]:
        """Sampler rows of the failing faces: what guaranteed mode can sample again."""
        return sorted({f.row for f in self.failed if f.row is not None})

    @property
    def unfixable(self) -> list[FaceAudit]:
        """Failing faces that are no sampler row (no detector of Detect and Align took them for a face,
        or they were covered): sampling again cannot change them."""
        return [f for f in self.failed if f.row is None] if self.rows_known else []

    @property
    def independent(self) -> bool:
        """A recognizer the method did not optimize against (anything but ArcFace) judged."""
        return any(name != "ArcFace" for name in self.judges)

    def summary(self) -> dict:
        """The verdicts as plain data (the node's UI output, read by the CLI): `passed` is the verdict on
        the images handed on; `recognized` whether a face was still recognizable in them as anonymized
        (before any redaction); `failed_rows` and `unfixable` what guaranteed mode can and cannot sample
        again; `redacted` the faces covered; `recognizers` who judged, `independent` whether one of them is
        not the recognizer the method optimizes against."""
        return {"passed": self.passed, "recognized": bool(self.redactions) or not self.passed,
                "failed_rows": self.failed_rows,
                "unfixable": [f"face {f.index} ({_where(f)})" for f in self.unfixable],
                "left": len(self.left), "rows": self.rows(), "recognizers": list(self.judges),
                "independent": self.independent, "redacted": [r.as_dict() for r in self.redactions]}

    def text(self) -> str:
        lines = ["Audit of the final image(s): is any original face still recognizable anywhere in them?",
                 "Recognizers: " + "; ".join(self.recognizers)]
        lines += [f"Note: {n}" for n in self.notes]
        for r in self.redactions:
            lines.append(f"REDACTED: {r.describe()}")
        if self.redactions:
            lines.append("The image(s) were audited again after the redaction:")
        for f in self.faces:
            cx, cy = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
            row = f", row {f.row}" if f.row is not None else ""
            lines.append(f"  face {f.index} (image {f.image_index}, at ({cx:.0f}, {cy:.0f}), {f.size:.0f} px, "
                         f"found by {', '.join(f.found_by)}, {f.status}{row}): {f.verdict}")
            for j in f.judgements:
                if j.at_place is None:
                    lines.append(f"      {j.recognizer}: not measured - {j.reason}")
                    continue
                value = f"{j.measure} {j.at_place:+.3f} at its place ({j.measured_on})"
                if j.recognized:
                    lines.append(f"      {j.recognizer}: {value}; SAME PERSON (threshold {j.threshold:.2f}) "
                                 f"in: {'; '.join(j.matches)}")
                else:
                    lines.append(f"      {j.recognizer}: {value}; threshold {j.threshold:.2f}: not this person")
        if not self.faces:
            lines.append(f"  no face found in the {self.image_count} original image(s)")
        n_fail, n_left = len(self.failed), len(self.left)
        if n_fail:
            images = ", ".join(str(i) for i in self.failed_images())
            lines.append(f"RESULT: FAILED - {n_fail} of {len(self.faces)} face(s) still recognizable "
                         f"(image {images})")
            if self.failed_rows:
                from ..guarantee import format_face_guidance
                from ..guidance import RETRIES
                hint = format_face_guidance({r: RETRIES[0] for r in self.failed_rows})
                lines.append(f"To sample only those faces again with stronger guidance (the others stay "
                             f"bit-identical), set the Anonymized Sampler's face_guidance to a stronger guidance than its own, e.g. \"{hint}\" "
                             f"(guaranteed mode of the revpers CLI does this by itself)")
            if not self.rows_known:
                lines.append("Connect Detect and Align's faces to the audit to learn which sampler rows to sample "
                             "again (face_guidance)")
            for f in self.unfixable:
                lines.append(f"  face {f.index} is no face Detect and Align anonymized ({f.status}, found by "
                             f"{', '.join(f.found_by)}): stronger guidance cannot change it")
        elif self.redactions:
            lines.append(f"RESULT: passed after redaction - {len(self.redactions)} face(s) covered with a flat fill; "
                         f"none of the {len(self.faces) - n_left} face(s) to anonymize is recognizable in the "
                         f"final image(s)")
        else:
            lines.append(f"RESULT: passed - none of the {len(self.faces) - n_left} face(s) to anonymize is "
                         f"recognizable in the final image(s)")
        if n_left:
            lines.append(f"WARNING: {n_left} face(s) left un-anonymized by request")
        return "\n".join(lines)

    def rows(self) -> list[dict]:
        """One plain dict per face and recognizer (for JSON/CSV)."""
        out = []
        for f in self.faces:
            for j in f.judgements:
                out.append({"face": f.index, "image": f.image_index, "row": f.row,
                            "box": [round(float(v), 1) for v in f.box], "size": round(float(f.size), 1),
                            "found_by": "+".join(f.found_by), "status": f.status,
                            "recognizer": j.recognizer, "measure": j.measure, "threshold": j.threshold,
                            "at_place": None if j.at_place is None else round(float(j.at_place), 4),
                            "measured_on": j.measured_on or j.reason, "recognized": j.recognized,
                            "retrieved": j.retrieved,
                            "matches": " | ".join(j.matches), "verdict": f.verdict})
        return out


def _where(face) -> str:
    cx, cy = (face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0
    return f"image {face.image_index} at ({cx:.0f}, {cy:.0f})"
