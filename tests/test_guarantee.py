"""The holes issue 9 found, each reproduced and now closed: small faces were dropped silently,
faces beyond max_faces were left silently, the check never looked at the saved image, and a widget
value could switch the check off. Stand-in buffalo_l (marker faces) and dlib where installed; the
nodes are called in-process on ComfyUI's own types, and the refusal of a disabling threshold is
checked on the real server."""
import numpy as np
import pytest
import torch

from faces_fixtures import marker_photo, save_rgb, to_float, write_standin_pack
from revpers_core.faces import audit, pipeline
from revpers_core.faces.analysis import BoundAnalyser, load_analyser

LARGE = ((300, 250), 90, 5)
TINY = [((450, 120), 9, 6), ((520, 380), 9, 7)]  # 18-px faces (shorter box side), detector score 0.9


@pytest.fixture(scope="module")
def analyser(tmp_path_factory):
    folder = write_standin_pack(tmp_path_factory.mktemp("buffalo") / "buffalo_l")
    return load_analyser(str(folder), provider="CPU", det_size=640)


def batch(*photos):
    return [to_float(p) for p in photos]


def edited(crops):
    """Stand-in "anonymized" crops: the picture turned upside down and colour-inverted, so no crop
    looks like the face it replaces (what the model does is not under test here)."""
    return np.ascontiguousarray(1.0 - crops[:, ::-1])


def run_faces(analyser, photo, **kw):
    faces, crops, _ = pipeline.detect_and_align(analyser, batch(photo), crop_size=128, **kw)
    outs, coverage, warning = pipeline.paste_back(batch(photo), edited(crops), faces)
    return faces, outs[0], coverage[0], warning


def test_small_faces_are_anonymized_by_default_and_covered_when_a_minimum_is_set(analyser):
    # 640 px wide: the detector sees the photo at full size (the 18-px faces are not shrunk first)
    photo = marker_photo(width=640, height=480, faces=[((200, 220), 80, 5)] + TINY)
    # the hole: with the old default (20 px) the two 18-px faces were removed before anything saw them
    faces, final, _, _ = run_faces(analyser, photo)
    assert len(faces.faces) == 3 and not faces.skipped  # default 0: the model gets every face
    faces, final, coverage, warning = run_faces(analyser, photo, min_size=20)
    assert len(faces.faces) == 1 and [s.action for s in faces.skipped] == ["covered", "covered"]
    assert "2 face(s) too small for the model, covered with a flat fill" in warning
    for (x, y), r, _ in TINY:  # a flat fill where each small face was
        patch = final[y - r:y + r, x - r:x + r]
        assert np.ptp(patch.reshape(-1, 3), axis=0).max() < 1e-6 and coverage[y, x] == 1.0
    auditor = audit.make_auditor(analyser, 0.30, 0.60)
    report = audit.audit(auditor, batch(photo), [final], faceset=faces)
    assert report.passed and len(report.faces) == 3, report.text()
    assert sorted(f.status for f in report.faces) == ["anonymized", "covered", "covered"]
    save_rgb("guarantee", "small_faces_covered.png", np.concatenate([to_float(photo), final], axis=1))


