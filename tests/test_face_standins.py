"""The stand-in buffalo_l pack: real file names and signatures, routed and run by InsightFace itself,
and a detector that finds marker faces (and only them) where they are."""
import hashlib

import numpy as np
import pytest

from faces_fixtures import MARKER_FACES, marker_photo, record_figures, write_standin_pack
from revpers_cli.standins.buffalo_l import (FILES, MarkerFaces, draw_marker_face, expected_face,
                                             write_buffalo_l)

SIGNATURES = {
    # file: (input name, input shape, [(output name, output shape)])
    "det_10g.onnx": ("input.1", [1, 3, None, None],
                     [("448", [None, 1]), ("471", [None, 1]), ("494", [None, 1]),
                      ("451", [None, 4]), ("474", [None, 4]), ("497", [None, 4]),
                      ("454", [None, 10]), ("477", [None, 10]), ("500", [None, 10])]),
    "w600k_r50.onnx": ("input.1", [None, 3, 112, 112], [("683", [None, 512])]),
    "2d106det.onnx": ("data", [None, 3, 192, 192], [("fc1", [None, 212])]),
    "1k3d68.onnx": ("data", [None, 3, 192, 192], [("fc1", [None, 3309])]),
    "genderage.onnx": ("data", [None, 3, 96, 96], [("fc1", [None, 3])]),
}


def _dims(value_info):
    return [d.dim_value if d.dim_value > 0 else None for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_standin_pack(tmp_path_factory.mktemp("insightface") / "models" / "buffalo_l")


def test_files_have_buffalo_l_names_and_signatures(pack, tmp_path):
    import onnx

    assert sorted(p.name for p in pack.iterdir()) == sorted(FILES)
    for name, (in_name, in_shape, outs) in SIGNATURES.items():
        model = onnx.load(str(pack / name))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == [in_name]
        assert _dims(model.graph.input[0]) == in_shape
        assert [(o.name, _dims(o)) for o in model.graph.output] == outs
    # same seed, same bytes; another seed, other weights
    again = write_buffalo_l(tmp_path / "again", seed=0)
    other = write_buffalo_l(tmp_path / "other", seed=1)
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert [digest(p) for p in again] == [digest(pack / f) for f in FILES]
    assert digest(other[1]) != digest(again[1])


def test_insightface_routes_and_runs_every_file(pack):
    """InsightFace's own FaceAnalysis (all modules, as the reference loads it) on the stand-ins."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    assert sorted(app.models) == ["detection", "genderage", "landmark_2d_106", "landmark_3d_68", "recognition"]
    app.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    photo = marker_photo()
    faces = app.get(np.ascontiguousarray(photo[:, :, ::-1]))
    assert len(faces) == len(MARKER_FACES)
    for face in faces:
        assert face.bbox.shape == (4,) and face.kps.shape == (5, 2)
        assert abs(float(np.linalg.norm(face.normed_embedding)) - 1.0) < 1e-5
        assert face.landmark_2d_106.shape == (106, 2) and face.landmark_3d_68.shape == (68, 3)
        assert face.gender in (0, 1) and face.age is not None
        assert face.det_score == pytest.approx(0.9, abs=1e-6)


@pytest.mark.parametrize("det_size", [320, 640, 1024])
def test_detector_finds_marker_faces_where_they_are(pack, det_size):
    from revpers_core.faces.analysis import FaceAnalyser

    analyser = FaceAnalyser(str(pack), provider="CPU", det_size=det_size)
    photo = marker_photo()
    found = analyser.detect(np.ascontiguousarray(photo[:, :, ::-1]), 0.5)
    # the photo is 960 px wide: det_scale = det_size / 960; errors are reported in photo pixels
    assert len(found) == len(MARKER_FACES)
    errors = []
    for centre, radius, _ in MARKER_FACES:
        box, landmarks = expected_face(centre, radius)
        best = min(found, key=lambda d: np.abs(d.box - box).max())
        errors.append({"radius": radius, "box_max_err_px": float(np.abs(best.box - box).max()),
                       "landmark_max_err_px": float(np.abs(best.landmarks - landmarks).max())})
    record_figures(f"standin_detector_accuracy_det{det_size}", {"faces": errors})
    tolerance = 2.5 * 960 / det_size  # a couple of detector pixels
    assert max(e["box_max_err_px"] for e in errors) < tolerance
    assert max(e["landmark_max_err_px"] for e in errors) < tolerance


def test_detector_finds_nothing_without_markers_or_above_its_score(pack):
    from faces_fixtures import astronaut, insightface_image
    from revpers_core.faces.analysis import FaceAnalyser

    analyser = FaceAnalyser(str(pack), provider="CPU", det_size=640)
    for photo in (marker_photo(faces=[]), insightface_image("t1.jpg"), astronaut()):
        assert analyser.detect(np.ascontiguousarray(photo[:, :, ::-1]), 0.1) == []
    with_faces = np.ascontiguousarray(marker_photo()[:, :, ::-1])
    assert len(analyser.detect(with_faces, 0.89)) == 3
    assert analyser.detect(with_faces, 0.91) == []  # the stand-in scores faces 0.9
    # two marker faces touching each other are not one big face (nor a false one between them)
    touching = marker_photo(faces=[((300, 270), 60, 1), ((420, 270), 60, 2)])
    found = analyser.detect(np.ascontiguousarray(touching[:, :, ::-1]), 0.5)
    assert len(found) <= 2
    for det in found:
        assert min(abs(det.centre[0] - 300), abs(det.centre[0] - 420)) < 3


def test_custom_marker_score(tmp_path):
    from revpers_core.faces.analysis import FaceAnalyser

    write_buffalo_l(tmp_path / "buffalo_l", faces=MarkerFaces(score=0.3))
    analyser = FaceAnalyser(str(tmp_path / "buffalo_l"), provider="CPU", det_size=640)
    photo = np.ascontiguousarray(marker_photo()[:, :, ::-1])
    assert analyser.detect(photo, 0.5) == []
    assert len(analyser.detect(photo, 0.25)) == 3


def test_recognition_stand_in_behaves_like_an_identity_embedding(pack):
    from revpers_core.faces.analysis import FaceAnalyser
    from revpers_core.faces.metrics import cosine_similarity

    analyser = FaceAnalyser(str(pack), provider="CPU", det_size=640)
    rng = np.random.default_rng(0)
    sims = {"same": [], "noisy": [], "different": []}
    for a in range(4):
        img_a = draw_marker_face(np.full((240, 240, 3), 80, np.uint8), (120, 120), 80, seed=a)
        img_b = draw_marker_face(np.full((240, 240, 3), 80, np.uint8), (120, 120), 80, seed=a + 10)
        _, lm = expected_face((120, 120), 80)
        noisy = np.clip(img_a + rng.normal(0, 2, img_a.shape), 0, 255).astype(np.uint8)
        e_a = analyser.embed(img_a[:, :, ::-1].copy(), [lm])
        sims["same"].append(float(cosine_similarity(e_a, analyser.embed(img_a[:, :, ::-1].copy(), [lm]))[0]))
        sims["noisy"].append(float(cosine_similarity(e_a, analyser.embed(noisy[:, :, ::-1].copy(), [lm]))[0]))
        sims["different"].append(float(cosine_similarity(e_a, analyser.embed(img_b[:, :, ::-1].copy(), [lm]))[0]))
    record_figures("standin_recognition_similarities", sims)
    assert min(sims["same"]) > 1 - 1e-6
    assert min(sims["noisy"]) > 0.8
    assert max(abs(s) for s in sims["different"]) < 0.3
