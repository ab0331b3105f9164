"""The audit's second recognizer and the audit itself on real photos with real recognizer weights:
dlib's HOG detector, 68-point model and ResNet descriptor from face-recognition-models, on the group
photo that ships with InsightFace (six people) and the outsiders' faces that ship beside it
(skimage's astronaut, InsightFace's aligned Tom Hanks). ArcFace here is the buffalo_l stand-in (no
real ArcFace weights can be had offline), so dlib is the judge whose verdicts these tests are about;
the pictures with the verdicts drawn on are left in artifacts/audit/ to look at."""
import cv2
import numpy as np
import pytest

from faces_fixtures import (insightface_image, outsiders, put_faces, record_figures, save_rgb, to_float,
                            write_standin_pack)
from revpers_core.faces import audit, recognizers
from revpers_core.faces.analysis import load_analyser
from revpers_core.faces.records import Detection

pytestmark = pytest.mark.skipif(not recognizers.dlib_available(), reason="dlib and its models are not installed")



@pytest.fixture(scope="module")
def analyser(tmp_path_factory):
    folder = write_standin_pack(tmp_path_factory.mktemp("buffalo") / "buffalo_l")
    return load_analyser(str(folder), provider="CPU", det_size=640)


@pytest.fixture(scope="module")
def auditor(analyser):
    return audit.make_auditor(analyser, 0.30, 0.60)


@pytest.fixture(scope="module")
def group():
    rgb = to_float(insightface_image("t1.jpg"))
    faces = sorted(recognizers.DlibHOG().detect(rgb), key=lambda d: d.centre[0])
    assert len(faces) == 6
    return rgb, faces


def verdicts(report):
    return [f.verdict for f in report.faces]


def keep(name, original, final, report):
    picture = np.concatenate([audit.draw_verdicts(original, report), audit.draw_verdicts(final, report)], axis=1)
    return save_rgb("audit", f"{name}.png", picture)


def test_dlib_says_same_for_a_copy_and_different_for_the_six_people(group):
    rgb, faces = group
    judge = recognizers.Dlib()
    d = judge.descriptors(rgb, faces)
    blurred = cv2.GaussianBlur(rgb, (0, 0), 1.5)
    ok, data = cv2.imencode(".jpg", (rgb[:, :, ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 60])
    jpeg = to_float(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])
    same_blur = np.diag(judge.scores(d, judge.descriptors(blurred, faces)))
    same_jpeg = np.diag(judge.scores(d, judge.descriptors(jpeg, faces)))
    between = judge.scores(d, d)[~np.eye(6, dtype=bool)]
    assert all(judge.same_person(v) for v in same_blur) and all(judge.same_person(v) for v in same_jpeg)
    assert not any(judge.same_person(v) for v in between)
    record_figures("dlib_t1", {"blur_max": same_blur.max(), "jpeg_max": same_jpeg.max(), "between_min": between.min()})


def test_an_unchanged_photo_fails_and_names_every_face(auditor, group):
    rgb, _ = group
    report = audit.audit(auditor, [rgb], [rgb.copy()])
    assert len(report.faces) == 6 and not report.passed
    assert verdicts(report) == ["STILL RECOGNIZABLE"] * 6
    assert "RESULT: FAILED - 6 of 6" in report.text()
    keep("unchanged", rgb, rgb, report)


def test_faces_replaced_by_outsiders_pass_but_one_left_as_it_was_fails(auditor, group):
    rgb, faces = group
    donors = outsiders()
    everyone = put_faces(rgb, faces, [donors[i % 2] for i in range(6)])
    report = audit.audit(auditor, [rgb], [everyone])
    dlib_at_place = [j.at_place for f in report.faces for j in f.judgements if j.recognizer == "dlib"]
    assert report.passed, report.text()
    assert len(report.faces) == 6 and all(v is not None for v in dlib_at_place)
    keep("outsiders", rgb, everyone, report)

    # the third person is left as they were: the audit fails on exactly that face
    five = put_faces(rgb, faces[:2] + faces[3:], [donors[i % 2] for i in range(5)])
    report5 = audit.audit(auditor, [rgb], [five])
    assert not report5.passed
    failed = report5.failed
    assert len(failed) == 1 and audit.box_iou(failed[0].box, faces[2].box) > 0.5
    assert "its own place" in " ".join(j for jd in failed[0].judgements for j in jd.matches)
    keep("one_left", rgb, five, report5)
    record_figures("audit_outsiders", {"dlib_at_place": dlib_at_place,
                                       "left_face_dlib": [j.at_place for j in failed[0].judgements]})


def test_faces_swapped_among_the_people_of_the_photo_fail(auditor, group):
    rgb, faces = group
    # each person gets the face of the next one: every face is still someone from the input
    swapped = put_faces(rgb, faces, [(rgb, faces[(i + 1) % 6]) for i in range(6)])
    report = audit.audit(auditor, [rgb], [swapped])
    assert not report.passed
    caught = [f for f in report.failed if any("its own place" not in m for j in f.judgements for m in j.matches)]
    assert len(report.failed) >= 5 and len(caught) >= 5, report.text()
    keep("swapped", rgb, swapped, report)


