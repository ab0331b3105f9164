"""The pack's own runner of InsightFace's models (revpers_core.faces.onnx_pack) against InsightFace
itself: the `insightface` package is imported here only, as the reference. Detections, landmarks, scores
and recognition features must be InsightFace's bit for bit, on the stand-in buffalo_l, on real photos
(InsightFace's t1.jpg, skimage's astronaut; with marker faces drawn on them, and without, where nothing
is detected) and on a random-weight detector that yields hundreds of overlapping boxes for the
suppression. And the face analysis must run with the `insightface` package absent."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from faces_fixtures import (MARKER_FACES, astronaut, dlib_faces, insightface_image, marker_photo, record_figures,
                            write_standin_pack)
from paths import REPO
from revpers_core.faces import analysis, onnx_pack
from revpers_core.faces.analysis import FaceAnalyser

CPU = ["CPUExecutionProvider"]
# marker faces over the six people of t1.jpg (centre, radius, pattern) and over the astronaut's face
T1_MARKERS = [((121, 337), 54, 11), ((503, 349), 54, 22), ((1172, 337), 54, 33), ((778, 420), 54, 44),
              ((934, 131), 65, 55), ((312, 213), 45, 66)]
ASTRONAUT_MARKERS = [((235, 125), 52, 7)]


def _draw(rgb, markers):
    from revpers_cli.standins.buffalo_l import draw_marker_face

    rgb = rgb.copy()
    for centre, radius, seed in markers:
        draw_marker_face(rgb, centre, radius, seed=seed)
    return rgb


def bgr(rgb):
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_standin_pack(tmp_path_factory.mktemp("onnx_pack") / "models" / "buffalo_l")


def reference(folder):
    """InsightFace's FaceAnalysis on a folder, as the pack used it before (detection + recognition)."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "recognition"], providers=CPU)
    app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    return app


@pytest.fixture(scope="module")
def theirs(folder):
    return reference(folder)


@pytest.fixture(scope="module")
def ours(folder):
    return onnx_pack.load_pack(str(folder), CPU)


@pytest.fixture(scope="module")
def pictures():
    """BGR pictures: name -> (picture, marker faces drawn on it)."""
    t1, moon = insightface_image("t1.jpg"), astronaut()
    tall = [((170, 300), 80, 1), ((150, 700), 50, 2)]  # 337 x 1000: the fitted width, 215.68 px, is cut to 215
    return {
        "markers_960x540": (bgr(marker_photo()), len(MARKER_FACES)),
        "markers_tall_337x1000": (bgr(marker_photo(337, 1000, faces=tall)), len(tall)),
        "t1_with_markers": (bgr(_draw(t1, T1_MARKERS)), len(T1_MARKERS)),
        "t1": (bgr(t1), 0),
        "astronaut_with_marker": (bgr(_draw(moon, ASTRONAUT_MARKERS)), 1),
        "astronaut": (bgr(moon), 0),
    }


def assert_same_detections(theirs_det, ours_det):
    (boxes_a, points_a), (boxes_b, points_b) = theirs_det, ours_det
    assert boxes_b.dtype == boxes_a.dtype == np.float32 and boxes_b.shape == boxes_a.shape
    assert np.array_equal(boxes_b, boxes_a)
    if points_a is None:
        assert points_b is None
    else:
        assert points_b.dtype == points_a.dtype and np.array_equal(points_b, points_a)


