"""`revpers audit ORIGINALS/ ANONYMIZED/` on a small folder of real photos with dlib's real weights:
InsightFace's group photo cut into two photos of three people each. An unmodified copy is re-identified
at 100 %; faces replaced by outsiders' faces (skimage's astronaut, InsightFace's Tom Hanks) at 0 %; faces
swapped among the people of the set at 0 % at their places but found again by the set-wide search.
The CSV/JSON rows and the chart are produced (left in artifacts/set_audit/ to look at)."""
import csv
import json
import re
import shutil

import cv2
import numpy as np
import pytest

from faces_fixtures import insightface_image, outsiders, put_faces, to_float
from paths import artifact_dir
from revpers_cli import cli
from revpers_core.faces import recognizers

pytestmark = pytest.mark.skipif(not recognizers.dlib_available(), reason="dlib and its models are not installed")


def save(folder, name, rgb, jpeg=False):
    folder.mkdir(parents=True, exist_ok=True)
    bgr = (np.clip(rgb, 0, 1)[:, :, ::-1] * 255 + 0.5).astype(np.uint8) if rgb.dtype != np.uint8 else rgb[:, :, ::-1]
    path = folder / (name + (".jpg" if jpeg else ".png"))
    cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else [])
    return path


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    group = to_float(insightface_image("t1.jpg"))
    photos = {"left": group[:, :640].copy(), "right": group[:, 640:].copy()}
    hog = recognizers.DlibHOG()
    faces = {name: sorted(hog.detect(rgb), key=lambda d: d.centre[0]) for name, rgb in photos.items()}
    assert [len(f) for f in faces.values()] == [3, 3]
    for name, rgb in photos.items():
        save(root / "originals", name, rgb)
        save(root / "copy", name, rgb, jpeg=True)  # re-encoded: the same people
        donors = outsiders()
        save(root / "outsiders", name, put_faces(rgb, faces[name], [donors[i % 2] for i in range(3)]))
        rotated = [(rgb, faces[name][(i + 1) % 3]) for i in range(3)]  # each gets the next person's face
        save(root / "swapped", name, put_faces(rgb, faces[name], rotated))
    return root


def audit(root, variant, capsys):
    report, chart = root / f"{variant}.csv", root / f"{variant}.png"
    code = cli.main(["audit", str(root / "originals"), str(root / variant), "--report", str(report),
                     "--chart", str(chart), "-q"])
    out = capsys.readouterr().out
    figures = re.search(r"dlib \(6 faces.*re-ID at the place (\d+) %, top-1 retrieval (\d+) %, found anywhere in the "
                        r"set (\d+) %", out)
    assert figures, out
    with open(report) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["photo"] for r in rows} == {"left", "right"}
    art = artifact_dir("set_audit")
    shutil.copy(chart, art / f"{variant}_chart.png")
    shutil.copy(report, art / f"{variant}.csv")
    print(out)
    return code, [int(v) for v in figures.groups()], rows, out


def test_an_unmodified_copy_is_reidentified_every_time(photo_set, capsys):
    code, (at_place, top1, anywhere), rows, out = audit(photo_set, "copy", capsys)
    assert code == cli.EXIT_FAILED and (at_place, top1, anywhere) == (100, 100, 100)
    assert all(float(r["at_place"]) < 0.35 for r in rows)  # dlib distance of a re-encoded copy
    assert all(float(r["landmark_deviation"]) < 0.05 for r in rows)  # pose and expression as they were
    assert "RESULT: FAILED - 6 of 6" in out


def test_faces_replaced_by_outsiders_are_not_reidentified(photo_set, capsys):
    code, (at_place, top1, anywhere), rows, out = audit(photo_set, "outsiders", capsys)
    assert code == cli.EXIT_OK and at_place == 0 and anywhere == 0, out
    assert all(float(r["at_place"]) > 0.6 for r in rows)


def test_faces_swapped_among_the_set_pass_at_their_places_but_are_found_set_wide(photo_set, capsys):
    code, (at_place, top1, anywhere), rows, out = audit(photo_set, "swapped", capsys)
    assert at_place == 0 and top1 == 0  # nobody is at their own place any more...
    assert anywhere == 100 and code == cli.EXIT_FAILED  # ...but everyone is still in the set
    assert all(int(r["retrieved"]) != int(r["face"]) for r in rows)


def test_json_report_and_bad_folders(photo_set, tmp_path, capsys):
    out = tmp_path / "r.json"
    cli.main(["audit", str(photo_set / "originals"), str(photo_set / "copy"), "--report", str(out), "-q"])
    data = json.loads(out.read_text())
    assert data["headline"]["dlib"]["reid_at_place"] == 1.0 and len(data["faces"]) == 6
    capsys.readouterr()
    assert cli.main(["audit", str(photo_set / "originals"), str(tmp_path / "nowhere")]) == cli.EXIT_USAGE
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    save(tmp_path / "other", "unrelated", np.zeros((32, 32, 3), np.float32))
    assert cli.main(["audit", str(photo_set / "originals"), str(tmp_path / "other")]) == cli.EXIT_USAGE
    assert "matched by file name" in capsys.readouterr().err