def test_a_face_that_only_the_second_detector_sees_is_still_judged(auditor, group):
    """The stand-in SCRFD sees no real face: every face above was found by dlib's HOG alone, and a
    face left as it was is still caught. Without dlib the same photo is judged by nothing, and the
    report says so loudly instead of passing quietly."""
    rgb, _ = group
    report = audit.audit(auditor, [rgb], [rgb])
    assert all(f.found_by == ["dlib HOG"] for f in report.faces)
    alone = audit.make_auditor(auditor.analyser, 0.30, 0.60, second="off")
    quiet = audit.audit(alone, [rgb], [rgb])
    assert quiet.passed and not quiet.faces
    assert "switched OFF" in quiet.text() and "no face found" in quiet.text()


def test_thresholds_cannot_switch_the_audit_off(analyser):
    for arcface, dlib_threshold in ((1.0, 0.6), (0.0, 0.6), (0.3, 0.0), (0.3, 0.3)):
        with pytest.raises(ValueError, match="outside"):
            audit.make_auditor(analyser, arcface, dlib_threshold)


def test_detection_from_the_recorded_faces_is_merged_not_doubled(auditor, group):
    rgb, faces = group
    seen = audit.merge([], faces, 0, "dlib HOG")
    again = audit.merge(seen, [Detection(f.box + 3, f.landmarks + 3, 1.0) for f in faces], 0, "Detect and Align")
    assert len(again) == 6 and all(s.found_by == ["dlib HOG", "Detect and Align"] for s in again)


def overlapping_pair(group):
    """Two people of the group photo, cheek to cheek: the second pasted in front of the first, their
    detected boxes overlapping (IoU ~0.12) and their crops far more, so their paste-back regions share
    a seam; dlib's HOG finds both (scores > 1)."""
    rgb, faces = group

    def patch(face, half=90):
        cx, cy = (int(v) for v in face.centre)
        return rgb[cy - half:cy + half, cx - half:cx + half].copy()

    back, front = patch(faces[0]), patch(faces[5])
    canvas = np.full((260, 300, 3), 0.5, np.float32)
    canvas[40:220, 20:200] = back
    yy, xx = np.mgrid[:180, :180]
    soft = np.clip(1.6 - np.hypot((xx - 90) / 70, (yy - 90) / 85), 0, 1)[:, :, None]
    canvas[40:220, 100:280] = soft * front + (1 - soft) * canvas[40:220, 100:280]
    found = sorted(recognizers.DlibHOG().detect(canvas), key=lambda d: d.centre[0])
    assert len(found) == 2 and audit.box_iou(found[0].box, found[1].box) > 0.05
    return canvas, found


def test_two_overlapping_faces_are_both_anonymized_seam_included(auditor, group):
    """The hole: two overlapping faces left original face pixels at the seam. Now paste-back blends
    every crop over the union of the masks: no pixel inside either face's box keeps its original value,
    and dlib, measuring both faces, recognizes neither; each crop keeps what lies outside its own
    face (as the model does), so the back face's crop carries original pixels of the front face into
    the seam, and still nothing is recognizable. Left with its original crop, the front face fails."""
    from revpers_core.faces import pipeline

    canvas, found = overlapping_pair(group)
    faceset, crops, masks = pipeline.align_detections([canvas], [found], crop_size=128)
    inner = masks[:, :, :, None]
    anonymized = crops * (1 - inner) + np.ascontiguousarray(1.0 - crops[:, ::-1]) * inner
    outs, coverage, _ = pipeline.paste_back([canvas], anonymized, faceset)
    inside = np.zeros(canvas.shape[:2], bool)
    for face in found:
        x1, y1, x2, y2 = np.round(face.box).astype(int)
        inside[y1:y2, x1:x2] = True
    untouched = (np.abs(outs[0] - canvas).max(axis=2) == 0) & inside
    assert untouched.sum() == 0 and coverage[0][inside].min() > 0.5
    report = audit.audit(auditor, [canvas], outs, faceset=faceset)
    dlib_figures = [j.at_place for f in report.faces for j in f.judgements if j.recognizer == "dlib"]
    assert report.passed and len(report.faces) == 2 and all(v is not None and v > 0.6 for v in dlib_figures), \
        report.text()
    keep("overlapping", canvas, outs[0], report)

    leak = anonymized.copy()
    leak[1] = crops[1]  # the front face comes back as it was: caught, named
    outs2, _, _ = pipeline.paste_back([canvas], leak, faceset)
    report2 = audit.audit(auditor, [canvas], outs2, faceset=faceset)
    assert [f.row for f in report2.failed] == [1], report2.text()
    keep("overlapping_front_left", canvas, outs2[0], report2)
    record_figures("audit_overlapping", {"dlib_at_place": dlib_figures, "untouched_pixels_in_boxes": int(untouched.sum())})
