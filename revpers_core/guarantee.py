"""Guaranteed mode: faces that fail the audit are sampled again, only those, with stronger guidance.

The anonymized sampler guides every face with one scale g (the paper's −10). A face that an
independent recognizer still takes for its person after paste-back is sampled again with a stronger
push away from its identity, g₁ > g₂ > … (default −12.5, then −15), reusing the inversion (x_T and
the noise maps do not depend on g). The other faces keep g: their rows of every model call and every
solver step are computed exactly as before, so their pixels come out bit-identical. After the last
scale the run fails closed, naming the faces still recognizable.

Per-face scales travel as a short text, `"ROW:SCALE, ROW:SCALE"`, where ROW is the face's index in
Detect and Align's order (its row in the crop batch and in the sampler's batch): the sampler node's
`face_guidance` input. This module parses, checks and writes that text and plans the attempts; the
sampler applies it (one guidance per batch row) and the audit names the rows of failing faces.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .guidance import FACE_GUIDANCE_EXAMPLE, HOW_TO_ANONYMIZE, RETRIES, check_face_guidance, why_not_anonymizing

_ITEM = re.compile(r"^\s*(\d+)\s*:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


def parse_face_guidance(text: str, faces: int) -> dict[int, float]:
    """`"2:-12.5, 5:-15"` → {2: -12.5, 5: -15.0} for a batch of `faces` rows ("" → {})."""
    text = (text or "").strip()
    if not text:
        return {}
    out: dict[int, float] = {}
    for item in re.split(r"[,;\n]", text):
        if not item.strip():
            continue
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"face_guidance: {item.strip()!r} is not ROW:SCALE (e.g. \"{FACE_GUIDANCE_EXAMPLE}\"; ROW is "
                             "the face's number in Detect and Align's order, as the audit reports it)")
        row, value = int(m.group(1)), float(m.group(2))
        if row >= faces:
            raise ValueError(f"face_guidance names row {row}, but the sampler has {faces} face(s) (rows 0 to "
                             f"{faces - 1}): use the row the audit reports for the face")
        if row in out:
            raise ValueError(f"face_guidance names row {row} twice")
        out[row] = check_face_guidance(value, f"face_guidance {row}:{m.group(2)}")
    return out


def format_face_guidance(overrides: dict[int, float]) -> str:
    return ", ".join(f"{row}:{value:g}" for row, value in sorted(overrides.items()))


def row_guidance(base: float, overrides: dict[int, float], faces: int) -> list[float]:
    """The scale of every row: the sampler's own, except where overridden."""
    return [float(overrides.get(row, base)) for row in range(faces)]


@dataclass
class Attempt:
    """One sampling of the whole photo: the scale each retried face had, and the audit's verdicts."""

    number: int
    overrides: dict[int, float]
    failed_rows: list[int] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)  # failing faces that are no sampler row


@dataclass
class Plan:
    """The attempts of guaranteed mode for one photo: after each audit, `next(...)` gives the
    per-face scales of the next sampling, or None when the audit passed or the bound is reached."""

    base: float
    retries: tuple = RETRIES
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self):
        self.retries = tuple(check_face_guidance(g, "a retry guidance") for g in self.retries)
        for a, b in zip((self.base,) + self.retries, self.retries):
            if not b < a:
                raise ValueError(f"retry guidances must grow stronger (more negative) than {a:g}, got {b:g}; "
                                 f"the sampler's own is {self.base:g}")

    def start(self) -> dict[int, float]:
        self.attempts.append(Attempt(1, {}))
        return {}

    def next(self, failed_rows, unfixable=()) -> dict[int, float] | None:
        """Record the audit of the last attempt; the overrides for the next one, or None to stop:
        nothing failed, a failing face is no sampler row (no scale can change it), or every failing
        row has had the strongest scale."""
        last = self.attempts[-1]
        last.failed_rows, last.unfixable = sorted(set(failed_rows)), list(unfixable)
        if not last.failed_rows or last.unfixable:
            return None
        scales = (self.base,) + self.retries
        overrides = dict(last.overrides)
        stepped = False
        for row in last.failed_rows:
            now = overrides.get(row, self.base)
            stronger = [g for g in scales if g < now]
            if stronger:
                overrides[row] = stronger[0]
                stepped = True
        if not stepped:
            return None
        self.attempts.append(Attempt(len(self.attempts) + 1, overrides))
        return overrides

    @property
    def exhausted_rows(self) -> list[int]:
        """Rows still failing after the strongest scale."""
        last = self.attempts[-1] if self.attempts else None
        if last is None:
            return []
        strongest = ((self.base,) + self.retries)[-1]
        return [r for r in last.failed_rows if last.overrides.get(r, self.base) <= strongest]

    def history(self, row: int) -> list[tuple[float, bool]]:
        """(scale, still recognizable) for each attempt that sampled `row` with a new scale."""
        out, previous = [], None
        for a in self.attempts:
            g = a.overrides.get(row, self.base)
            if g != previous:
                out.append((g, row in a.failed_rows))
                previous = g
            elif out:
                out[-1] = (g, row in a.failed_rows)
        return out

    def lines(self) -> list[str]:
        """The attempts per face, for the CLI's report (rows that never failed are left out)."""
        rows = sorted({r for a in self.attempts for r in a.failed_rows})
        out = []
        for row in rows:
            steps = [f"guidance {g:g} -> {'STILL RECOGNIZABLE' if bad else 'ok'}" for g, bad in self.history(row)]
            out.append(f"  face row {row}: " + "; ".join(steps))
        return out


def weak_guidance_warning(guidance: float, identity_scale: float) -> str:
    """What the sampler says when its settings cannot anonymize ("" when they can)."""
    why = why_not_anonymizing(guidance, identity_scale)
    return f"NOT ANONYMIZING: {'; '.join(why)}. {HOW_TO_ANONYMIZE}." if why else ""
