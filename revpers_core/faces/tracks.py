"""Face tracks over the frames of a clip: one person, one track id, one new identity.

The frames of a video are an image batch in time order. `link` joins the detections of successive
frames into tracks: a detection continues a track when its box overlaps the box the track is
expected at (its last box moved by its last velocity) by at least `min_iou`, or when its ArcFace
embedding is at least `min_similarity` (cosine) from the mean embedding of the track, which also
joins a face again after it was lost for longer; each track takes at most one face per frame, the
best pairs (overlap + similarity) first. `fill_gaps` then puts back, by linear interpolation of box
and landmarks, the faces the detector missed (motion blur, a turned head) in gaps of at most
`max_gap` frames between two sightings of a track, so that they are anonymized too; a longer gap
is not guessed but reported. Track ids count from 0 in order of first sighting (within a frame,
reading order). `track_identities` gives each track one identity: the mean of its sighted faces'
L2-normalised embeddings, normalised again (interpolated faces, whose crops may show no face, do
not count), so a person becomes the same new face in every frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import box_iou
from .records import Detection

DEFAULT_MAX_GAP = 8
MAX_GAP = 1000
DEFAULT_MIN_IOU = 0.3
DEFAULT_MIN_SIMILARITY = 0.5
IDENTITY = ("per track", "per face")  # one identity per person, or each face its own (the photo mode)


@dataclass(frozen=True)
class TrackedDetection(Detection):
    """A detection with its track: `track` its id; `interpolated` True when the detector did not find it in
    this frame and box and landmarks were interpolated between two sightings (score is then 0)."""

    track: int = -1
    interpolated: bool = False


@dataclass(frozen=True)
class LongGap:
    """A track not seen for more than `max_gap` frames between two sightings: frames `first` to `last`
    (inclusive) were not interpolated, so a face of that person there is left to the audit."""

    track: int
    first: int
    last: int
    max_gap: int

    @property
    def frames(self) -> int:
        return self.last - self.first + 1

    def as_dict(self) -> dict:
        return {"track": self.track, "first_frame": self.first, "last_frame": self.last, "frames": self.frames,
                "max_gap": self.max_gap}

    def note(self) -> str:
        return (f"track {self.track} was not detected in frames {self.first}-{self.last} ({self.frames} frames, "
                f"more than max_gap {self.max_gap}): those frames were NOT interpolated; any face of it there is "
                f"left to the audit")


@dataclass(frozen=True)
class TrackSettings:
    max_gap: int = DEFAULT_MAX_GAP
    min_iou: float = DEFAULT_MIN_IOU
    min_similarity: float = DEFAULT_MIN_SIMILARITY

    def __post_init__(self):
        if not 0 <= int(self.max_gap) <= MAX_GAP:
            raise ValueError(f"max_gap {self.max_gap} is out of range: use 0 (never interpolate) to {MAX_GAP} frames")
        if not 0.0 < float(self.min_iou) <= 1.0:
            raise ValueError(f"min_iou {self.min_iou} is out of range: use more than 0 and at most 1")
        if not -1.0 <= float(self.min_similarity) <= 1.0:
            raise ValueError(f"min_similarity {self.min_similarity} is out of range: use -1 to 1 "
                             f"(1 = join by overlap only)")


@dataclass
class _Track:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    embedding_sum: np.ndarray | None = None

    def expected_box(self, frame: int) -> np.ndarray:
        """The last box moved on by the last frame-to-frame velocity (constant motion)."""
        last = self.boxes[-1]
        if len(self.frames) < 2:
            return last
        velocity = (last - self.boxes[-2]) / float(self.frames[-1] - self.frames[-2])
        return last + velocity * float(frame - self.frames[-1])

    def similarity(self, embedding) -> float:
        if embedding is None or self.embedding_sum is None:
            return -1.0
        norm = float(np.linalg.norm(self.embedding_sum))
        return float(np.dot(self.embedding_sum, embedding) / norm) if norm > 0 else -1.0

    def add(self, frame: int, det: Detection, embedding) -> None:
        self.frames.append(frame)
        self.boxes.append(np.asarray(det.box, dtype=np.float64))
        if embedding is not None:
            e = np.asarray(embedding, dtype=np.float64)
            self.embedding_sum = e.copy() if self.embedding_sum is None else self.embedding_sum + e


def _reading_order(detections) -> list[int]:
    return sorted(range(len(detections)), key=lambda i: (round(detections[i].centre[0], 3),
                                                         round(detections[i].centre[1], 3)))


def link(frames, embeddings=None, settings: TrackSettings = TrackSettings()) -> list[list[int]]:
    """Track ids for the detections of each frame. frames: per frame, a list of Detection; embeddings:
    per frame, [n, E] L2-normalised rows for its detections, or None (link by overlap alone).
    Returns, per frame, one track id per detection, in the detections' order."""
    tracks: list[_Track] = []
    ids_per_frame = []
    for t, dets in enumerate(frames):
        embs = None if embeddings is None else embeddings[t]
        pairs = []
        for k, track in enumerate(tracks):
            if track.frames[-1] >= t:
                continue
            expected = track.expected_box(t)
            near = t - track.frames[-1] <= settings.max_gap + 1
            for i, det in enumerate(dets):
                iou = box_iou(expected, det.box) if near else 0.0
                sim = track.similarity(None if embs is None else embs[i])
                if iou >= settings.min_iou or (embs is not None and sim >= settings.min_similarity):
                    pairs.append((iou + max(sim, 0.0), k, i))
        ids = [-1] * len(dets)
        used = set()
        for _, k, i in sorted(pairs, key=lambda p: -p[0]):
            if ids[i] < 0 and k not in used:
                ids[i] = tracks[k].id
                used.add(k)
        for i in _reading_order(dets):
            if ids[i] < 0:
                tracks.append(_Track(len(tracks)))
                ids[i] = tracks[-1].id
        for i, det in enumerate(dets):
            tracks[ids[i]].add(t, det, None if embs is None else embs[i])
        ids_per_frame.append(ids)
    return ids_per_frame


