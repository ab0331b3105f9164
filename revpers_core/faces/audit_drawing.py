"""Drawing the audit's verdicts on images: failing images marked NOT ANONYMIZED (`mark_failed`) and each
audited face boxed and labelled, for people to look at (`draw_verdicts`)."""
from __future__ import annotations

import numpy as np

from .audit_report import AuditReport


def mark_failed(finals, report: AuditReport) -> list[np.ndarray]:
    """The final images, those with a face that failed the audit marked NOT ANONYMIZED (frame and
    banner), for a user who chose to save them anyway."""
    from .paste import mark_not_anonymized

    failed = set(report.failed_images())
    return [mark_not_anonymized(np.asarray(im, np.float32), "NOT ANONYMIZED: AUDIT FAILED")
            if i in failed else np.asarray(im, np.float32) for i, im in enumerate(finals)]


def draw_verdicts(image: np.ndarray, report: AuditReport, image_index: int = 0) -> np.ndarray:
    """A copy of an RGB image (float 0..1 or uint8) with each audited face of `image_index` boxed
    and labelled: green "ok", red "STILL RECOGNIZABLE", orange "LEFT", with each recognizer's
    figure at its place. For people to look at; not part of any output the pack saves."""
    import cv2

    rgb = np.asarray(image)
    out = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8) if rgb.dtype != np.uint8 else rgb.copy()
    out = np.ascontiguousarray(out[:, :, :3])
    colours = {"ok": (0, 200, 0), "STILL RECOGNIZABLE": (230, 0, 0)}
    scale = max(0.4, min(out.shape[:2]) / 900.0)
    for face in report.faces:
        if face.image_index != image_index:
            continue
        colour = colours.get(face.verdict, (255, 140, 0))
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, max(2, int(3 * scale)))
        lines = [f"{face.index}: {face.verdict}"]
        lines += [f"{j.recognizer} {j.at_place:+.2f}" if j.at_place is not None else f"{j.recognizer} n/a"
                  for j in face.judgements]
        for n, line in enumerate(lines):
            y = y2 + int((n + 1) * 22 * scale)
            cv2.putText(out, line, (x1, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), int(4 * scale) + 1,
                        cv2.LINE_AA)
            cv2.putText(out, line, (x1, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, max(1, int(2 * scale)),
                        cv2.LINE_AA)
    return out
