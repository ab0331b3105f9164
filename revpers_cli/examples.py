"""--example NAME: photos that ship with an installed package, so the quick start needs no download.

The stand-in face detector (revpers_cli/standins/buffalo_l.py) takes only magenta "marker faces" for
faces, so with --standin-weights marker faces are drawn over every real face of the photo, at the
positions dlib's HOG detector finds them (box centre, radius ~0.6 x the box side): the audit looks for
faces with dlib too, and would rightly fail the run on a real face left visible. With real weights the
photo is used as it is.
"""
import importlib.util
from pathlib import Path

from .errors import EXIT_USAGE, CliError

EXAMPLES = {
    "group": {
        "package": "insightface", "path": "data/images/t1.jpg",
        "what": "the group photo that ships with InsightFace (data/images/t1.jpg, six people)",
        # (centre x, centre y), radius, pattern seed: all six people, so that no real face is left for
        # the audit's dlib detector to find (the stand-in detector cannot see real faces)
        "markers": [((121, 337), 54, 11), ((503, 349), 54, 22), ((1172, 337), 54, 33),
                    ((778, 420), 54, 44), ((934, 131), 65, 55), ((312, 213), 45, 66)],
    },
}


def example_source(name):
    """The path of an example photo inside its installed package."""
    spec = EXAMPLES[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        # only the photo file is needed: --no-deps keeps the package's own requirements (for insightface, the
        # CPU onnxruntime) out of the environment
        raise CliError(f"--example {name} needs the photo that ships with the {spec['package']} package "
                       f"(pip install --no-deps {spec['package']})",
                       EXIT_USAGE)
    path = Path(list(found.submodule_search_locations)[0]) / spec["path"]
    if not path.is_file():
        raise CliError(f"--example {name}: {path} is missing from the installed {spec['package']} package",
                       EXIT_USAGE)
    return path


def example_photo(name, standin, workdir):
    """(path of the photo to upload, lines saying what it is). With stand-in weights the photo gets
    marker faces drawn over real faces (the stand-in detector sees nothing else)."""
    spec = EXAMPLES[name]
    source = example_source(name)
    if not standin:
        return source, [f"example '{name}': {spec['what']}: {source}"]
    import numpy as np
    from PIL import Image
    from .standins.buffalo_l import draw_marker_face

    with Image.open(source) as im:
        rgb = np.array(im.convert("RGB"))
    for centre, radius, seed in spec["markers"]:
        draw_marker_face(rgb, centre, radius, seed=seed)
    path = Path(workdir) / f"example-{name}-markers.png"
    Image.fromarray(rgb).save(path)
    places = ", ".join(f"({x}, {y}) r {r}" for (x, y), r, _ in spec["markers"])
    return path, [f"example '{name}': {spec['what']} ({rgb.shape[1]}x{rgb.shape[0]}): {source}",
                  f"  the stand-in face detector sees only magenta marker faces, so {len(spec['markers'])} "
                  f"marker faces are drawn over real faces at {places} (with real weights the photo is used "
                  "as it is)"]
