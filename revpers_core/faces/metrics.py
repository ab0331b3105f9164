"""Identity similarity between original and anonymized faces.

The measure is the cosine similarity of ArcFace embeddings, cos(e_o, e_a) = e_o . e_a / (|e_o| |e_a|),
the score face-verification systems threshold to decide "same person". The same face scores 1;
unrelated faces score near 0.

Default threshold: 0.30. Thresholds used to verify identity with InsightFace's ArcFace models lie
roughly between 0.28 and 0.4 depending on the false-match rate wanted; 0.30 is at the strict end,
so a face reported below it would not be matched to the original by a typical ArcFace verifier,
and a face at or above it might be. Lower it for a stricter check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_THRESHOLD = 0.30


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N, D] and [N, D] (or [1, D], broadcast) embeddings."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings have different lengths: {a.shape[1]} and {b.shape[1]}")
    if b.shape[0] == 1 and a.shape[0] != 1:
        b = np.repeat(b, a.shape[0], axis=0)
    if a.shape[0] == 1 and b.shape[0] != 1:
        a = np.repeat(a, b.shape[0], axis=0)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"cannot pair {a.shape[0]} original with {b.shape[0]} anonymized embeddings")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("an embedding is all zeros (no identity); cosine similarity is undefined")
    return np.sum(a * b, axis=1) / (na * nb)


@dataclass
class FaceCheck:
    """One face of the report: similarity None means it could not be measured (reason says why)."""

    index: int
    similarity: float | None
    image_index: int | None = None
    reason: str = ""

    def passed(self, threshold: float) -> bool:
        return self.similarity is not None and self.similarity < threshold


@dataclass
class AnonymityReport:
    threshold: float
    faces: list[FaceCheck] = field(default_factory=list)

    @property
    def similarities(self) -> list[float | None]:
        return [f.similarity for f in self.faces]

    @property
    def failed(self) -> list[FaceCheck]:
        return [f for f in self.faces if not f.passed(self.threshold)]

    @property
    def passed(self) -> bool:
        return bool(self.faces) and not self.failed

    def summary(self) -> dict:
        """The verdicts as plain data (the Anonymity Check node's UI output, read by the CLI)."""
        return {"passed": self.passed, "threshold": self.threshold,
                "faces": [{"face": f.index, "image": f.image_index, "similarity": f.similarity, "reason": f.reason,
                           "passed": f.passed(self.threshold)} for f in self.faces]}

    @property
    def max_similarity(self) -> float | None:
        values = [s for s in self.similarities if s is not None]
        return max(values) if values else None

    def text(self) -> str:
        lines = [f"Anonymity check: ArcFace cosine similarity, original vs anonymized "
                 f"(threshold {self.threshold:.2f}; 1 = same face, ~0 = unrelated)"]
        for f in self.faces:
            where = f" (image {f.image_index})" if f.image_index is not None else ""
            if f.similarity is None:
                lines.append(f"  face {f.index}{where}: NOT MEASURED - {f.reason}")
            else:
                verdict = "ok" if f.passed(self.threshold) else "STILL RECOGNIZABLE"
                lines.append(f"  face {f.index}{where}: {f.similarity:+.3f}  {verdict}")
        n_fail = len(self.failed)
        if not self.faces:
            lines.append("  no faces to check")
        elif n_fail:
            lines.append(f"RESULT: {n_fail} of {len(self.faces)} face(s) at or above the threshold "
                         f"or not measurable")
        else:
            lines.append(f"RESULT: all {len(self.faces)} face(s) below the threshold")
        return "\n".join(lines)


def build_report(original: np.ndarray, anonymized: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 image_indices=None, missing: dict[int, str] | None = None) -> AnonymityReport:
    """Report for paired embeddings; rows listed in `missing` (index -> reason) are unmeasured
    (their rows in the arrays are ignored)."""
    missing = missing or {}
    n = max(np.atleast_2d(original).shape[0], np.atleast_2d(anonymized).shape[0])
    report = AnonymityReport(threshold=float(threshold))
    measurable = [i for i in range(n) if i not in missing]
    sims = {}
    if measurable:
        o = np.atleast_2d(original)
        a = np.atleast_2d(anonymized)
        o = o if o.shape[0] == 1 else o[measurable]
        a = a if a.shape[0] == 1 else a[measurable]
        values = cosine_similarity(o, a)
        if values.shape[0] == 1 and len(measurable) > 1:
            values = np.repeat(values, len(measurable))
        sims = dict(zip(measurable, values.tolist()))
    for i in range(n):
        image_index = None if image_indices is None else int(image_indices[i])
        if i in missing:
            report.faces.append(FaceCheck(i, None, image_index, missing[i]))
        else:
            report.faces.append(FaceCheck(i, float(sims[i]), image_index))
    return report
