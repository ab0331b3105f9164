"""The face stages end to end, on plain numpy images (HxWxC float32 RGB in 0..1, C = 1, 3 or 4):
detect and align every face of a batch, embed faces, paste edited crops back. Fail closed: an
image without the faces it should have stops the run with a message saying what to try, unless
the caller explicitly asks to pass such images through, in which case they are recorded in the
FaceSet and marked visibly by paste-back. Every detection is accounted for: a face is anonymized,
covered by a flat fill (smaller than the minimum size the user set), or left visible because the
user allowed fewer faces than were found and chose so explicitly; the last two are recorded in the
FaceSet, reported, and shown by paste-back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .align import (DEFAULT_CROP_SIZE, DEFAULT_PADDING, DEFAULT_VSHIFT, align_face, check_crop_size,
                    check_padding, face_mask)
from .analysis import FaceAnalyser, largest, reading_order, split_faces
from .paste import (DEFAULT_FEATHER, check_feather, cover_faces, feathered_alpha, mark_left_faces, mark_not_anonymized,
                    paste_faces)
from .pixels import colour_channels, to_bgr_uint8
from . import tracks
from .records import COVERED, LEFT, FaceRecord, FaceSet, SkippedFace
from .tracks import TrackSettings

log = logging.getLogger("revpers.faces")

ON_NO_FACE = ("error", "pass through (marked)")
# For the frames of a clip (with tracking) a frame in which nobody is seen is normal: it is passed through
# unchanged and listed in the FaceSet (frame count and order are kept). A clip with no face at all still fails.
FRAME_UNCHANGED = "pass through unchanged (reported)"
ON_NO_FACE_IN_FRAME = (FRAME_UNCHANGED,) + ON_NO_FACE
BEYOND_MAX_FACES = ("error", "leave visible (marked)")
PLACEHOLDER_GREY = 0.5


def _bgr(image: np.ndarray) -> np.ndarray:
    """A float picture of the batch as InsightFace's BGR uint8."""
    return to_bgr_uint8(np.asarray(image, dtype=np.float32))


@dataclass(frozen=True)
class AlignSettings:
    """How faces are found and aligned, checked once where a run starts (as TrackSettings for tracks):
    the crop's side and margin (padding, vshift), which detections count (threshold, min_size: smaller
    faces are covered, max_faces: 0 = all, beyond_max_faces), and the fail-closed policy (expected_faces
    per image, at least one when 0; on_no_face)."""

    crop_size: int = DEFAULT_CROP_SIZE
    padding: float = DEFAULT_PADDING
    vshift: float = DEFAULT_VSHIFT
    threshold: float = 0.5
    min_size: float = 0.0
    max_faces: int = 0
    expected_faces: int = 0
    on_no_face: str = "error"
    beyond_max_faces: str = "error"

    def __post_init__(self):
        if self.on_no_face not in ON_NO_FACE_IN_FRAME:
            raise ValueError(f"on_no_face must be one of {ON_NO_FACE_IN_FRAME}, not {self.on_no_face!r}")
        if self.beyond_max_faces not in BEYOND_MAX_FACES:
            raise ValueError(f"beyond_max_faces must be one of {BEYOND_MAX_FACES}, not {self.beyond_max_faces!r}")
        if self.max_faces and self.expected_faces and self.expected_faces > self.max_faces:
            raise ValueError(f"expected_faces ({self.expected_faces}) is larger than max_faces ({self.max_faces}): "
                             f"no image could satisfy both")
        object.__setattr__(self, "crop_size", check_crop_size(self.crop_size))
        object.__setattr__(self, "padding", check_padding(self.padding))


def _settings(settings: AlignSettings | None, fields: dict) -> AlignSettings:
    """`settings`, or AlignSettings made of the keyword `fields` (a shorthand for callers and tests)."""
    if settings is not None and fields:
        raise TypeError(f"give AlignSettings or its fields ({', '.join(fields)}), not both")
    return settings if settings is not None else AlignSettings(**fields)


def _no_face_advice(threshold: float, det_size: int, min_size: float) -> str:
    return (f"Try: a lower detection threshold (now {threshold:.2f}); a larger detection size in the "
            f"face analysis loader for small faces (now {det_size}); a smaller minimum face size "
            f"(now {min_size:g} px). Or set on_no_face to 'pass through (marked)' to let such images "
            f"through with a visible NOT ANONYMIZED mark.")


