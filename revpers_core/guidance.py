"""The identity guidance scale g: its default, its bounds, and when it anonymizes.

The sampler's noise prediction is ε̂ = ε(∅) + g · (ε(identity) − ε(∅)); a negative g pushes each face
away from its person's identity. At g = 0 the sampler replays the inversion and gives the faces back;
above 0 it pulls them toward their identities. An empty identity branch (identity scale 0) makes the
difference zero whatever g is. These are the only places those rules are written: the nodes' widgets,
the command line, the workflow checks and guaranteed mode read them from here.
"""
from __future__ import annotations

DEFAULT = -10.0               # the paper's scale
WIDGET_RANGE = (-30.0, 30.0)  # what a widget accepts (positive values only to study the method)
STEP = 0.5
RETRIES = (-12.5, -15.0)      # guaranteed mode's scales after the sampler's own, in order
FACE_RANGE = (WIDGET_RANGE[0], 0.0)  # a per-face scale must push away: low <= g < 0
# how per-face scales and retries are written, for messages and tooltips
FACE_GUIDANCE_EXAMPLE = f"2:{RETRIES[0]:g}, 5:{RETRIES[1]:g}"
RETRIES_TEXT = ",".join(f"{g:g}" for g in RETRIES)


def anonymizes(g: float) -> bool:
    """Whether a guidance scale pushes the faces away from their identities."""
    return g < 0


def why_not_anonymizing(g: float, identity_scale: float = 1.0) -> list[str]:
    """Each reason these settings cannot anonymize, as a short phrase; [] when they can."""
    why = []
    if g == 0:
        why.append(f"guidance {g:g} replays the inversion, which gives the faces back")
    elif not anonymizes(g):
        why.append(f"guidance {g:g} is positive: it pulls the faces TOWARD their identities")
    if identity_scale == 0:
        why.append("ip_adapter_scale 0: the identity branch is empty")
    return why


HOW_TO_ANONYMIZE = f"Use a negative guidance (the paper's {DEFAULT:g}) and a non-zero identity scale"


def check_face_guidance(value: float, what: str = "a per-face guidance") -> float:
    """`value` as a per-face scale, or ValueError saying why it cannot be one."""
    value = float(value)
    low, high = FACE_RANGE
    if not (low <= value < high):
        raise ValueError(f"{what} of {value:g} cannot anonymize: it must be negative (push away from the "
                         f"identity) and at least {low:g}; the paper uses {DEFAULT:g}, guaranteed mode tries "
                         f"{', '.join(f'{g:g}' for g in RETRIES)}")
    return value
