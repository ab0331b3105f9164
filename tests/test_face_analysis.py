"""Face analysis loading (and refusing to), face selection and order, embeddings, the fail-closed
policy and the anonymity report: on the stand-in buffalo_l, through revpers_core and through the
pack's node classes inside this process (real ComfyUI classes, no server)."""
import os

import numpy as np
import pytest
import torch

from faces_fixtures import MARKER_FACES, marker_photo, record_figures, to_float, write_standin_pack
from revpers_core.faces import analysis, metrics, pipeline
from revpers_cli.standins.buffalo_l import expected_face


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An insightface model root holding models/buffalo_l (stand-ins)."""
    base = tmp_path_factory.mktemp("insightface_root")
    write_standin_pack(base / "models" / "buffalo_l")
    return base


@pytest.fixture(scope="module")
def analyser(root):
    return analysis.load_analyser(str(root / "models" / "buffalo_l"), provider="CPU", det_size=640)


def photo_batch(*photos):
    return [to_float(p) for p in photos]


# --- loading ---------------------------------------------------------------------------------------

def test_missing_pack_is_a_clear_error_and_nothing_is_downloaded(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where InsightFace would put a download
    roots = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(FileNotFoundError) as err:
        analysis.find_model_dir(roots)
    text = str(err.value)
    for needle in (str(roots[0] / "models" / "buffalo_l"), str(roots[1] / "models" / "buffalo_l"),
                   "det_10g.onnx", "w600k_r50.onnx", analysis.BUFFALO_L_URL):
        assert needle in text
    # a folder that exists but is empty: InsightFace would fail with a bare AssertionError
    empty = tmp_path / "a" / "models" / "buffalo_l"
    empty.mkdir(parents=True)
    assert analysis.find_model_dir(roots) == str(empty)
    with pytest.raises(FileNotFoundError, match="lacks det_10g.onnx, w600k_r50.onnx") as err:
        analysis.load_analyser(str(empty))
    assert analysis.BUFFALO_L_URL in str(err.value)
    # a pack with a Git LFS pointer in place of a model
    (empty / "det_10g.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    (empty / "w600k_r50.onnx").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="Git LFS pointer") as err:
        analysis.load_analyser(str(empty))
    assert "w600k_r50.onnx is only 10 bytes" in str(err.value)
    assert list(home.iterdir()) == [] and not (tmp_path / "b").exists()


def test_bad_settings_are_refused(root):
    folder = str(root / "models" / "buffalo_l")
    with pytest.raises(ValueError, match="multiple of 32"):
        analysis.load_analyser(folder, det_size=650)
    with pytest.raises(ValueError, match="provider must be one of"):
        analysis.load_analyser(folder, provider="TPU")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            analysis.load_analyser(folder, provider="CUDA")


def test_analysers_are_cached_until_the_files_change(root, tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    write_standin_pack(folder)
    first = analysis.load_analyser(str(folder), provider="CPU", det_size=640)
    assert analysis.load_analyser(str(folder), provider="CPU", det_size=640) is first
    assert analysis.load_analyser(str(folder), provider="CPU", det_size=320) is not first
    stat = os.stat(folder / "det_10g.onnx")
    os.utime(folder / "det_10g.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert analysis.load_analyser(str(folder), provider="CPU", det_size=640) is not first


# --- finding and ordering faces --------------------------------------------------------------------

def test_faces_come_in_reading_order_with_filters(analyser):
    photo = marker_photo()
    faces, crops, masks = pipeline.detect_and_align(analyser, photo_batch(photo, photo[:, ::-1]), crop_size=256)
    assert crops.shape == (6, 256, 256, 3) and masks.shape == (6, 256, 256)
    assert [f.image_index for f in faces.faces] == [0, 0, 0, 1, 1, 1]
    xs = [f.box[0] for f in faces.faces]
    assert xs[0] < xs[1] < xs[2] and xs[3] < xs[4] < xs[5]
    expected_x = sorted(c[0] for c, _, _ in MARKER_FACES)
    assert np.allclose([(f.box[0] + f.box[2]) / 2 for f in faces.faces[:3]], expected_x, atol=2)
    # max_faces with the others left on request keeps the largest for the model, still in reading
    # order, and records the third as left; min size gives the small one (r = 45) to the fill instead
    faces, _, _ = pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=256, max_faces=2,
                                            beyond_max_faces="leave visible (marked)")
    assert np.allclose([f.box[2] - f.box[0] for f in faces.faces], [120, 180], atol=2.5)
    assert [s.action for s in faces.skipped] == ["left"] and abs(faces.skipped[0].size - 90) < 2.5
    faces, _, _ = pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=256, min_size=100)
    assert np.allclose([f.box[2] - f.box[0] for f in faces.faces], [120, 180], atol=2.5)
    assert [s.action for s in faces.skipped] == ["covered"] and abs(faces.skipped[0].size - 90) < 2.5
    rec = faces.faces[1]
    assert rec.image_size == (540, 960) and rec.crop_size == 256 and rec.transform.shape == (2, 3)
    assert rec.score == pytest.approx(0.9, abs=1e-6)


def test_fail_closed_and_marked_pass_through(analyser):
    blank = marker_photo(faces=[])
    photo = marker_photo()
    with pytest.raises(ValueError) as err:
        pipeline.detect_and_align(analyser, photo_batch(photo, blank), crop_size=256)
    msg = str(err.value)
    assert "no face found" in msg and "image 1" in msg and "nothing was anonymized" in msg
    assert "lower detection threshold" in msg and "pass through (marked)" in msg
    with pytest.raises(ValueError, match="only 3 face"):
        pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=256, expected_faces=4)
    with pytest.raises(ValueError, match="larger than max_faces"):
        pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=256, expected_faces=3, max_faces=2)
    # pass-through: the faces of image 0 go on, image 1 is recorded and marked on paste-back
    faces, crops, _ = pipeline.detect_and_align(analyser, photo_batch(photo, blank), crop_size=256,
                                                on_no_face="pass through (marked)")
    assert len(faces) == 3 and faces.passed_through.keys() == {1} and not faces.placeholder
    assert "image 1 was NOT anonymized" in faces.warning()
    outs, _, warning = pipeline.paste_back(photo_batch(photo, blank), 1 - crops, faces)
    assert "NOT anonymized" in warning
    assert np.allclose(outs[1][0, :, :], [1.0, 0.0, 0.0])  # red frame along the top row
    assert not np.allclose(outs[0][0, :, :], [1.0, 0.0, 0.0])
    # no face anywhere: one grey placeholder crop that paste-back ignores
    faces, crops, masks = pipeline.detect_and_align(analyser, photo_batch(blank), crop_size=256,
                                                    on_no_face="pass through (marked)")
    assert faces.placeholder and len(faces) == 0 and crops.shape == (1, 256, 256, 3) and masks.max() == 0
    outs, coverage, warning = pipeline.paste_back(photo_batch(blank), crops, faces)
    assert coverage[0].max() == 0 and "NOT anonymized" in warning
    assert np.allclose(outs[0][-1, :, :], [1.0, 0.0, 0.0])
    assert np.array_equal(outs[0][200:300, 200:300], to_float(blank)[200:300, 200:300])  # marked, not altered


def test_paste_back_refuses_mismatched_inputs(analyser):
    photo = marker_photo()
    faces, crops, _ = pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=256)
    with pytest.raises(ValueError, match="2 crop"):
        pipeline.paste_back(photo_batch(photo), crops[:2], faces)
    with pytest.raises(ValueError, match="same images"):
        pipeline.paste_back(photo_batch(photo[:500]), crops, faces)
    with pytest.raises(ValueError, match="2 image"):
        pipeline.paste_back(photo_batch(photo, photo), crops, faces)


# --- embeddings -----------------------------------------------------------------------------------

def test_embedding_from_detection_and_from_aligned_crops_agree(analyser):
    photo = marker_photo()
    rows, chosen = pipeline.embed_images(analyser, photo_batch(photo))
    big = max(MARKER_FACES, key=lambda f: f[1])
    assert rows.shape == (1, 512) and rows.dtype == np.float32
    assert np.allclose(chosen[0].box, expected_face(big[0], big[1])[0], atol=2)  # the largest face
    assert abs(float(np.linalg.norm(rows[0])) - 1) < 1e-5
    left, chosen = pipeline.embed_images(analyser, photo_batch(photo), select="leftmost")
    assert chosen[0].centre[0] == pytest.approx(min(c[0] for c, _, _ in MARKER_FACES), abs=2)
    faces, crops, _ = pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=1024)
    aligned = pipeline.embed_aligned(analyser, crops, faces)
    sims = metrics.cosine_similarity(aligned, np.repeat(rows, 3, axis=0))
    record_figures("embedding_detect_vs_aligned", {"cos_largest_face": float(sims[1]),
                                                   "cos_other_faces": [float(sims[0]), float(sims[2])]})
    assert sims[1] > 0.95  # the same face, cut from the photo or from its 1024 crop
    assert abs(sims[0]) < 0.3 and abs(sims[2]) < 0.3
    # resized crops work through the scaled landmarks
    import cv2

    small = np.stack([cv2.resize(c, (512, 512), interpolation=cv2.INTER_AREA) for c in crops])
    assert np.all(metrics.cosine_similarity(pipeline.embed_aligned(analyser, small, faces), aligned) > 0.95)
    with pytest.raises(ValueError, match="no face found in image 0"):
        pipeline.embed_images(analyser, photo_batch(marker_photo(faces=[])))


# --- the anonymity report -------------------------------------------------------------------------

def test_similarity_and_report():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 512))
    b = rng.normal(size=(5, 512))
    same = metrics.cosine_similarity(a, a)
    different = metrics.cosine_similarity(a, b)
    assert np.allclose(same, 1.0)
    assert np.all(np.abs(different) < 0.2)
    report = metrics.build_report(a, np.vstack([a[:2], b[2:]]), threshold=0.3, image_indices=[0, 0, 1, 1, 2])
    assert [f.passed(0.3) for f in report.faces] == [False, False, True, True, True]
    assert not report.passed and len(report.failed) == 2
    text = report.text()
    assert "face 0 (image 0): +1.000  STILL RECOGNIZABLE" in text and "2 of 5" in text
    ok = metrics.build_report(a[:1], b, threshold=0.3)  # one original for all
    assert ok.passed and "all 5 face(s) below" in ok.text()
    unmeasured = metrics.build_report(a, b, missing={3: "no face found"})
    assert unmeasured.faces[3].similarity is None and not unmeasured.passed
    assert "NOT MEASURED - no face found" in unmeasured.text()
    with pytest.raises(ValueError, match="all zeros"):
        metrics.cosine_similarity(np.zeros((1, 512)), b[:1])
    assert metrics.DEFAULT_THRESHOLD == 0.30


def test_check_anonymity_on_crops(analyser):
    photo = marker_photo()
    faces, crops, _ = pipeline.detect_and_align(analyser, photo_batch(photo), crop_size=512)
    same = pipeline.check_anonymity(analyser, list(crops), original=list(crops), faceset=faces)
    assert [round(s, 4) for s in same.similarities] == [1.0, 1.0, 1.0] and not same.passed
    inverted = pipeline.check_anonymity(analyser, list(1 - crops), original=list(crops), faceset=faces)
    assert inverted.passed and inverted.max_similarity < 0.3
    emb = pipeline.embed_aligned(analyser, crops, faces)
    by_embedding = pipeline.check_anonymity(analyser, list(crops), original_embeddings=emb, faceset=faces)
    assert np.allclose(by_embedding.similarities, 1.0, atol=1e-5)
    # photos without faces given: the largest face of the original is measured, and the anonymized
    # image of the same size at the same landmarks, so an edit that leaves no detectable face is still
    # measured (here: the face is gone, so it passes)
    removed = pipeline.check_anonymity(analyser, photo_batch(marker_photo(faces=[])), original=photo_batch(photo))
    assert removed.faces[0].similarity is not None and removed.passed
    kept = pipeline.check_anonymity(analyser, photo_batch(photo), original=photo_batch(photo))
    assert kept.faces[0].similarity > 0.99 and not kept.passed
    # no face in the original: nothing to compare with = not measured = not passed
    photos = pipeline.check_anonymity(analyser, photo_batch(photo), original=photo_batch(marker_photo(faces=[])))
    assert photos.faces[0].similarity is None and not photos.passed
    record_figures("anonymity_check_standin", {"same_crops": same.similarities,
                                               "inverted_crops": inverted.similarities})


# --- the nodes, in this process -------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(comfy_inprocess, root):
    import folder_paths

    paths = folder_paths.folder_names_and_paths["insightface"][0]
    paths.insert(0, str(root))
    yield comfy_inprocess.nodes
    paths.remove(str(root))


def test_node_loader_and_embedding_in_process(nodes, tmp_path):
    import folder_paths

    loader = nodes.face_analysis.RevPersFaceAnalysisLoader
    assert loader.INPUT_TYPES()["required"]["model_pack"][1]["options"][0] == "buffalo_l"
    (bound,) = loader.execute("buffalo_l", "CPU", 640, 0.5)
    assert isinstance(bound, analysis.BoundAnalyser) and bound.threshold == 0.5
    (again,) = loader.execute("buffalo_l", "CPU", 640, 0.4)
    assert again.analyser is bound.analyser  # cached: no ONNX reload
    image = torch.from_numpy(np.stack(photo_batch(marker_photo(), marker_photo()[:, ::-1].copy())))
    embed = nodes.embedding.RevPersArcFaceEmbedding
    (rows,) = embed.execute(bound, image, "largest")
    assert rows.dtype == torch.float32 and tuple(rows.shape) == (2, 512)
    assert torch.allclose(rows.norm(dim=1), torch.ones(2), atol=1e-5)
    crops, faces, masks, warning = nodes.detect_align.RevPersDetectAlign.execute(
        bound, image, 512, 0.15, 0.0, 20, 0, 0, "error")
    (per_face,) = embed.execute(bound, crops, "largest", faces)
    assert tuple(per_face.shape) == (6, 512) and warning == ""
    # the missing-pack error through the node: a root without buffalo_l in front of the others
    paths = folder_paths.folder_names_and_paths["insightface"][0]
    saved = list(paths)
    paths[:] = [str(tmp_path / "nothing_here")]
    try:
        with pytest.raises(FileNotFoundError, match="buffalo_l' not found"):
            loader.execute("buffalo_l", "CPU", 640, 0.5)
    finally:
        paths[:] = saved


FACE_NODES = ("RevPersFaceAnalysisLoader", "RevPersArcFaceEmbedding", "RevPersDetectAlign",
              "RevPersPasteBack", "RevPersAnonymityCheck")


def test_node_contracts(comfy_inprocess):
    """Every face node: DESCRIPTION, a tooltip on every input, category under the pack's root,
    RevPers names; the check is an output node. (ComfyUI's own hidden inputs, which the V3 schema
    gives an output node, are not the pack's.)"""
    classes = comfy_inprocess.nodes.BY_ID
    for key in FACE_NODES:
        cls = classes[key]
        assert cls.define_schema().display_name.endswith(" (RevPers)")
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
        assert cls.CATEGORY == "Reverse Personalization/Faces"
        for group in (g for kind, g in cls.INPUT_TYPES().items() if kind != "hidden"):
            for name, (kind, *opts) in group.items():
                assert opts and "tooltip" in opts[0], f"{key}.{name} has no tooltip"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert classes["RevPersAnonymityCheck"].OUTPUT_NODE is True


def test_tiny_huge_grey_and_rgba_images_through_the_nodes(nodes):
    (bound,) = nodes.face_analysis.RevPersFaceAnalysisLoader.execute("buffalo_l", "CPU", 640, 0.5)
    detect = nodes.detect_align.RevPersDetectAlign
    paste = nodes.paste_back.RevPersPasteBack
    figures = {}
    # tiny (60x60, one face filling most of it) and huge (4800x2700, over 4K) photos
    scale = 5
    big_faces = [((c[0] * scale, c[1] * scale), r * scale, s) for c, r, s in MARKER_FACES]
    for name, photo, marks in (("tiny60", marker_photo(60, 60, faces=[((30, 30), 12, 5)]), [((30, 30), 12, 5)]),
                               ("huge4800", marker_photo(960 * scale, 540 * scale, faces=big_faces), big_faces)):
        image = torch.from_numpy(to_float(photo)[None])
        crops, faces, masks, warning = detect.execute(bound, image, 1024, 0.15, 0.0, 8, 0, len(marks), "error")
        assert tuple(crops.shape) == (len(marks), 1024, 1024, 3) and warning == ""
        errs = []
        for (centre, radius, _), record in zip(sorted(marks, key=lambda m: m[0][0]), faces.faces):
            _, lm = expected_face(centre, radius)
            errs.append(float(np.abs(record.landmarks - lm).max() / radius))
        out, coverage, _ = paste.execute(image, 1 - crops, faces, 0.05)
        untouched = coverage[0] == 0
        assert torch.equal(out[0][untouched], image[0][untouched])
        assert float(coverage[0].max()) == pytest.approx(1.0)
        figures[name] = {"landmark_max_err_over_radius": max(errs),
                         "covered_fraction": float((coverage[0] > 0).float().mean())}
        assert max(errs) < 0.08  # a pixelated 12 px disc is itself ~0.5 px off its circle
    # grey and RGBA photos keep their channels; alpha is left as it was
    rgb = to_float(marker_photo())
    crops, faces, _, _ = detect.execute(bound, torch.from_numpy(rgb[None]), 256, 0.15, 0.0, 20, 0, 3, "error")
    grey = torch.from_numpy((rgb @ np.array([0.299, 0.587, 0.114], np.float32))[None, :, :, None])
    out, coverage, _ = paste.execute(grey, 1 - crops, faces, 0.05)
    assert tuple(out.shape) == tuple(grey.shape)
    assert torch.equal(out[0][coverage[0] == 0], grey[0][coverage[0] == 0])
    alpha = torch.rand(1, 540, 960, 1)
    rgba = torch.cat([torch.from_numpy(rgb[None]), alpha], dim=-1)
    crops4, faces4, _, _ = detect.execute(bound, rgba, 256, 0.15, 0.0, 20, 0, 3, "error")  # alpha ignored
    assert torch.allclose(crops4, crops)
    out, coverage, _ = paste.execute(rgba, 1 - crops4, faces4, 0.05)
    assert tuple(out.shape) == (1, 540, 960, 4) and torch.equal(out[..., 3], rgba[..., 3])
    assert float((out[0, ..., :3] - rgba[0, ..., :3]).abs()[coverage[0] > 0.99].mean()) > 0.2
    with pytest.raises(ValueError, match="2 channels"):
        detect.execute(bound, torch.zeros(1, 64, 64, 2), 256, 0.15, 0.0, 20, 0, 0, "error")
    record_figures("nodes_tiny_huge", figures)