def _too_many_faces(index: int, total: int, max_faces: int) -> str:
    return (f"Face detection: image {index} has {total} faces to anonymize but max_faces is {max_faces}; "
            f"nothing was anonymized (the other {total - max_faces} would be left as they are). Raise "
            f"max_faces (0 = all faces), or set beyond_max_faces to 'leave visible (marked)' to leave "
            f"them un-anonymized on purpose: the image is then marked and each of them reported.")


def share_out(index: int, detections, min_size: float = 0.0, max_faces: int = 0,
              beyond_max_faces: str = "error"):
    """The detections of image `index` shared out: (to anonymize, [SkippedFace]). Faces smaller than
    `min_size` are covered; faces beyond `max_faces` raise ValueError unless beyond_max_faces says to
    leave them visible. Nothing is dropped."""
    if beyond_max_faces not in BEYOND_MAX_FACES:
        raise ValueError(f"beyond_max_faces must be one of {BEYOND_MAX_FACES}, not {beyond_max_faces!r}")
    keep, small, beyond = split_faces(detections, min_size, max_faces)
    if beyond and beyond_max_faces == "error":
        raise ValueError(_too_many_faces(index, len(keep) + len(beyond), max_faces))
    skipped = [SkippedFace(index, np.asarray(d.box, np.float64).copy(), np.asarray(d.landmarks, np.float64).copy(),
                           float(d.score), COVERED, f"below min_face_size {min_size:g} px") for d in small]
    skipped += [SkippedFace(index, np.asarray(d.box, np.float64).copy(), np.asarray(d.landmarks, np.float64).copy(),
                            float(d.score), LEFT, f"beyond max_faces {max_faces}") for d in beyond]
    return keep, skipped


def detect_and_align(analyser: FaceAnalyser, images, settings: AlignSettings | None = None, on_step=None,
                     tracking: TrackSettings | None = None, **fields):
    """Find and align the faces of every image (detection by `analyser`, `share_out`, then
    `align_detections`), as `settings` (or its `fields` given as keywords) say. Every face the detector
    scores at or above the threshold is anonymized, covered (below min_size) or, only with
    beyond_max_faces 'leave visible (marked)', left.
    With `tracking` the images are the frames of a clip, in time order: the detections are linked
    into tracks and the faces missed in short gaps of a track are interpolated (see tracks.py); the
    face records carry their track id.

    Returns (FaceSet, crops [F, S, S, 3] float32, masks [F, S, S] float32); see align_detections.
    """
    settings = _settings(settings, fields)
    if settings.on_no_face == FRAME_UNCHANGED and tracking is None:
        raise ValueError(f"on_no_face {FRAME_UNCHANGED!r} is for the frames of a clip (Detect and Track Faces); "
                         f"for photos use one of {ON_NO_FACE}")
    images = list(images)
    detected, embeddings = [], []
    for index, image in enumerate(images):
        if on_step is not None:
            on_step(index, len(images))
        bgr = _bgr(image)
        detected.append(analyser.detect(bgr, settings.threshold))
        if tracking is not None:
            embeddings.append(analyser.embed(bgr, [d.landmarks for d in detected[-1]]))
    gaps = []
    if tracking is not None:
        ids = tracks.link(detected, embeddings, tracking)
        detected, gaps = tracks.fill_gaps(detected, ids, tracking.max_gap)
    found, skipped = [], []
    for index, detections in enumerate(detected):
        keep, skip = share_out(index, detections, settings.min_size, settings.max_faces, settings.beyond_max_faces)
        found.append(keep)
        skipped += skip
    if on_step is not None:
        on_step(len(images), len(images))
    advice = _no_face_advice(settings.threshold, analyser.det_size, settings.min_size)
    return _align(images, found, settings, advice, skipped, gaps)


def align_detections(images, detections, settings: AlignSettings | None = None, advice: str = "", skipped=(),
                     long_gaps=(), **fields):
    """Align given detections (per image, in the order wanted) and apply the fail-closed policy of
    `settings` (or its `fields` as keywords; the detection fields are not used here).

    skipped: SkippedFace records of faces that are covered or left instead of anonymized (they
    count as found). expected_faces: the number each image must yield at least (0 means at least
    one). An image with fewer raises ValueError (on_no_face "error") or is recorded as passed through (on_no_face
    "pass through (marked)"). When no image has a face at all, crops and masks hold one grey
    placeholder with an empty mask and FaceSet.placeholder is True.
    Returns (FaceSet, crops [F, S, S, 3] float32, masks [F, S, S] float32).
    """
    return _align(images, detections, _settings(settings, fields), advice, skipped, long_gaps)


