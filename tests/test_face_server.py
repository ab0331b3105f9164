"""The face nodes in the running ComfyUI server: InsightFace loading the stand-in buffalo_l through
the pack's loader, detect -> "anonymize" -> paste back -> check -> save, and failing closed."""
import shutil

import cv2
import numpy as np
import pytest

from faces_fixtures import MARKER_FACES, marker_photo, record_figures, save_rgb, write_standin_pack
from revpers_cli.standins.buffalo_l import expected_face

AREA = "faces"


@pytest.fixture
def server(comfy_server):
    write_standin_pack(comfy_server.models_dir / "insightface" / "models" / "buffalo_l")
    return comfy_server


def upload(server, rgb, name):
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return server.upload_image(png.tobytes(), name=name)


def fetch(server, record):
    data = server.view(record["filename"], record.get("subfolder", ""), record.get("type", "output"))
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return img[:, :, ::-1] if img.ndim == 3 else img


def loader(**over):
    inputs = {"model_pack": "buffalo_l", "provider": "CPU", "det_size": 640, "det_thresh": 0.5}
    inputs.update(over)
    return {"class_type": "RevPersFaceAnalysisLoader", "inputs": inputs}


def detect(image, on_no_face="error", expected=0, crop_size=512):
    return {"class_type": "RevPersDetectAlign", "inputs": {
        "analysis": ["2", 0], "images": image, "crop_size": crop_size, "padding": 0.15, "threshold": 0.0,
        "min_face_size": 20, "max_faces": 0, "expected_faces": expected, "on_no_face": on_no_face}}


def through_comfy(rgb):
    """What LoadImage -> SaveImage makes of untouched pixels (float32 / 255, then x 255 truncated)."""
    return np.clip(255.0 * (rgb.astype(np.float32) / 255.0), 0, 255).astype(np.uint8)


def test_photo_faces_replaced_checked_and_saved(server):
    photo = marker_photo()
    name = upload(server, photo, "revpers_faces_three.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": loader(),
        "3": detect(["1", 0], expected=3),
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},  # the stand-in anonymizer
        "5": {"class_type": "RevPersPasteBack", "inputs": {
            "images": ["1", 0], "crops": ["4", 0], "faces": ["3", 1], "feather": 0.05}},
        "6": {"class_type": "RevPersArcFaceEmbedding", "inputs": {
            "analysis": ["2", 0], "image": ["3", 0], "select": "largest", "faces": ["3", 1]}},
        "7": {"class_type": "RevPersAnonymityCheck", "inputs": {
            "analysis": ["2", 0], "anonymized": ["4", 0], "threshold": 0.3, "fail_if_recognizable": True,
            "original_embedding": ["6", 0], "faces": ["3", 1], "images": ["5", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 2], "filename_prefix": "revpers_faces"}},
        "9": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 1]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "revpers_cover"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "revpers_crops"}},
    }
    result = server.run(prompt, timeout=300)
    assert result.status == "success", result.message
    text = result.outputs["7"]["text"][0]
    assert text.count("  ok") == 3 and "all 3 face(s) below the threshold" in text
    out = fetch(server, result.images("8")[0])
    cover = fetch(server, result.images("10")[0])
    crops = [fetch(server, r) for r in result.images("11")]
    assert out.shape == photo.shape and len(crops) == 3 and crops[0].shape == (512, 512, 3)
    expected = through_comfy(photo)
    changed = np.any(out != expected, axis=-1)
    covered = cv2.dilate((cover[..., 0] > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert not np.any(changed & ~covered), "pixels outside the face masks changed"
    ys, xs = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    for centre, radius, _ in MARKER_FACES:  # each whole face disc comes from the crop alone
        disc = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= (radius - 1) ** 2
        assert cover[disc].min() >= 252
    per_face = []
    for centre, radius, _ in MARKER_FACES:
        _, lm = expected_face(centre, radius)
        x, y = np.round(lm.mean(0)).astype(int)
        patch = (slice(y - 10, y + 10), slice(x - 10, x + 10))
        per_face.append(float(np.abs(out[patch].astype(int) - expected[patch].astype(int)).mean()))
    record_figures("server_pipeline", {"check_text": text, "mean_abs_change_at_face_centres_0_255": per_face,
                                       "changed_fraction": float(changed.mean())})
    assert min(per_face) > 60
    save_rgb(AREA, "server_before_after_markers.png", np.concatenate([photo, out], axis=1))


def test_embedding_by_detection_and_a_check_that_fails(server):
    photo = marker_photo()
    name = upload(server, photo, "revpers_faces_three.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": loader(),
        "6": {"class_type": "RevPersArcFaceEmbedding", "inputs": {
            "analysis": ["2", 0], "image": ["1", 0], "select": "largest"}},
        "7": {"class_type": "RevPersAnonymityCheck", "inputs": {
            "analysis": ["2", 0], "anonymized": ["1", 0], "threshold": 0.3, "fail_if_recognizable": False,
            "original_embedding": ["6", 0]}},
    }
    result = server.run(prompt, timeout=300)
    assert result.status == "success", result.message
    text = result.outputs["7"]["text"][0]
    assert "face 0: +1.000  STILL RECOGNIZABLE" in text  # the same face, measured against itself
    prompt["7"]["inputs"]["fail_if_recognizable"] = True
    result = server.run(prompt, timeout=300)
    assert result.status == "error"
    assert result.error["node_type"] == "RevPersAnonymityCheck"
    assert "Anonymity check failed" in result.error["exception_message"]
    assert "STILL RECOGNIZABLE" in result.error["exception_message"]


def test_no_face_stops_the_run_with_a_readable_message(server):
    blank = marker_photo(faces=[])
    name = upload(server, blank, "revpers_faces_none.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": loader(),
        "3": detect(["1", 0]),
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "RevPersPasteBack", "inputs": {
            "images": ["1", 0], "crops": ["4", 0], "faces": ["3", 1], "feather": 0.05}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "revpers_noface"}},
    }
    result = server.run(prompt, timeout=300)
    assert result.status == "error"
    assert result.error["node_type"] == "RevPersDetectAlign"
    message = result.error["exception_message"]
    for needle in ("no face found", "nothing was anonymized", "lower detection threshold",
                   "larger detection size", "pass through (marked)"):
        assert needle in message
    assert not result.images(), "nothing may be saved when detection fails"