# --- detection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("det_size", [160, 320, 640, 1024, 1280])
def test_detections_are_insightfaces_bit_for_bit(theirs, ours, pictures, det_size):
    counts = {}
    for name, (picture, drawn) in pictures.items():
        for threshold in (0.1, 0.5, 0.89, 0.91):
            expected = theirs.det_model.detect(picture, input_size=(det_size, det_size), max_num=0,
                                               det_thresh=threshold)
            got = onnx_pack.detect(ours.detector, picture, (det_size, det_size), threshold)
            assert_same_detections(expected, got)
            counts[f"{name}@{threshold}"] = int(got[0].shape[0])
    record_figures(f"onnx_pack_detections_det{det_size}", counts)
    # the comparisons were not all empty: the marker faces are found below their score (0.9), nothing
    # above it, and nothing on the photos without markers
    assert counts["astronaut_with_marker@0.89"] == 1
    assert all(v == 0 for k, v in counts.items() if k.endswith("@0.91") or k.split("@")[0] in ("t1", "astronaut"))
    if det_size >= 320:  # at 160 most markers shrink below the stand-in detector's smallest face
        assert counts["markers_960x540@0.5"] == len(MARKER_FACES) and counts["markers_tall_337x1000@0.89"] == 2
    if det_size >= 640:  # t1 is shrunk the most (1280 px wide): its markers are found from 640 on
        assert counts["t1_with_markers@0.1"] == len(T1_MARKERS)