def _align(images, detections, settings: AlignSettings, advice, skipped, long_gaps):
    """align_detections on checked settings (also the last part of detect_and_align)."""
    crop_size, padding, vshift, on_no_face = settings.crop_size, settings.padding, settings.vshift, settings.on_no_face
    images = list(images)
    if not images:
        raise ValueError("no images were given")
    if len(detections) != len(images):
        raise ValueError(f"{len(detections)} detection lists for {len(images)} images")
    need = max(1, int(settings.expected_faces))
    skipped = list(skipped)
    sizes, records, crops, passed, unchanged = [], [], [], {}, {}
    for index, (image, found) in enumerate(zip(images, detections)):
        rgb = colour_channels(np.asarray(image, dtype=np.float32), 3)
        height, width = rgb.shape[:2]
        sizes.append((height, width))
        count = len(found) + sum(1 for f in skipped if f.image_index == index)
        if count < need:
            what = "no face" if not count else f"only {count} face(s)"
            reason = (f"{what} found where at least {need} {'was' if need == 1 else 'were'} expected "
                      f"(image {index}, {width}x{height})")
            if on_no_face == "error":
                raise ValueError(f"Face detection: {reason}; nothing was anonymized. {advice}".rstrip())
            if on_no_face == FRAME_UNCHANGED and not count:
                unchanged[index] = reason
                continue
            if on_no_face == FRAME_UNCHANGED:
                raise ValueError(f"Face detection: {reason}; nothing was anonymized. Set expected_faces to 0 for "
                                 f"frames in which the number of people changes.")
            passed[index] = reason
            log.warning("revpers: image %d passed through NOT anonymized: %s", index, reason)
        for det in found:
            crop, matrix = align_face(rgb, det.landmarks, crop_size, padding, vshift)
            crops.append(crop)
            records.append(FaceRecord(
                image_index=index, box=np.asarray(det.box, dtype=np.float64).copy(),
                landmarks=np.asarray(det.landmarks, dtype=np.float64).copy(), transform=matrix,
                score=float(det.score), crop_size=crop_size, image_size=(height, width), padding=padding,
                vshift=vshift, track=getattr(det, "track", None), interpolated=getattr(det, "interpolated", False)))
    faceset = FaceSet(faces=records, image_sizes=sizes, crop_size=crop_size, padding=padding,
                      vshift=vshift, passed_through=passed, placeholder=not records, skipped=skipped,
                      long_gaps=list(long_gaps), unchanged=unchanged)
    if not records and on_no_face == FRAME_UNCHANGED:
        raise ValueError(f"Face detection: no face in any of the {len(images)} frame(s); nothing was anonymized. "
                         f"{advice}".rstrip())
    if not records:
        crops_arr = np.full((1, crop_size, crop_size, 3), PLACEHOLDER_GREY, dtype=np.float32)
        masks_arr = np.zeros((1, crop_size, crop_size), dtype=np.float32)
    else:
        crops_arr = np.stack(crops).astype(np.float32)
        masks_arr = np.repeat(face_mask(crop_size, padding)[None], len(records), axis=0)
    return faceset, crops_arr, masks_arr


def paste_back(images, crops, faceset: FaceSet, masks=None, feather: float = DEFAULT_FEATHER, on_step=None):
    """Put edited crops back into their images.

    images: the photos Detect and Align Faces was given (same count and sizes); crops [F, S', S', 3] in the
    FaceSet's order (any S': the transforms are rescaled); masks [F, S'', S''] or None for the
    standard face masks; feather: the width of the soft edge as a fraction of the crop side.
    Faces recorded as covered are filled with a flat colour; faces left by request are outlined
    and their image is marked; images recorded as passed through are marked NOT ANONYMIZED.
    Returns (images, coverage masks, warning text).
    """
    images, crops, masks, feather = _check_paste(images, crops, faceset, masks, feather)
    size = crops.shape[1]
    default_alpha = None
    outs, coverages = [], []
    for index, image in enumerate(images):
        if on_step is not None:
            on_step(index, len(images))
        pieces = []
        for k in faceset.faces_of(index):
            if masks is None:
                if default_alpha is None:
                    mask = face_mask(size, faceset.padding)
                    default_alpha = feathered_alpha(mask, feather * size)
                alpha = default_alpha
            else:
                m = masks[k if masks.shape[0] > 1 else 0]
                if m.shape != (size, size):
                    import cv2
                    m = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
                alpha = feathered_alpha(m, feather * size)
            pieces.append((crops[k, :, :, :3], alpha, faceset.faces[k].transform_for(size)))
        out, coverage = paste_faces(image, pieces)
        out, coverage = cover_faces(out, coverage, [f.box for f in faceset.skipped_of(index, COVERED)])
        left = faceset.skipped_of(index, LEFT)
        if left:
            out = mark_left_faces(out, [f.box for f in left])
        if index in faceset.passed_through:
            out = mark_not_anonymized(out)
        outs.append(out)
        coverages.append(coverage)
    if on_step is not None:
        on_step(len(images), len(images))
    return outs, coverages, faceset.warning()


