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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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


def box_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(ax2 - ax1, 0) * max(ay2 - ay1, 0) + max(bx2 - bx1, 0) * max(by2 - by1, 0) - inter
    return inter / union if union > 0 else 0.0


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


def _where(face) -> str:
    cx, cy = (face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0
    return f"image {face.image_index} at ({cx:.0f}, {cy:.0f})"



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