def fill_gaps(frames, ids, max_gap: int = DEFAULT_MAX_GAP):
    """The frames' detections as TrackedDetection, with the faces a track misses in gaps of at most
    `max_gap` frames put in (interpolated: box and landmarks linear between the sightings on either side).
    Returns (per frame a list of TrackedDetection, long gaps): a LongGap per gap longer than `max_gap`,
    which track was not seen in which frames (those frames are not guessed)."""
    out = [[TrackedDetection(d.box, d.landmarks, d.score, track=ids[t][i]) for i, d in enumerate(dets)]
           for t, dets in enumerate(frames)]
    sightings: dict[int, list[tuple[int, TrackedDetection]]] = {}
    for t, dets in enumerate(out):
        for d in dets:
            sightings.setdefault(d.track, []).append((t, d))
    gaps = []
    for track, seen in sorted(sightings.items()):
        for (a, da), (b, db) in zip(seen, seen[1:]):
            missing = b - a - 1
            if missing <= 0:
                continue
            if missing > max_gap:
                gaps.append(LongGap(track, a + 1, b - 1, max_gap))
                continue
            for t in range(a + 1, b):
                w = (t - a) / float(b - a)
                out[t].append(TrackedDetection((1 - w) * da.box + w * db.box,
                                               (1 - w) * da.landmarks + w * db.landmarks, 0.0,
                                               track=track, interpolated=True))
    return out, gaps


def track_identities(rows: np.ndarray, tracks, interpolated) -> np.ndarray:
    """One identity per track: each row replaced by the normalised mean of the rows of its track that were
    sighted (not interpolated). rows [F, E]; tracks, interpolated: per row. A row without a track (-1 or
    None) keeps its own; a track with no sighted row keeps the mean of all its rows."""
    rows = np.asarray(rows, dtype=np.float32)
    out = rows.copy()
    tracks = [-1 if t is None else int(t) for t in tracks]
    for track in sorted(set(tracks) - {-1}):
        members = [i for i, t in enumerate(tracks) if t == track]
        sighted = [i for i in members if not interpolated[i]] or members
        mean = rows[sighted].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            out[members] = (mean / norm).astype(np.float32)
    return out
