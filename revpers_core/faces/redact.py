"""Redaction, the fail-safe end of the audit: a face still recognizable in the final image (after the last
retry of guaranteed mode) is covered with the flat fill that faces too small for the model get, over its
whole region, and the images are audited again.

The region of a failing face is the ellipse the small-face fill takes around its box
(`paste.cover_ellipse`), joined with its face mask as paste-back put it into the image when Detect and
Align anonymized it (a sampler row: everything the model edited for that face is covered), and with the
ellipse around every place in the final images where a recognizer still found that person (a face moved
or duplicated). Every pixel of it takes the region's mean colour (`paste.fill_flat`). The audit then runs
again from scratch on the covered images; a face still failing is covered again, up to MAX_ROUNDS
rounds, after which the audit stays failed and the caller fails closed. Each face covered is reported
(`Redaction`), and the audit after it gives the face the status `redacted`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from . import audit as audit_mod
from .align import face_mask
from .paste import cover_ellipse, fill_flat

MAX_ROUNDS = 3


@dataclass
class Redaction:
    """One face covered by the flat fill: the audit's face number, its image, its sampler row (None when
    Detect and Align did not anonymize it), its box, how many pixels were filled, the recognizers that
    still took it for its person, and the places (final image, box) where they did."""

    face: int
    image: int
    row: int | None
    box: tuple
    pixels: int = 0
    recognized_by: list[str] = field(default_factory=list)
    places: list[tuple[int, tuple]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"face": self.face, "image": self.image, "row": self.row, "box": [round(v, 1) for v in self.box],
                "pixels": self.pixels, "recognized_by": list(self.recognized_by),
                "places": [{"image": i, "box": [round(v, 1) for v in b]} for i, b in self.places]}

    def describe(self) -> str:
        cx, cy = (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0
        row = f", row {self.row}" if self.row is not None else ""
        return (f"face {self.face} (image {self.image} at ({cx:.0f}, {cy:.0f}){row}) was still recognizable "
                f"({', '.join(self.recognized_by)}) after anonymization: covered with a flat fill over its face "
                f"region ({self.pixels} px)")


def _row_mask(faceset, row: int, height: int, width: int) -> np.ndarray:
    """The face mask of sampler row `row` as paste-back puts it into its image (bool HxW)."""
    record = faceset.faces[row]
    size = int(record.crop_size)
    mask = face_mask(size, faceset.padding)
    warped = cv2.warpAffine(mask, record.transform_for(size).astype(np.float64), (width, height),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0.0)
    return warped > 0


def face_regions(face, faceset, shapes) -> dict[int, np.ndarray]:
    """Where a failing face is covered, per final image: {image index: bool HxW}. `shapes`: (height, width)
    of each final image."""
    regions: dict[int, np.ndarray] = {}

    def add(index, inside):
        regions[index] = inside if index not in regions else regions[index] | inside

    height, width = shapes[face.image_index]
    add(face.image_index, cover_ellipse(height, width, face.box))
    if face.row is not None and faceset is not None and 0 <= face.row < len(faceset.faces) \
            and faceset.faces[face.row].image_index == face.image_index:
        add(face.image_index, _row_mask(faceset, face.row, height, width))
    for judgement in face.judgements:
        for index, box in judgement.places:
            add(index, cover_ellipse(*shapes[index], box))
    return regions


def redact(auditor, originals, finals, report, faceset=None):
    """Cover every face `report` finds still recognizable and audit the covered images again (up to
    MAX_ROUNDS times). Returns (the covered images, the last audit's report with `redactions` set and the
    covered faces' status `redacted`). When the report has passed, nothing is covered."""
    images = [np.array(im, dtype=np.float32, copy=True) for im in finals]
    coverage = [np.zeros(im.shape[:2], np.float32) for im in images]
    shapes = [im.shape[:2] for im in images]
    done: dict[int, Redaction] = {}
    for _ in range(MAX_ROUNDS):
        if report.passed:
            break
        for face in report.failed:
            record = done.setdefault(face.index, Redaction(face.index, face.image_index, face.row,
                                                           tuple(float(v) for v in face.box)))
            for index, inside in face_regions(face, faceset, shapes).items():
                record.pixels += int(np.count_nonzero(inside & (coverage[index] < 1.0)))
                fill_flat(images[index], coverage[index], inside)
            for judgement in face.judgements:
                if judgement.recognized and judgement.recognizer not in record.recognized_by:
                    record.recognized_by.append(judgement.recognizer)
                record.places += [p for p in judgement.places if p not in record.places]
        report = audit_mod.audit(auditor, originals, images, faceset=faceset)
    for face in report.faces:
        if face.index in done and not face.recognized:
            face.status = audit_mod.REDACTED
    report.redactions = [done[k] for k in sorted(done)]
    return images, report
