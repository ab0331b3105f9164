"""Plain records that travel between the face stages.

`Detection` is what the analyser finds in one image. `FaceRecord` is one detected face after
alignment: everything paste-back needs to put an edited crop where it came from. `SkippedFace` is a
detected face the model does not edit, by the user's explicit choice: covered by a fill (smaller
than the minimum size) or left as it was (beyond the maximum number of faces). `FaceSet` is the
whole batch: the faces in a fixed order, the sizes of the images they came from, the skipped faces,
and the images that yielded no face and were passed through on the user's explicit request (never
silently).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One face found by the detector, in the pixel coordinates of the image it was found in.

    box: (x1, y1, x2, y2); landmarks: 5x2 (left eye, right eye, nose tip, left and right mouth
    corner, as seen in the picture); score: the detector's confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def size(self) -> float:
        """Face size used by the minimum-size filter: the shorter side of the box."""
        return min(self.width, self.height)

    @property
    def centre(self) -> tuple[float, float]:
        return (float(self.box[0] + self.box[2]) / 2.0, float(self.box[1] + self.box[3]) / 2.0)


@dataclass(frozen=True)
class FaceRecord:
    """One aligned face: where it is in its image and how its crop was cut.

    transform is the 2x3 similarity matrix from image pixels to crop pixels (crop = M @ [x, y, 1]);
    crop_size is the side of the square crop it was made for; image_size is (height, width) of the
    source image; padding and vshift are the template parameters the crop was made with. For the
    frames of a clip (Detect and Track Faces), track is the person's track id and interpolated is True
    when the detector missed the face in this frame and its place was interpolated along the track.
    """

    image_index: int
    box: np.ndarray
    landmarks: np.ndarray
    transform: np.ndarray
    score: float
    crop_size: int
    image_size: tuple[int, int]
    padding: float
    vshift: float
    track: int | None = None
    interpolated: bool = False

    def crop_landmarks(self, crop_size: int | None = None) -> np.ndarray:
        """The landmarks in crop pixels, for a crop of `crop_size` (default: the size cut)."""
        pts = self.landmarks @ self.transform[:, :2].T + self.transform[:, 2]
        if crop_size is not None and crop_size != self.crop_size:
            pts = pts * (float(crop_size) / float(self.crop_size))
        return pts

    def transform_for(self, crop_size: int) -> np.ndarray:
        """The image-to-crop matrix for the same crop resampled to `crop_size` pixels."""
        if crop_size == self.crop_size:
            return self.transform.copy()
        return self.transform * (float(crop_size) / float(self.crop_size))


COVERED = "covered"  # a SkippedFace painted over with a solid fill: no identity can remain
LEFT = "left"        # a SkippedFace left exactly as it was, on request; the image is marked


@dataclass(frozen=True)
class SkippedFace:
    """A detected face that the model does not anonymize, on the user's explicit request.

    action is COVERED (the face was smaller than the minimum face size: paste-back fills its
    region with one flat colour) or LEFT (there were more faces than max_faces allowed and the user
    chose to leave the others visible: paste-back leaves it, outlines it and marks the image).
    reason says which setting caused it, for the report.
    """

    image_index: int
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    action: str
    reason: str

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    def describe(self) -> str:
        x, y = (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0
        what = "covered with a flat fill" if self.action == COVERED else "LEFT UN-ANONYMIZED by request"
        return f"image {self.image_index}: face at ({x:.0f}, {y:.0f}), {self.size:.0f} px, {what} ({self.reason})"


@dataclass
class FaceSet:
    """All faces of an image batch, in the documented order (image index, then left to right by
    box centre x, then top to bottom by box centre y).

    passed_through maps an image index to the reason it has fewer faces than required; such
    images exist only when the user chose on_no_face = "pass through (marked)", and paste-back
    marks them visibly. placeholder is True when no image yielded any face, so the crop batch
    holds a single grey placeholder crop (ComfyUI has no empty IMAGE batch) that paste-back
    ignores. skipped lists the detected faces the model does not edit (see SkippedFace); paste-back
    covers or marks them. For the frames of a clip: unchanged maps a frame index to why it yielded no
    face (it is passed through unchanged, not marked, so the clip keeps its frames), and long_gaps
    (tracks.LongGap) say which tracks went unseen for longer than tracking interpolates.
    """

    faces: list[FaceRecord]
    image_sizes: list[tuple[int, int]]
    crop_size: int
    padding: float
    vshift: float
    passed_through: dict[int, str] = field(default_factory=dict)
    placeholder: bool = False
    skipped: list[SkippedFace] = field(default_factory=list)
    long_gaps: list = field(default_factory=list)
    unchanged: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def image_count(self) -> int:
        return len(self.image_sizes)

    def faces_of(self, image_index: int) -> list[int]:
        """Indices (into faces and the crop batch) of the faces of one image."""
        return [i for i, f in enumerate(self.faces) if f.image_index == image_index]

    def skipped_of(self, image_index: int, action: str | None = None) -> list[SkippedFace]:
        """The skipped faces of one image (only those with `action`, when given)."""
        return [f for f in self.skipped
                if f.image_index == image_index and (action is None or f.action == action)]

    @property
    def track_notes(self) -> list[str]:
        """The long gaps of the tracks, one readable line each."""
        return [gap.note() for gap in self.long_gaps]

    def tracking_summary(self) -> dict:
        """What tracking did, as plain data (Detect and Track's UI output, read by the CLI): the long gaps
        per track and frame range, the faces interpolated, the frames that passed through unchanged."""
        return {"long_gaps": [gap.as_dict() for gap in self.long_gaps],
                "interpolated": [{"frame": f.image_index, "track": f.track} for f in self.faces if f.interpolated],
                "unchanged_frames": sorted(self.unchanged)}

    def warning(self) -> str:
        """A readable account of the images passed through unanonymized and of every face the model
        did not edit ("" when none)."""
        lines = [f"WARNING: image {i} was NOT anonymized: {reason}"
                 for i, reason in sorted(self.passed_through.items())]
        lines += [f"WARNING: {note}" for note in self.track_notes]
        if self.unchanged:
            lines.append(f"NOTE: {len(self.unchanged)} frame(s) without a face detected passed through unchanged: "
                         f"{_ranges(sorted(self.unchanged))}")
        filled = [f for f in self.faces if f.interpolated]
        if filled:
            lines.append(f"NOTE: {len(filled)} face(s) the detector missed were interpolated along their track "
                         f"and anonymized:")
            lines += [f"  image {f.image_index}: track {f.track}, face at ({(f.box[0] + f.box[2]) / 2:.0f}, "
                      f"{(f.box[1] + f.box[3]) / 2:.0f})" for f in filled]
        left = [f for f in self.skipped if f.action == LEFT]
        if left:
            lines.append(f"WARNING: {len(left)} face(s) left un-anonymized by request:")
            lines += [f"  {f.describe()}" for f in left]
        covered = [f for f in self.skipped if f.action == COVERED]
        if covered:
            lines.append(f"NOTE: {len(covered)} face(s) too small for the model, covered with a flat fill:")
            lines += [f"  {f.describe()}" for f in covered]
        return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    """Frame indices as ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)