def test_pass_through_is_marked_and_reported(server):
    blank = marker_photo(faces=[])
    name = upload(server, blank, "revpers_faces_none.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": loader(),
        "3": detect(["1", 0], on_no_face="pass through (marked)"),
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "RevPersPasteBack", "inputs": {
            "images": ["1", 0], "crops": ["4", 0], "faces": ["3", 1], "feather": 0.05}},
        "7": {"class_type": "RevPersAnonymityCheck", "inputs": {
            "analysis": ["2", 0], "anonymized": ["4", 0], "threshold": 0.3, "fail_if_recognizable": False,
            "original": ["3", 0], "faces": ["3", 1], "images": ["5", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 2], "filename_prefix": "revpers_passed"}},
    }
    result = server.run(prompt, timeout=300)
    assert result.status == "success", result.message
    text = result.outputs["7"]["text"][0]
    assert "image passed through NOT anonymized" in text and "no face found" in text
    out = fetch(server, result.images("8")[0])
    expected = through_comfy(blank)
    assert np.all(out[0] == [255, 0, 0]) and np.all(out[-1] == [255, 0, 0])  # red frame
    assert np.all(out[:, 0] == [255, 0, 0]) and np.all(out[:, -1] == [255, 0, 0])
    banner = out[:30]
    assert (np.all(banner == [255, 255, 255], axis=-1)).sum() > 50  # white label text on the banner
    inner = (slice(80, -20), slice(20, -20))
    assert np.array_equal(out[inner], expected[inner])  # the photo itself is not altered
    save_rgb(AREA, "server_passed_through_marked.png", out)
    # the same failure is not an error for the check when it is told only to report; with its
    # fail option on, a passed-through photo stops the run
    prompt["7"]["inputs"]["fail_if_recognizable"] = True
    result = server.run(prompt, timeout=300)
    assert result.status == "error" and "passed through NOT anonymized" in result.error["exception_message"]


def test_missing_and_broken_packs_are_reported_by_the_loader(server):
    folder = server.models_dir / "insightface" / "models" / "revpers_test_empty_pack"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        info = server.object_info("RevPersFaceAnalysisLoader")["RevPersFaceAnalysisLoader"]
        packs = info["input"]["required"]["model_pack"][1]["options"]
        assert packs[0] == "buffalo_l" and "revpers_test_empty_pack" in packs
        prompt = {"2": loader(model_pack="revpers_test_empty_pack"),
                  "7": {"class_type": "RevPersAnonymityCheck", "inputs": {
                      "analysis": ["2", 0], "anonymized": ["1", 0], "threshold": 0.3,
                      "fail_if_recognizable": True, "original": ["1", 0]}},
                  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                               "color": 0}}}
        result = server.run(prompt, timeout=300)
        assert result.status == "error" and result.error["node_type"] == "RevPersFaceAnalysisLoader"
        message = result.error["exception_message"]
        assert str(folder) in message and "lacks any .onnx file" in message
    finally:
        shutil.rmtree(folder, ignore_errors=True)
