"""The audit of the saved image: is any original face still recognizable anywhere in the final one?

The promise the pack makes is about the image that is saved, not about intermediate crops. So the
audit takes the original photos and the final photos (after paste-back) and, per image:

1. finds the original faces with every detector it has (the analysis' SCRFD, dlib's HOG when
   installed) and adds the faces Detect and Align recorded (anonymized, covered or left);
2. finds the faces of the final image the same way;
3. for every original face k and every recognizer r, measures r(original k, what is at k's place in
   the final image): the final face found there (box overlap), or, when no detector finds a face
   there, the final image cut at k's original landmarks / box;
4. compares every original face with *every* final face of the batch, so a face moved, duplicated or
   swapped to another place is caught too.

An original face passes when no recognizer says "same person" for any of those pairs; the audit
passes when every face passes. Faces the user explicitly asked to leave (beyond max_faces) are
reported as such and do not fail it; every other face does, whatever the reason. A recognizer is
only asked about faces it can see: dlib's descriptor means nothing on a region that dlib's own
detector does not take for a face in the original (its descriptors of non-faces all lie close
together), so such faces are judged by ArcFace alone, and the report says so per face.

This module judges (and holds the audit's rules: ON_FAIL, SECOND_RECOGNIZER, MATCH_IOU ...); the report
is `audit_report.py`, the drawing `audit_drawing.py`, the box overlap `geometry.py`. Their names used
elsewhere (`AuditReport`, `mark_failed`, `draw_verdicts`, `box_iou`) are reachable here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audit_drawing import draw_verdicts, mark_failed  # noqa: F401 (reachable here, as before the split)
from .audit_report import AuditReport, _where
from .geometry import box_iou
from .pixels import to_bgr_uint8
from .records import COVERED, LEFT, Detection, FaceSet

MATCH_IOU = 0.3  # boxes overlapping at least this much are the same face
DLIB_DETECTOR_SCORE = 0.25  # dlib HOG detections below this are not taken for faces (false alarms)
# What the audit node does when a face is still recognizable (its on_fail widget, in this order).
ON_FAIL = ("stop the run", "save marked NOT ANONYMIZED", "redact the face (flat fill)")
STOP, MARK, REDACT = ON_FAIL
# The command line's --on-fail words for the node's choices, and its default by the shape of the job:
# one photo stops (the person running it looks at that photo and can run it again with other settings);
# a folder and a clip redact (one stubborn face would otherwise lose photo 9,000 of a dataset or a whole
# clip for frame 1,000; the flat fill is certain, and every face covered is reported).
ON_FAIL_WORDS = {"stop": STOP, "redact": REDACT}
ON_FAIL_DEFAULT = {"photo": "stop", "folder": "redact", "clip": "redact"}
SECOND_RECOGNIZER = ("dlib if installed", "dlib (required)", "off")
REDACTED = "redacted"  # the status of a face covered by the flat fill after it failed the audit


@dataclass
class Seen:
    """A face of one image as the audit sees it: where it is, and which detectors found it."""

    image_index: int
    detection: Detection
    found_by: list[str]
    status: str = "anonymized"  # for original faces: anonymized, covered, left by request
    row: int | None = None      # for original faces Detect and Align anonymized: their row in its face batch
    recorded: bool = False      # Detect and Align has it (anonymized, covered or left)

    @property
    def box(self):
        return self.detection.box

    @property
    def size(self) -> float:
        return self.detection.size


def merge(faces: list[Seen], new: list[Detection], image_index: int, detector: str) -> list[Seen]:
    """Add `new` detections to `faces`: one that overlaps a face already there is the same face
    (its detector is added to found_by; the first detector's landmarks are kept)."""
    for det in new:
        best, best_iou = None, MATCH_IOU
        for face in faces:
            iou = box_iou(face.box, det.box)
            if iou >= best_iou:
                best, best_iou = face, iou
        if best is None:
            faces.append(Seen(image_index, det, [detector]))
        elif detector not in best.found_by:
            best.found_by.append(detector)
    return faces


@dataclass
class Judgement:
    """One recognizer's verdict on one original face."""

    recognizer: str
    measure: str
    threshold: float
    at_place: float | None = None  # original face vs what is at its place in the final image
    measured_on: str = ""          # "the face found there" / "the original landmarks"
    matches: list[str] = field(default_factory=list)  # final faces it still matches, described
    reason: str = ""               # why it was not measured, when at_place is None
    retrieved: int | None = None   # the original face (of the whole batch) most like what is at its place
    places: list[tuple[int, tuple]] = field(default_factory=list)  # (final image, box) of every match

    @property
    def recognized(self) -> bool:
        return bool(self.matches)


@dataclass
class FaceAudit:
    index: int
    image_index: int
    box: np.ndarray
    size: float
    found_by: list[str]
    status: str
    judgements: list[Judgement] = field(default_factory=list)
    row: int | None = None  # the face's row in Detect and Align's batch (the sampler's face_guidance ROW)

    @property
    def recognized(self) -> bool:
        return any(j.recognized for j in self.judgements)

    @property
    def verdict(self) -> str:
        if self.status == "left by request":
            return "LEFT UN-ANONYMIZED BY REQUEST"
        if self.recognized:
            return "STILL RECOGNIZABLE"
        return "REDACTED" if self.status == REDACTED else "ok"

    @property
    def failed(self) -> bool:
        return self.verdict == "STILL RECOGNIZABLE"


@dataclass
class Auditor:
    """What the audit judges with: the analysis (its detector and ArcFace), the second recognizer
    and detector (dlib) when given, and the detection threshold of the analysis."""

    analyser: object
    recognizers: list
    dlib_detector: object = None
    detect_threshold: float = 0.5
    notes: list[str] = field(default_factory=list)

    def find(self, image: np.ndarray, image_index: int) -> list[Seen]:
        faces = [] if self.analyser is None else \
            merge([], self.analyser.detect(to_bgr_uint8(image), self.detect_threshold), image_index, "SCRFD")
        if self.dlib_detector is not None:
            found = [d for d in self.dlib_detector.detect(image) if d.score >= DLIB_DETECTOR_SCORE]
            faces = merge(faces, found, image_index, "dlib HOG")
        return faces


def make_auditor(analyser, arcface_threshold: float, dlib_threshold: float,
                 second: str = SECOND_RECOGNIZER[0], detect_threshold: float = 0.5) -> Auditor:
    from . import recognizers as rec

    if second not in SECOND_RECOGNIZER:
        raise ValueError(f"second_recognizer must be one of {SECOND_RECOGNIZER}, not {second!r}")
    judges = [rec.ArcFace(analyser, arcface_threshold)]
    rec.check_threshold(dlib_threshold, rec.DLIB_BOUNDS, "dlib")
    notes = []
    if second == "off":
        notes.append("the second recognizer is switched OFF: only ArcFace, the recognizer the method "
                     "optimizes against, judged these faces")
        return Auditor(analyser, judges, None, detect_threshold, notes)
    if not rec.dlib_available():
        if second == "dlib (required)":
            raise RuntimeError(f"the audit's second recognizer (dlib) is required but not installed: "
                               f"{rec.DLIB_PACKAGES}")
        notes.append(f"dlib is NOT installed, so only ArcFace, the recognizer the method optimizes against, "
                     f"judged these faces, and only SCRFD looked for them ({rec.DLIB_PACKAGES})")
        return Auditor(analyser, judges, None, detect_threshold, notes)
    judges.append(rec.Dlib(dlib_threshold))
    return Auditor(analyser, judges, rec.DlibHOG(), detect_threshold, notes)


def _anonymized(record) -> str:
    """The status of a face Detect and Align anonymized; one of a clip's faces that the detector missed and
    tracking interpolated says so."""
    if record.interpolated:
        return f"anonymized (interpolated along track {record.track}: the detector missed it here)"
    return "anonymized"


def _recorded(faceset: FaceSet | None, image_index: int) -> list[tuple[Detection, str, int | None]]:
    if faceset is None:
        return []
    out = [(Detection(faceset.faces[row].box, faceset.faces[row].landmarks, faceset.faces[row].score),
            _anonymized(faceset.faces[row]), row) for row in faceset.faces_of(image_index)]
    status = {COVERED: "covered", LEFT: "left by request"}
    out += [(Detection(s.box, s.landmarks, s.score), status[s.action], None)
            for s in faceset.skipped_of(image_index)]
    return out


def _attribute_missed(seen: list[Seen], recorded) -> None:
    """Faces a detector found in the original that Detect and Align does not have: their status says so,
    and one that holds exactly one anonymized face (its centre inside the box: the model edited part of
    this face) gets that face's row, the only lever guaranteed mode has on it."""
    for face in seen:
        if face.recorded:
            continue
        face.status = "missed by Detect and Align"
        x1, y1, x2, y2 = face.box
        inside = [row for det, status, row in recorded if row is not None
                  and x1 <= det.centre[0] <= x2 and y1 <= det.centre[1] <= y2]
        if len(inside) == 1:
            face.row = inside[0]


def audit(auditor: Auditor, originals, finals, faceset: FaceSet | None = None, on_step=None) -> AuditReport:
    """Audit final images against their originals (lists of HxWxC float arrays in 0..1, same
    sizes pairwise); `faceset`, when given, adds the faces Detect and Align recorded and says which
    were left by request. Returns an AuditReport."""
    originals, finals = list(originals), list(finals)
    if len(originals) != len(finals):
        raise ValueError(f"the audit got {len(finals)} final image(s) for {len(originals)} original(s): "
                         f"connect the photos that went into Detect and Align and the pasted-back photos")
    for i, (o, f) in enumerate(zip(originals, finals)):
        if np.shape(o)[:2] != np.shape(f)[:2]:
            raise ValueError(f"final image {i} is {np.shape(f)[1]}x{np.shape(f)[0]} but its original is "
                             f"{np.shape(o)[1]}x{np.shape(o)[0]}: the audit compares each face at its place")
    if faceset is not None and faceset.image_count != len(originals):
        raise ValueError(f"the face records are of {faceset.image_count} image(s), the audit got "
                         f"{len(originals)}: connect the faces of these photos")
    steps = 2 * len(originals) + 1
    orig_faces, final_faces = [], []
    for i, image in enumerate(originals):
        if on_step is not None:
            on_step(i, steps)
        seen = auditor.find(image, i)
        for det, status, row in _recorded(faceset, i):
            before = len(seen)
            seen = merge(seen, [det], i, "Detect and Align")
            target = seen[-1] if len(seen) > before else max(seen, key=lambda s: box_iou(s.box, det.box))
            if status != "anonymized":
                target.status = status
            if row is not None:
                target.row = row
            target.recorded = True
        if faceset is not None:
            _attribute_missed(seen, _recorded(faceset, i))
        # faces in reading order, as Detect and Align numbers them
        orig_faces.append(sorted(seen, key=lambda s: (round(s.detection.centre[0], 3), round(s.detection.centre[1], 3))))
    for i, image in enumerate(finals):
        if on_step is not None:
            on_step(len(originals) + i, steps)
        final_faces.append(auditor.find(image, i))

    report = AuditReport(faces=[], recognizers=[r.describe() for r in auditor.recognizers],
                         notes=list(auditor.notes), image_count=len(originals), rows_known=faceset is not None,
                         judges=[r.name for r in auditor.recognizers])
    for judge in auditor.recognizers:
        _judge(judge, originals, finals, orig_faces, final_faces, report)
    report.faces.sort(key=lambda f: f.index)
    if on_step is not None:
        on_step(steps, steps)
    return report


def _place_of(face, finals_here):
    """The index of the final face at `face`'s place (the largest overlap, at least MATCH_IOU), or None."""
    place = None
    for f_idx, final in enumerate(finals_here):
        if box_iou(final.box, face.box) >= MATCH_IOU:
            if place is None or box_iou(final.box, face.box) > box_iou(finals_here[place].box, face.box):
                place = f_idx
    return place


def _matches_elsewhere(judge, descriptor, final_desc, final_faces, image, place):
    """Every face of every final image, but the one at the face's own place, that `judge` takes for the
    person of `descriptor`: ("where (score)" text, (final image, box)) pairs."""
    out = []
    for fi, per_image in final_desc.items():
        values = judge.scores(descriptor, per_image)[0]
        for f_idx, value in enumerate(values):
            if fi == image and f_idx == place:
                continue
            if judge.same_person(float(value)):
                final = final_faces[fi][f_idx]
                out.append((f"{_where(final)} ({float(value):+.3f})", (fi, _box(final.box))))
    return out


def _box(box) -> tuple:
    return tuple(round(float(v), 2) for v in box)


def _judge(judge, originals, finals, orig_faces, final_faces, report):
    """Add one recognizer's judgements to the report (creating the FaceAudit rows on first use)."""
    by_index = {f.index: f for f in report.faces}
    final_desc = {}
    for i, faces in enumerate(final_faces):
        if faces:
            final_desc[i] = judge.descriptors(finals[i], [f.detection for f in faces])
    index = 0
    every_original, every_index, at_place = [], [], []  # for the retrieval among all original faces
    for i, faces in enumerate(orig_faces):
        if not faces:
            continue
        originals_desc = judge.descriptors(originals[i], [f.detection for f in faces])
        for k, face in enumerate(faces):
            if judge.name != "dlib" or "dlib HOG" in face.found_by:
                every_original.append(originals_desc[k])
                every_index.append(index + k)
        for k, face in enumerate(faces):
            row = by_index.get(index)
            if row is None:
                row = FaceAudit(index, i, face.box, face.size, face.found_by, face.status, row=face.row)
                report.faces.append(row)
                by_index[index] = row
            index += 1
            j = Judgement(judge.name, judge.measure, judge.threshold)
            row.judgements.append(j)
            if judge.name == "dlib" and "dlib HOG" not in face.found_by:
                j.reason = "dlib's detector sees no face here in the original, so its descriptor would be meaningless"
                continue
            # what is at its place in the final image
            place = _place_of(face, final_faces[i])
            if place is not None:
                here = final_desc[i][place:place + 1]
                j.measured_on = "the face found there"
            else:
                here = judge.descriptors(finals[i], [face.detection])
                j.measured_on = "the original landmarks"
            j.at_place = float(judge.scores(originals_desc[k:k + 1], here)[0, 0])
            at_place.append((j, here))
            if judge.same_person(j.at_place):
                j.matches.append(f"{_where(face)} (its own place, {j.at_place:+.3f})")
                j.places.append((i, _box(face.box if place is None else final_faces[i][place].box)))
            for text, where in _matches_elsewhere(judge, originals_desc[k:k + 1], final_desc, final_faces, i, place):
                j.matches.append(text)
                j.places.append(where)

    if every_original:
        gallery = np.stack(every_original)
        for j, here in at_place:
            values = judge.scores(here, gallery)[0]
            best = int(np.argmax(values) if judge.higher_is_same else np.argmin(values))
            j.retrieved = every_index[best]