def _check_paste(images, crops, faceset: FaceSet, masks, feather):
    """paste_back's inputs checked against the FaceSet: (images, crops, masks, feather) as float32 arrays."""
    images = [np.asarray(im, dtype=np.float32) for im in images]
    if len(images) != faceset.image_count:
        raise ValueError(f"paste-back got {len(images)} image(s) but the faces were found in "
                         f"{faceset.image_count}: connect the same images that went into detection")
    for i, (im, (h, w)) in enumerate(zip(images, faceset.image_sizes)):
        if im.shape[:2] != (h, w):
            raise ValueError(f"image {i} is {im.shape[1]}x{im.shape[0]} but its faces were found in a "
                             f"{w}x{h} image: connect the same images that went into detection")
    feather = check_feather(feather)
    crops = np.asarray(crops, dtype=np.float32)
    if crops.ndim != 4:
        raise ValueError(f"crops must be a batch [F, S, S, C], got shape {crops.shape}")
    if crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops must be square, got {crops.shape[2]}x{crops.shape[1]}")
    n = len(faceset.faces)
    if not faceset.placeholder and crops.shape[0] != n:
        raise ValueError(f"paste-back got {crops.shape[0]} crop(s) for {n} detected face(s): the crops "
                         f"must be the ones Detect and Align Faces (RevPers) produced, in the same order")
    if masks is not None:
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim == 2:
            masks = masks[None]
        if not faceset.placeholder and masks.shape[0] not in (1, n):
            raise ValueError(f"paste-back got {masks.shape[0]} mask(s) for {n} face(s)")
    return images, crops, masks, feather


def embed_images(analyser: FaceAnalyser, images, threshold: float = 0.5, select: str = "largest"):
    """One embedding per image from detection, as the reference does (largest face by default).

    select: "largest" (box area), "leftmost" (first in reading order) or "most confident".
    Returns ([N, 512] float32, [Detection]). No face in an image is an error.
    """
    rows, chosen = [], []
    for index, image in enumerate(images):
        bgr = _bgr(image)
        found = analyser.detect(bgr, threshold)
        if not found:
            h, w = bgr.shape[:2]
            raise ValueError(
                f"ArcFace embedding: no face found in image {index} ({w}x{h}); cannot take its identity. "
                f"Try a lower detection threshold (now {threshold:.2f}) or a larger detection size in "
                f"the face analysis loader (now {analyser.det_size}).")
        if select == "largest":
            det = largest(found)
        elif select == "leftmost":
            det = reading_order(found)[0]
        elif select == "most confident":
            det = max(found, key=lambda d: d.score)
        else:
            raise ValueError(f"unknown face selection {select!r}")
        rows.append(analyser.embed(bgr, [det.landmarks])[0])
        chosen.append(det)
    return np.stack(rows).astype(np.float32), chosen


def embed_aligned(analyser: FaceAnalyser, crops, faceset: FaceSet, identity: str = "per face"):
    """Embeddings of aligned crops from their recorded landmarks, without a second detection.
    crops [F, S, S, C] in the FaceSet's order (resized crops are fine). identity "per track": every face
    of a track gets the track's one identity (tracks.track_identities; faces without a track keep
    their own). Returns [F, 512]; for a placeholder FaceSet (no face anywhere, pass-through mode) one
    all-zero row: the null identity."""
    if identity not in tracks.IDENTITY:
        raise ValueError(f"identity must be one of {tracks.IDENTITY}, not {identity!r}")
    crops = np.asarray(crops, dtype=np.float32)
    if faceset.placeholder:
        return np.zeros((1, 512), dtype=np.float32)
    if crops.ndim != 4 or crops.shape[0] != len(faceset.faces):
        raise ValueError(f"got {crops.shape[0] if crops.ndim == 4 else crops.shape} crop(s) for "
                         f"{len(faceset.faces)} face(s): with faces connected, the image input must be "
                         f"the crops Detect and Align Faces (RevPers) made from them, in the same order")
    if crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops must be square, got {crops.shape[2]}x{crops.shape[1]}")
    size = crops.shape[1]
    rows = []
    for crop, record in zip(crops, faceset.faces):
        bgr = _bgr(crop)
        rows.append(analyser.embed(bgr, [record.crop_landmarks(size)])[0])
    rows = np.stack(rows).astype(np.float32)
    if identity == "per track":
        rows = tracks.track_identities(rows, [f.track for f in faceset.faces],
                                       [f.interpolated for f in faceset.faces])
    return rows