def test_max_faces_is_an_error_unless_the_others_are_left_on_purpose(analyser):
    photo = marker_photo(faces=[LARGE, ((700, 300), 70, 8)])
    with pytest.raises(ValueError, match="2 faces to anonymize but max_faces is 1.*beyond_max_faces"):
        run_faces(analyser, photo, max_faces=1)
    faces, final, _, warning = run_faces(analyser, photo, max_faces=1, beyond_max_faces="leave visible (marked)")
    assert len(faces.faces) == 1 and [s.action for s in faces.skipped] == ["left"]
    assert "1 face(s) left un-anonymized by request" in warning
    assert np.allclose(final[5, final.shape[1] // 2], [1.0, 0.0, 0.0])  # the red banner
    x, y = 700, 300
    assert np.array_equal(final[y - 20:y + 20, x - 20:x + 20], to_float(photo)[y - 20:y + 20, x - 20:x + 20])
    report = audit.audit(audit.make_auditor(analyser, 0.30, 0.60), batch(photo), [final], faceset=faces)
    assert report.passed and [f.verdict for f in report.faces] == ["ok", "LEFT UN-ANONYMIZED BY REQUEST"]
    assert "WARNING: 1 face(s) left un-anonymized by request" in report.text()
    # without the face records the audit does not know it was a request: the face fails
    blind = audit.audit(audit.make_auditor(analyser, 0.30, 0.60), batch(photo), [final])
    assert not blind.passed and len(blind.failed) == 1
    save_rgb("guarantee", "max_faces_left_marked.png", np.concatenate([to_float(photo), final], axis=1))


def test_the_audit_sees_the_saved_image_where_the_crop_check_cannot(analyser):
    """Both faces' crops are anonymized, so the crop check passes; but only the first crop reaches
    the saved photo (the second face keeps its original pixels): the audit fails on that face."""
    photo = marker_photo(faces=[LARGE, ((700, 300), 70, 8)])
    faces, crops, _ = pipeline.detect_and_align(analyser, batch(photo), crop_size=128)
    anonymized = edited(crops)
    crop_report = pipeline.check_anonymity(analyser, anonymized, original=crops, faceset=faces)
    assert crop_report.passed
    keep_second = anonymized.copy()
    keep_second[1] = crops[1]
    outs, _, _ = pipeline.paste_back(batch(photo), keep_second, faces)
    report = audit.audit(audit.make_auditor(analyser, 0.30, 0.60), batch(photo), outs, faceset=faces)
    assert not report.passed and len(report.failed) == 1
    assert audit.box_iou(report.failed[0].box, faces.faces[1].box) > 0.5
    text = report.text()
    assert "STILL RECOGNIZABLE" in text and "RESULT: FAILED - 1 of 2" in text
    # a face moved to another place is caught by the comparison with every final face
    moved = to_float(marker_photo(faces=[((150, 420), 90, 5), ((700, 300), 70, 9)]))
    report = audit.audit(audit.make_auditor(analyser, 0.30, 0.60), batch(photo), [moved])
    moved_face = [f for f in report.faces if audit.box_iou(f.box, faces.faces[0].box) > 0.5][0]
    matches = [m for j in moved_face.judgements for m in j.matches]
    assert moved_face.failed and any("at (150, 420)" in m for m in matches), report.text()


def test_the_audit_node_stops_the_run_or_marks_by_explicit_choice(comfy_inprocess, analyser):
    node = comfy_inprocess.nodes.audit.RevPersAudit
    photo = torch.from_numpy(to_float(marker_photo(faces=[LARGE])))[None]
    bound = BoundAnalyser(analyser, 0.5)
    args = dict(analysis=bound, original=photo, anonymized=photo.clone(), arcface_threshold=0.3,
                dlib_threshold=0.6, second_recognizer="dlib if installed")
    with pytest.raises(ValueError, match="Audit failed - the output is not safe to use, nothing was saved"):
        node.execute(on_fail="stop the run", **args)
    out = node.execute(on_fail="save marked NOT ANONYMIZED", **args)
    images, report, text = out.result
    assert not report.passed and "RESULT: FAILED" in out.ui["text"][0]
    assert np.allclose(images[0, 2, photo.shape[2] // 2].numpy(), [1.0, 0.0, 0.0])  # marked
    with pytest.raises(ValueError, match="outside 0.1..0.5"):
        node.execute(on_fail="stop the run", **{**args, "arcface_threshold": 1.0})


def test_a_threshold_that_would_disable_the_checks_is_refused_by_the_server(comfy_server):
    prompt = {
        "1": {"class_type": "RevPersFaceAnalysisLoader",
              "inputs": {"model_pack": "buffalo_l", "provider": "CPU", "det_size": 640, "det_thresh": 0.5}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "3": {"class_type": "RevPersAudit", "inputs": {
            "analysis": ["1", 0], "original": ["2", 0], "anonymized": ["2", 0], "arcface_threshold": 1.0,
            "dlib_threshold": 0.1, "second_recognizer": "dlib if installed", "on_fail": "stop the run"}},
        "4": {"class_type": "RevPersAnonymityCheck", "inputs": {
            "analysis": ["1", 0], "anonymized": ["2", 0], "threshold": 1.0, "fail_if_recognizable": True}},
    }
    from harness import PromptRejected

    with pytest.raises(PromptRejected) as caught:
        comfy_server.queue(prompt)
    errors = caught.value.body["node_errors"]
    audit_inputs = {e["extra_info"]["input_name"]: e["type"] for e in errors["3"]["errors"]}
    assert audit_inputs == {"arcface_threshold": "value_bigger_than_max", "dlib_threshold": "value_smaller_than_min"}
    assert [e["type"] for e in errors["4"]["errors"]] == ["value_bigger_than_max"]


def test_a_face_still_recognizable_is_redacted_over_its_region_and_audited_again(analyser):
    """Redaction (the audit's on_fail "redact"): the face whose original pixels reach the photo is covered
    by the small-face fill over its whole face region (the ellipse around its box and its paste-back mask),
    the photo is audited again and passes, the face is reported as redacted; every other pixel is the
    photo's own."""
    from revpers_core.faces import redact

    photo = marker_photo(faces=[LARGE, ((700, 300), 70, 8)])
    faces, crops, _ = pipeline.detect_and_align(analyser, batch(photo), crop_size=128)
    keep_second = edited(crops)
    keep_second[1] = crops[1]
    outs, _, _ = pipeline.paste_back(batch(photo), keep_second, faces)
    auditor = audit.make_auditor(analyser, 0.30, 0.60)
    report = audit.audit(auditor, batch(photo), outs, faceset=faces)
    assert not report.passed and [f.row for f in report.failed] == [1]
    covered, again = redact.redact(auditor, batch(photo), outs, report, faceset=faces)
    assert again.passed, again.text()
    (done,) = again.redactions
    assert (done.row, done.image) == (1, 0) and done.pixels > 0 and done.recognized_by
    region = redact.face_regions(report.failed[0], faces, [outs[0].shape[:2]])[0]
    assert region.sum() == done.pixels
    inside = covered[0][region]
    assert np.ptp(inside, axis=0).max() == 0  # one flat colour over the whole region
    assert np.array_equal(covered[0][~region], outs[0][~region])  # nothing else touched
    x, y = 700, 300
    assert region[y - 60:y + 60, x - 60:x + 60].all()  # the face itself is inside
    assert [f.verdict for f in again.faces] == ["ok", "REDACTED"]
    summary = again.summary()
    assert summary["passed"] and summary["recognized"] and summary["redacted"][0]["row"] == 1
    assert "REDACTED: face 1 (image 0 at (700, 300), row 1) was still recognizable" in again.text()
    assert "RESULT: passed after redaction - 1 face(s) covered" in again.text()
    save_rgb("guarantee", "redacted_face.png", np.concatenate([outs[0], covered[0]], axis=1))


def test_the_audit_node_redacts_on_request_and_says_so_in_its_data(comfy_inprocess, analyser):
    node = comfy_inprocess.nodes.audit.RevPersAudit
    photo = torch.from_numpy(to_float(marker_photo(faces=[LARGE])))[None]
    out = node.execute(analysis=BoundAnalyser(analyser, 0.5), original=photo, anonymized=photo.clone(),
                       arcface_threshold=0.3, dlib_threshold=0.6, second_recognizer="dlib if installed",
                       on_fail=audit.REDACT)
    images, report, text = out.result
    (summary,) = out.ui["revpers_audit"]
    assert report.passed and summary["passed"] and summary["recognized"] and len(summary["redacted"]) == 1
    x, y = LARGE[0]
    assert np.ptp(images[0, y - 40:y + 40, x - 40:x + 40].reshape(-1, 3).numpy(), axis=0).max() == 0
    assert "REDACTED: face 0" in out.ui["text"][0] and text == out.ui["text"][0]
    assert summary["recognizers"][0] == "ArcFace" and summary["independent"] == ("dlib" in summary["recognizers"])
