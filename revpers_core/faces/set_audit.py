"""The audit of a whole set, offline: two folders of photos (originals, anonymized), matched by file name.

The same audit as the node's (every original face against what is at its place and against every
face of every anonymized photo of the set), over the set at once, plus the figures papers report:

- re-identification rate at the place, per recognizer: the share of original faces that the
  recognizer still takes for the same person at their own place in the anonymized photo;
- top-1 retrieval, per recognizer: the share of faces whose anonymized version, looked up among
  *all* original faces of the set, comes back as the right person (the paper's re-ID by retrieval);
- set-wide re-identification: the share of original faces the recognizer still finds *anywhere* in
  the anonymized set (catches faces moved or swapped among the people of the set);
- mean identity measure at the place (cosine similarity for ArcFace, distance for dlib);
- landmark deviation, from dlib's 68 points: how far pose and expression moved, as the mean
  point-to-point distance divided by the distance between the eye centres of the original.

Per face and recognizer one row (CSV or JSON) and a PNG chart of the measures at the place.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import audit, recognizers
from .pixels import to_rgb_uint8

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def photo_pairs(originals: Path, anonymized: Path):
    """[(name, original path, anonymized path)] matched by file name (the stem, so a .png may stand
    for a .jpg), and the names found on one side only."""
    def photos(folder):
        if not Path(folder).is_dir():
            raise ValueError(f"{folder} is not a folder")
        found = {}
        for p in sorted(Path(folder).iterdir()):
            if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file():
                found.setdefault(p.stem, p)
        return found

    a, b = photos(originals), photos(anonymized)
    pairs = [(name, a[name], b[name]) for name in sorted(set(a) & set(b))]
    unmatched = sorted(set(a) ^ set(b))
    return pairs, unmatched


def make_offline_auditor(analyser=None, arcface_threshold: float = recognizers.ARCFACE_DEFAULT,
                         dlib_threshold: float = recognizers.DLIB_DEFAULT, use_dlib: bool = True) -> audit.Auditor:
    """ArcFace (and its detector) when an analyser is given, dlib's detector and recognizer when
    installed and wanted; at least one of them."""
    judges, notes, hog = [], [], None
    if analyser is not None:
        judges.append(recognizers.ArcFace(analyser, arcface_threshold))
    if use_dlib:
        if not recognizers.dlib_available():
            raise RuntimeError(f"dlib is not installed ({recognizers.DLIB_PACKAGES}); give a buffalo_l folder "
                               "for ArcFace instead, or install it")
        judges.append(recognizers.Dlib(dlib_threshold))
        hog = recognizers.DlibHOG()
    if not judges:
        raise ValueError("the audit needs a recognizer: ArcFace (a buffalo_l folder) or dlib")
    if analyser is None:
        notes.append("no ArcFace (no buffalo_l folder given): dlib alone detected and judged the faces")
    return audit.Auditor(analyser, judges, hog, 0.5, notes)


def landmark_deviation(original: np.ndarray, final: np.ndarray, box) -> float | None:
    """Mean distance of dlib's 68 points found in the same box of both images, over the original's
    distance between the eye centres (0 = pose and expression unchanged); None without dlib."""
    if not recognizers.dlib_available():
        return None
    models = recognizers.load_dlib()
    rect = recognizers._rectangle(box)
    points = []
    for image in (original, final):
        rgb = to_rgb_uint8(image)
        with recognizers._DLIB_LOCK:
            shape = models.landmarks(rgb, rect)
        points.append(np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64))
    eyes = np.linalg.norm(points[0][36:42].mean(0) - points[0][42:48].mean(0))
    if eyes <= 0:
        return None
    return float(np.linalg.norm(points[0] - points[1], axis=1).mean() / eyes)


@dataclass
class SetAudit:
    names: list[str]
    report: audit.AuditReport
    deviations: dict[int, float | None] = field(default_factory=dict)  # face index -> landmark deviation
    unmatched: list[str] = field(default_factory=list)

    def headline(self) -> dict:
        """Per recognizer: faces judged, re-ID at the place, top-1 retrieval, set-wide re-ID, mean
        measure at the place; and the mean landmark deviation."""
        out = {}
        for name in [j.recognizer for j in (self.report.faces[0].judgements if self.report.faces else [])]:
            judged = [(f, j) for f in self.report.faces for j in f.judgements
                      if j.recognizer == name and j.at_place is not None and f.status != "left by request"]
            n = len(judged)
            if not n:
                out[name] = {"faces": 0}
                continue
            judge_same = [j for _, j in judged]
            at_place = sum(any("its own place" in m for m in j.matches) for j in judge_same)
            top1 = sum(j.retrieved == f.index for f, j in judged)
            anywhere = sum(j.recognized for j in judge_same)
            out[name] = {"faces": n, "measure": judge_same[0].measure, "threshold": judge_same[0].threshold,
                         "reid_at_place": at_place / n, "top1_retrieval": top1 / n, "reid_set_wide": anywhere / n,
                         "mean_at_place": float(np.mean([j.at_place for j in judge_same]))}
        values = [v for v in self.deviations.values() if v is not None]
        out["landmark_deviation"] = float(np.mean(values)) if values else None
        return out

    def rows(self) -> list[dict]:
        rows = []
        for row in self.report.rows():
            row = {"photo": self.names[row["image"]], **row}
            value = self.deviations.get(row["face"])
            row["landmark_deviation"] = None if value is None else round(value, 4)
            rows.append(row)
        return rows

    def text(self) -> str:
        h = self.headline()
        lines = [f"Audit of {len(self.names)} photo pair(s), {len(self.report.faces)} original face(s)"]
        lines += [f"Note: {n}" for n in self.report.notes]
        if self.unmatched:
            lines.append(f"Note: {len(self.unmatched)} photo(s) on one side only, not audited: "
                         + ", ".join(self.unmatched[:10]) + (" ..." if len(self.unmatched) > 10 else ""))
        for name, v in h.items():
            if name == "landmark_deviation":
                continue
            if not v["faces"]:
                lines.append(f"  {name}: no face it could judge")
                continue
            lines.append(f"  {name} ({v['faces']} faces, {v['measure']}, same person at "
                         f"{'>=' if name == 'ArcFace' else '<='} {v['threshold']:.2f}): re-ID at the place "
                         f"{100 * v['reid_at_place']:.0f} %, top-1 retrieval {100 * v['top1_retrieval']:.0f} %, "
                         f"found anywhere in the set {100 * v['reid_set_wide']:.0f} %, mean at the place "
                         f"{v['mean_at_place']:+.3f}")
        if h["landmark_deviation"] is not None:
            lines.append(f"  landmark deviation (dlib 68 points / eye distance): mean {h['landmark_deviation']:.3f}")
        failed = self.report.failed
        for f in failed:
            lines.append(f"  STILL RECOGNIZABLE: {self.names[f.image_index]} face {f.index} at "
                         f"({(f.box[0] + f.box[2]) / 2:.0f}, {(f.box[1] + f.box[3]) / 2:.0f})")
        lines.append(f"RESULT: {'FAILED' if failed else 'passed'} - {len(failed)} of {len(self.report.faces)} "
                     "face(s) still recognizable")
        return "\n".join(lines)


def audit_set(auditor: audit.Auditor, pairs, read, on_photo=None) -> SetAudit:
    """Audit every (name, original, anonymized) pair as one set; `read(path)` gives HxWx3 float."""
    names, originals, finals = [], [], []
    for n, (name, a, b) in enumerate(pairs):
        original, final = read(a), read(b)
        if original.shape[:2] != final.shape[:2]:
            raise ValueError(f"{name}: the anonymized photo is {final.shape[1]}x{final.shape[0]} but the original "
                             f"is {original.shape[1]}x{original.shape[0]}: the audit compares each face at its place")
        names.append(name)
        originals.append(original)
        finals.append(final)
        if on_photo is not None:
            on_photo(n + 1, len(pairs))
    report = audit.audit(auditor, originals, finals)
    deviations = {f.index: landmark_deviation(originals[f.image_index], finals[f.image_index], f.box)
                  for f in report.faces}
    return SetAudit(names, report, deviations)


def write_rows(result: SetAudit, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({"headline": result.headline(), "faces": rows}, indent=1))
        return
    columns = list(rows[0]) if rows else ["photo", "face"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("+".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})


def draw_chart(result: SetAudit, path: Path, bins: int = 20) -> None:
    """A PNG with one histogram per recognizer of the measure at each face's place, its threshold
    drawn as a red line and the side that means "same person" shaded."""
    from PIL import Image, ImageDraw

    panels = [(name, v) for name, v in result.headline().items() if name != "landmark_deviation" and v.get("faces")]
    width, height, pad = 520, 260, 40
    image = Image.new("RGB", (width, max(1, len(panels)) * height), "white")
    draw = ImageDraw.Draw(image)
    for p, (name, v) in enumerate(panels):
        top = p * height
        values = [j.at_place for f in result.report.faces for j in f.judgements
                  if j.recognizer == name and j.at_place is not None]
        lo, hi = (-1.0, 1.0) if v["measure"] == "cosine similarity" else (0.0, 1.2)
        counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
        x0, x1, y0, y1 = pad, width - pad // 2, top + pad, top + height - pad
        sx = lambda value: x0 + (value - lo) / (hi - lo) * (x1 - x0)  # noqa: E731
        same_from, same_to = (v["threshold"], hi) if name == "ArcFace" else (lo, v["threshold"])
        draw.rectangle([sx(same_from), y0, sx(same_to), y1], fill=(255, 228, 228))
        peak = max(int(counts.max()), 1)
        for c, a, b in zip(counts, edges[:-1], edges[1:]):
            if c:
                draw.rectangle([sx(a) + 1, y1 - (y1 - y0) * c / peak, sx(b) - 1, y1], fill=(60, 110, 200))
        draw.line([sx(v["threshold"]), y0, sx(v["threshold"]), y1], fill=(220, 0, 0), width=2)
        draw.line([x0, y1, x1, y1], fill="black")
        for tick in np.linspace(lo, hi, 5):
            draw.text((sx(tick) - 10, y1 + 4), f"{tick:.1f}", fill="black")
        draw.text((x0, top + 8), f"{name}: {v['measure']} at each face's place ({v['faces']} faces; red: "
                  f"threshold {v['threshold']:.2f}, shaded: same person)", fill="black")
        draw.text((x0, top + 22), f"re-ID at place {100 * v['reid_at_place']:.0f} %, top-1 retrieval "
                  f"{100 * v['top1_retrieval']:.0f} %, anywhere {100 * v['reid_set_wide']:.0f} %; max bar {peak}",
                  fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