def _embed_for_check(analyser: FaceAnalyser, images, faceset: FaceSet | None, threshold: float, what: str,
                     landmarks=None):
    """Embeddings of a batch for the anonymity check: from the recorded landmarks when faces are
    given; else at `landmarks[i]` (5x2, or None) where given for image i; else of the largest detected
    face. Returns (rows [N, 512], {row: reason}, [landmarks used per row, or None])."""
    images = [np.asarray(im, dtype=np.float32) for im in images]
    if faceset is not None:
        return embed_aligned(analyser, np.stack(images), faceset), {}, [None] * len(images)
    rows, missing, used = [], {}, []
    for index, image in enumerate(images):
        bgr = _bgr(image)
        points = landmarks[index] if landmarks is not None else None
        if points is None:
            found = analyser.detect(bgr, threshold)
            if not found:
                missing[index] = f"no face found in {what} image {index}"
                rows.append(np.zeros(512, dtype=np.float32))
                used.append(None)
                continue
            points = largest(found).landmarks
        rows.append(analyser.embed(bgr, [points])[0])
        used.append(points)
    return np.stack(rows).astype(np.float32), missing, used


def _same_place(original, anonymized, points):
    """The original's landmarks for each anonymized image of the same size (an edit keeps the face where
    it was, so both sides are measured at the same place even when the edit leaves no detectable
    face); None where sizes differ or the original had no face."""
    if points is None:
        return None
    originals = [np.asarray(im) for im in original]
    out = []
    for index, image in enumerate(anonymized):
        j = index if len(originals) > 1 else 0
        same = j < len(originals) and np.asarray(image).shape[:2] == originals[j].shape[:2]
        out.append(points[j] if same and j < len(points) else None)
    return out


def check_anonymity(analyser: FaceAnalyser, anonymized, original=None, original_embeddings=None,
                    faceset: FaceSet | None = None, threshold: float = 0.30, detect_threshold: float = 0.5):
    """Per-face ArcFace similarity between original and anonymized faces.

    anonymized: anonymized crops (with `faceset`: the crops of those faces, in order) or photos
    (then the largest face of each is measured). The original side is `original_embeddings`
    ([N, 512] or [1, 512]) if given, else `original` images treated like `anonymized`. Faces that
    cannot be measured, and images the FaceSet records as passed through unanonymized, are listed
    as failures. Returns an AnonymityReport.
    """
    from .metrics import AnonymityReport, FaceCheck, build_report

    if faceset is not None and faceset.placeholder:
        report = AnonymityReport(threshold=float(threshold))
    else:
        points = None
        if original_embeddings is not None:
            orig = np.atleast_2d(np.asarray(original_embeddings, dtype=np.float32))
            orig_missing = {}
        elif original is not None:
            orig, orig_missing, points = _embed_for_check(analyser, original, faceset, detect_threshold, "original")
        else:
            raise ValueError("the anonymity check needs the original faces: connect either the original "
                             "images/crops or their identity embeddings")
        anon, missing, _ = _embed_for_check(analyser, anonymized, faceset, detect_threshold, "anonymized",
                                            landmarks=_same_place(original, anonymized, points)
                                            if faceset is None and original is not None else None)
        if orig.shape[0] not in (1, anon.shape[0]):
            raise ValueError(f"cannot pair {orig.shape[0]} original face(s) with {anon.shape[0]} anonymized "
                             f"face(s): give one original per anonymized face, or a single one for all")
        if orig.shape[0] == 1 and orig_missing:
            missing = {i: orig_missing[0] for i in range(anon.shape[0])}
        else:
            missing = {**orig_missing, **missing}
        indices = [f.image_index for f in faceset.faces] if faceset is not None else None
        report = build_report(orig, anon, threshold, image_indices=indices, missing=missing)
    if faceset is not None:
        for image_index, reason in sorted(faceset.passed_through.items()):
            report.faces.append(FaceCheck(len(report.faces), None, image_index,
                                          f"image passed through NOT anonymized: {reason}"))
    return report