def random_scrfd(path, strides=(8, 16, 32), anchors=2, landmarks=True, seed=0):
    """An ONNX model with SCRFD's outputs (scores, box distances, landmark offsets per stride; 3 x 3,
    3 x 2, 5 x 3 or 5 x 2 outputs) whose values are random functions of the picture: on any photo,
    hundreds of anchors score above a threshold with boxes overlapping every which way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], {"score": [], "box": [], "kps": []}

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32 if not name.startswith("shape")
                                                        else np.int64), name))
        return name

    parts = [("score", 1), ("box", 4)] + ([("kps", 10)] if landmarks else [])
    for stride in strides:
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        for part, width in parts:
            c = anchors * width
            raw = f"{part}{stride}_raw"
            w = const(f"w_{part}{stride}", rng.normal(0, 2.0, size=(c, 3, 1, 1)))
            b = const(f"b_{part}{stride}", rng.normal(0, 0.5, size=(c,)))
            nodes.append(helper.make_node("Conv", [pooled, w, b], [raw]))
            if part == "score":
                nodes.append(helper.make_node("Sigmoid", [raw], [raw + "s"]))
                raw += "s"
            elif part == "box":
                nodes.append(helper.make_node("Abs", [raw], [raw + "a"]))
                nodes.append(helper.make_node("Mul", [raw + "a", const(f"k{stride}", 1.5)], [raw + "am"]))
                raw += "am"
            nodes.append(helper.make_node("Transpose", [raw], [raw + "t"], perm=[0, 2, 3, 1]))
            out = f"{part}_{stride}"
            nodes.append(helper.make_node("Reshape", [raw + "t", const(f"shape{part}{stride}", [-1, width])], [out]))
            outs[part].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{stride}", width]))
    graph = helper.make_graph(nodes, "random_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outs["score"] + outs["box"] + outs["kps"], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("layout", ["3 strides, 2 anchors", "5 strides, 1 anchor", "no landmarks"])
def test_random_detector_with_many_overlapping_boxes(folder, tmp_path, pictures, layout):
    strides, anchors = ((8, 16, 32), 2) if layout != "5 strides, 1 anchor" else ((8, 16, 32, 64, 128), 1)
    pack = tmp_path / "random"
    pack.mkdir()
    random_scrfd(pack / "det.onnx", strides, anchors, landmarks=layout != "no landmarks")
    shutil.copy(folder / "w600k_r50.onnx", pack / "w600k_r50.onnx")
    theirs, ours = reference(pack), onnx_pack.load_pack(str(pack), CPU)
    figures = {}
    for name in ("t1", "astronaut"):
        for det_size, threshold in ((320, 0.3), (640, 0.5), (640, 0.8)):
            picture = pictures[name][0]
            expected = theirs.det_model.detect(picture, input_size=(det_size, det_size), max_num=0,
                                               det_thresh=threshold)
            got = onnx_pack.detect(ours.detector, picture, (det_size, det_size), threshold)
            assert_same_detections(expected, got)
            above = theirs.det_model._detect_candidates(picture, (det_size, det_size), threshold)[0].shape[0]
            figures[f"{name}@{det_size}/{threshold}"] = {"above_threshold": above, "kept": int(got[0].shape[0])}
    record_figures(f"onnx_pack_random_detector_{layout.replace(' ', '_').replace(',', '')}", figures)
    # boxes by the thousand, and the suppression at work in every case
    assert all(f["above_threshold"] > f["kept"] > 0 for f in figures.values())
    assert sum(f["kept"] for f in figures.values()) > 1000


def test_analyser_detections_are_insightfaces(folder, theirs, pictures):
    """FaceAnalyser's detections (float64 in the photo's pixels) are InsightFace's: as FaceAnalysis.get
    gives them where the photo fits the detector, and of the area-shrunk photo where it does not."""
    picture = pictures["t1_with_markers"][0]
    for det_size in (1280, 640):
        analyser = FaceAnalyser(str(folder), provider="CPU", det_size=det_size)
        found = analyser.detect(picture, 0.5)
        small, sx, sy = analyser._detector_input(picture)
        if det_size == 1280:
            assert small is picture
            theirs.prepare(ctx_id=-1, det_thresh=0.5, det_size=(det_size, det_size))
            faces = theirs.get(picture)
            expected = [(f.bbox, f.kps, f.det_score) for f in faces]
        else:
            assert small.shape[1] == det_size
            boxes, points = theirs.det_model.detect(small, input_size=(det_size, det_size), det_thresh=0.5)
            scale = np.array([sx, sy])
            expected = [((b[:4].astype(np.float64).reshape(2, 2) * scale).reshape(4), p.astype(np.float64) * scale,
                         b[4]) for b, p in zip(boxes, points)]
        assert len(found) == len(expected) == len(T1_MARKERS)
        for det, (box, points, score) in zip(found, expected):
            assert np.array_equal(det.box, np.asarray(box, np.float64))
            assert np.array_equal(det.landmarks, np.asarray(points, np.float64))
            assert det.score == float(score)
    theirs.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))


# --- recognition -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crops(pictures):
    """112 px crops cut by InsightFace's own norm_crop: at dlib's landmarks of the real faces of t1 and
    the astronaut, at the marker faces' landmarks, and Tom Hanks' photo (aligned already)."""
    from insightface.utils import face_align

    from revpers_cli.standins.buffalo_l import expected_face

    out = []
    for rgb in (insightface_image("t1.jpg"), astronaut()):
        out += [face_align.norm_crop(bgr(rgb), five.astype(np.float32)) for _, five, _ in dlib_faces(rgb)]
    out += [face_align.norm_crop(pictures["t1_with_markers"][0], expected_face(c, r)[1].astype(np.float32))
            for c, r, _ in T1_MARKERS]
    out.append(bgr(insightface_image("Tom_Hanks_54745.png")))
    assert len(out) == 6 + 1 + 6 + 1
    return out


def test_features_are_insightfaces_bit_for_bit(theirs, ours, crops):
    recognizer = theirs.models["recognition"]
    assert (ours.recognizer.mean, ours.recognizer.std) == (recognizer.input_mean, recognizer.input_std)
    for batch in (crops, crops[:1], crops[5:9]):
        expected = recognizer.get_feat(list(batch))
        got = onnx_pack.embed(ours.recognizer, batch)
        assert got.dtype == expected.dtype == np.float32 and np.array_equal(got, expected)
    # a crop of another size is resized to the model's as InsightFace's blob does it
    bigger = [cv2.resize(c, (150, 150)) for c in crops[:3]]
    assert np.array_equal(onnx_pack.embed(ours.recognizer, bigger), recognizer.get_feat(bigger))
    # and the features tell the faces apart (the comparison is not between constants)
    feats = onnx_pack.embed(ours.recognizer, crops)
    assert np.unique(feats.round(4), axis=0).shape[0] == len(crops)


def test_analyser_embeddings_against_faceanalysis_get(folder, theirs, pictures):
    """FaceAnalysis.get's normed_embedding and FaceAnalyser's embed of the same detections. Not bit for
    bit, by design of the pack (not of the runner): FaceAnalyser cuts its crops from float64 landmarks
    with its own similarity estimate (align.arcface_crop, at most one grey level from norm_crop's) and
    normalises in float64; the figure is recorded."""
    picture = pictures["t1_with_markers"][0]
    theirs.prepare(ctx_id=-1, det_thresh=0.5, det_size=(1280, 1280))
    faces = theirs.get(picture)
    theirs.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    analyser = FaceAnalyser(str(folder), provider="CPU", det_size=1280)
    ours = analyser.embed(picture, [d.landmarks for d in analyser.detect(picture, 0.5)])
    expected = np.stack([f.normed_embedding for f in faces])
    diff = float(np.abs(ours - expected).max())
    cosine = np.sum(ours.astype(np.float64) * expected, axis=1)
    record_figures("onnx_pack_embeddings_vs_faceanalysis_get", {"max_abs_diff": diff,
                                                               "min_cosine": float(cosine.min())})
    assert ours.shape == expected.shape == (len(T1_MARKERS), 512)
    assert cosine.min() > 0.999 and diff < 0.01


def _recognizer_with_mxnet_names(path, seed=3):
    """A 112 px recognition model whose first nodes carry the names of MXNet-converted models (which
    normalise inside the graph): InsightFace feeds those raw pixel values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.02, size=(3 * 28 * 28, 512)).astype(np.float32)
    nodes = [helper.make_node("Sub", ["data", "zero"], ["a"], name="_minusscalar0"),
             helper.make_node("Mul", ["a", "scale"], ["b"], name="_mulscalar0"),
             helper.make_node("AveragePool", ["b"], ["c"], kernel_shape=[4, 4], strides=[4, 4], name="pool"),
             helper.make_node("Flatten", ["c"], ["d"], name="flatten"),
             helper.make_node("Gemm", ["d", "w", "bias"], ["fc1"], name="fc1")]
    inits = [numpy_helper.from_array(np.float32(127.5).reshape(()), "zero"),
             numpy_helper.from_array(np.float32(1 / 128).reshape(()), "scale"),
             numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(512, np.float32), "bias")]
    graph = helper.make_graph(nodes, "mxnet_like",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_input_normalisation_follows_the_models_node_names(folder, tmp_path, crops):
    import onnx

    # the node names read without the onnx package are onnx's own, for every stand-in file
    for name in sorted(os.listdir(folder)):
        if name.endswith(".onnx"):
            expected = [n.name for n in onnx.load(str(folder / name)).graph.node[:8]]
            assert onnx_pack.first_node_names(str(folder / name), 8) == expected
    pack = tmp_path / "mxnet"
    pack.mkdir()
    shutil.copy(folder / "det_10g.onnx", pack / "det_10g.onnx")
    _recognizer_with_mxnet_names(pack / "r100.onnx")
    theirs, ours = reference(pack), onnx_pack.load_pack(str(pack), CPU)
    assert (ours.recognizer.mean, ours.recognizer.std) == (0.0, 1.0)
    assert (theirs.models["recognition"].input_mean, theirs.models["recognition"].input_std) == (0.0, 1.0)
    got = onnx_pack.embed(ours.recognizer, crops)
    assert np.array_equal(got, theirs.models["recognition"].get_feat(list(crops)))
    other = onnx_pack.Recognizer(**{**ours.recognizer.__dict__, "mean": 127.5, "std": 127.5})
    assert not np.allclose(onnx_pack.embed(other, crops), got, atol=1e-3)  # the rule matters


# --- the folder: routing, broken files, missing runtime ------------------------------------------------

def test_files_are_routed_as_insightface_routes_them(folder, tmp_path):
    """Any file names: by signature, first in name order wins, as in FaceAnalysis."""
    pack = tmp_path / "renamed"
    other = write_standin_pack(tmp_path / "seed1", seed=1)
    pack.mkdir()
    for src, dst in ((folder / "w600k_r50.onnx", "b_recognition.onnx"),
                     (other / "w600k_r50.onnx", "c_recognition.onnx"),  # other weights: not the one used
                     (folder / "det_10g.onnx", "d_detector.onnx"), (folder / "2d106det.onnx", "a_landmarks.onnx"),
                     (folder / "genderage.onnx", "e_attributes.onnx")):
        shutil.copy(src, pack / dst)
    ours = onnx_pack.load_pack(str(pack), CPU)
    assert ours.roles == {"a_landmarks.onnx": "landmark", "b_recognition.onnx": "recognition",
                          "c_recognition.onnx": "recognition", "d_detector.onnx": "detection",
                          "e_attributes.onnx": "genderage"}
    assert os.path.basename(ours.recognizer.path) == "b_recognition.onnx"
    theirs = reference(pack)
    assert os.path.basename(ours.recognizer.path) == os.path.basename(theirs.models["recognition"].model_file)
    assert os.path.basename(ours.detector.path) == os.path.basename(theirs.models["detection"].model_file)
    analyser = FaceAnalyser(str(pack), provider="CPU", det_size=640, pack="renamed")
    assert len(analyser.detect(bgr(marker_photo()), 0.5)) == len(MARKER_FACES)
    # no recogniser: the error says what was found
    os.remove(pack / "b_recognition.onnx")
    os.remove(pack / "c_recognition.onnx")
    with pytest.raises(RuntimeError, match=r"needs a detector and a recognition model; it recognised only: "
                                           r"a_landmarks.onnx \(landmark\), d_detector.onnx \(detection\)"):
        FaceAnalyser(str(pack), provider="CPU", det_size=640, pack="renamed")


def test_a_broken_file_is_named(folder, tmp_path):
    pack = tmp_path / "models" / "buffalo_l"
    shutil.copytree(folder, pack)
    (pack / "zz_extra.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(onnx_pack.ModelFileError, match="could not open zz_extra.onnx in") as err:
        onnx_pack.load_pack(str(pack), CPU)
    assert err.value.path == str(pack / "zz_extra.onnx")
    with pytest.raises(RuntimeError) as err:
        FaceAnalyser(str(pack), provider="CPU")
    text = str(err.value)
    assert "zz_extra.onnx" in text and str(pack) in text and analysis.BUFFALO_L_URL in text
    assert "Files there: 1k3d68.onnx, 2d106det.onnx, det_10g.onnx" in text


def test_a_detector_without_landmarks_is_refused(folder, tmp_path):
    pack = tmp_path / "nokps"
    pack.mkdir()
    random_scrfd(pack / "det.onnx", landmarks=False)
    shutil.copy(folder / "w600k_r50.onnx", pack / "w600k_r50.onnx")
    with pytest.raises(RuntimeError, match="the detector det.onnx in .* gives no landmarks"):
        FaceAnalyser(str(pack), provider="CPU", pack="nokps")


def test_missing_onnxruntime_names_both_builds(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    for call in (lambda: analysis.resolve_providers("auto"), lambda: FaceAnalyser(str(folder)),
                 lambda: onnx_pack.load_pack(str(folder), CPU)):
        with pytest.raises(ImportError) as err:
            call()
        text = str(err.value)
        assert "pip install onnxruntime (CPU)" in text and "pip install onnxruntime-gpu (CUDA)" in text
        assert "never both" in text


def test_face_analysis_runs_without_the_insightface_package(folder):
    """The pack's face analysis imports nothing from insightface: in a fresh interpreter where importing
    it fails, the stand-in pack loads, finds the marker faces and embeds them."""
    script = (
        "import sys; sys.modules['insightface'] = None\n"
        "sys.path.insert(0, 'tests')\n"
        "from faces_fixtures import marker_photo\n"
        "from revpers_core.faces import analysis, pipeline\n"
        f"a = analysis.load_analyser({str(folder)!r}, provider='auto', det_size=640)\n"
        "photo = marker_photo()\n"
        "found = a.detect(photo[:, :, ::-1].copy(), 0.5)\n"
        "print(len(found), a.embed(photo[:, :, ::-1].copy(), [d.landmarks for d in found]).shape)\n")
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(MARKER_FACES)), f"({len(MARKER_FACES)},", "512)"]
