"""Face geometry on real photos: alignment to the template, crops, paste-back.

Landmarks come from a real detector that installs offline (dlib's HOG detector and 68-point
model); they are fed into the same align/paste functions the nodes use
(revpers_core.faces.pipeline.align_detections / paste_back). Photos: the two that ship in the
insightface wheel and skimage's astronaut. Figures go to artifacts/faces/figures/.
"""
import math

import cv2
import numpy as np
import pytest

from faces_fixtures import (astronaut, dlib_faces, insightface_image, record_figures, save_rgb, to_float)
from revpers_core.faces import align, pipeline
from revpers_core.faces.paste import DEFAULT_FEATHER, feathered_alpha
from revpers_core.faces.records import Detection

AREA = "faces"


def detections(found):
    return [Detection(box, five, score) for box, five, score in found]


@pytest.fixture(scope="module")
def t1():
    rgb = insightface_image("t1.jpg")
    found = dlib_faces(rgb)
    assert len(found) == 6, f"dlib should find the six people of t1.jpg, found {len(found)}"
    return rgb, found


@pytest.fixture(scope="module")
def astro():
    rgb = astronaut()
    found = dlib_faces(rgb, min_score=0.5)  # dlib also scores a patch on the suit at 0.12
    assert len(found) == 1
    return rgb, found


# --- the transform ---------------------------------------------------------------------------------

def test_similarity_estimate_recovers_known_transforms_and_matches_skimage():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    worst_exact, worst_skimage = 0.0, 0.0
    for _ in range(50):
        src = rng.uniform(-100, 100, size=(5, 2))
        angle = rng.uniform(-math.pi, math.pi)
        scale = math.exp(rng.uniform(-3, 3))
        t = rng.uniform(-500, 500, size=2)
        rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        dst = src @ rot.T + t
        m = align.estimate_similarity(src, dst)
        worst_exact = max(worst_exact, float(np.abs(m - np.hstack([rot, t[:, None]])).max()))
        noisy = dst + rng.normal(0, 5, size=dst.shape)
        if hasattr(SimilarityTransform, "from_estimate"):
            ref = SimilarityTransform.from_estimate(src, noisy)
        else:
            ref = SimilarityTransform()
            ref.estimate(src, noisy)
        worst_skimage = max(worst_skimage, float(np.abs(align.estimate_similarity(src, noisy) - ref.params[:2]).max()))
    record_figures("similarity_estimate", {"max_abs_err_known_transform": worst_exact,
                                           "max_abs_diff_vs_skimage_umeyama": worst_skimage})
    assert worst_exact < 1e-8
    assert worst_skimage < 1e-8
    with pytest.raises(ValueError, match="degenerate"):
        align.estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))


def test_arcface_crop_is_insightface_norm_crop(t1):
    """The 112 px recognition input is cut exactly as InsightFace cuts it, so embeddings match."""
    from insightface.utils import face_align

    rgb, found = t1
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for _, five, _ in found:
        ours = align.arcface_crop(bgr, five)
        theirs = face_align.norm_crop(bgr, five.astype(np.float32))
        # float32 vs float64 landmarks may move a sample by one fixed-point step; allow 1 grey level
        assert ours.shape == theirs.shape == (112, 112, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_template_and_parameters():
    assert np.allclose(align.template_points(112, 0.0, 0.0), align.ARCFACE_TEMPLATE_112, atol=1e-12)
    pts = align.template_points(1024)
    eye_distance = (pts[1, 0] - pts[0, 0]) / 1024
    eye_line = (pts[0, 1] + pts[1, 1]) / 2 / 1024
    record_figures("template_defaults", {"eye_distance_fraction": eye_distance, "eye_line_fraction": eye_line})
    assert 0.23 < eye_distance < 0.26 and 0.40 < eye_line < 0.45
    for bad in (100, 32, 4096):
        with pytest.raises(ValueError, match="multiple of 8"):
            align.check_crop_size(bad)
    with pytest.raises(ValueError, match="padding"):
        align.check_padding(1.5)
    with pytest.raises(ValueError, match="5 landmarks"):
        align.alignment_matrix(np.zeros((4, 2)), 256)


# --- crops on real photos ----------------------------------------------------------------------------

def test_crops_are_upright_and_centred_on_the_template(t1, astro):
    size = 512
    figures = {"faces": []}
    sheet = []
    for name, (rgb, found) in (("t1", t1), ("astronaut", astro)):
        faces, crops, _ = pipeline.align_detections([to_float(rgb)], [detections(found)], crop_size=size)
        template = align.template_points(size)
        for record, crop in zip(faces.faces, crops):
            mapped = record.crop_landmarks()
            # least squares with translation puts the landmarks' centroid exactly on the template's
            centroid_err = float(np.abs(mapped.mean(0) - template.mean(0)).max())
            # what remains is the face's own shape and pose vs the template (the ArcFace fit residual),
            # reported in 112 px ArcFace units
            unit = 112.0 * (1 + 2 * record.padding) / size
            residual = np.linalg.norm(mapped - template, axis=1) * unit
            eye = mapped[1] - mapped[0]
            eye_angle = math.degrees(math.atan2(eye[1], eye[0]))
            photo_eye = record.landmarks[1] - record.landmarks[0]
            photo_angle = math.degrees(math.atan2(photo_eye[1], photo_eye[0]))
            # the crop really shows the face where the transform says: dlib finds it again there
            again = dlib_faces(np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8), min_score=0.0)
            assert again, f"dlib finds no face in the {name} crop of face at {record.box}"
            best = min(again, key=lambda f: np.abs(f[1] - mapped).mean())
            redetect = np.linalg.norm(best[1] - mapped, axis=1) * unit
            figures["faces"].append({
                "photo": name, "box": record.box.round(1).tolist(), "photo_roll_deg": photo_angle,
                "crop_eye_angle_deg": eye_angle, "centroid_err_px": centroid_err,
                "fit_residual_112px_mean": float(residual.mean()), "fit_residual_112px_max": float(residual.max()),
                "redetected_vs_mapped_112px_mean": float(redetect.mean()),
            })
            assert centroid_err < 1e-6
            assert abs(eye_angle) < 8.0, f"crop not upright: eye line at {eye_angle:.1f} deg"
            assert residual.mean() < 9.0
            assert redetect.mean() < 3.0, f"landmarks re-detected in the crop are {redetect.mean():.2f} px off"
            sheet.append(crop)
    rolls = [f["photo_roll_deg"] for f in figures["faces"]]
    eyes = [f["crop_eye_angle_deg"] for f in figures["faces"]]
    figures["max_abs_photo_roll_deg"] = max(abs(r) for r in rolls)
    figures["max_abs_crop_eye_angle_deg"] = max(abs(e) for e in eyes)
    figures["mean_fit_residual_112px"] = float(np.mean([f["fit_residual_112px_mean"] for f in figures["faces"]]))
    figures["mean_redetected_vs_mapped_112px"] = float(
        np.mean([f["redetected_vs_mapped_112px_mean"] for f in figures["faces"]]))
    record_figures("crops_upright_centred", figures)
    assert figures["max_abs_photo_roll_deg"] > 20  # the photos do have rolled faces to straighten
    assert figures["mean_fit_residual_112px"] < 5.0
    marked = []
    for crop in sheet:
        c = np.ascontiguousarray((crop * 255).astype(np.uint8))
        for x, y in align.template_points(size):
            cv2.circle(c, (int(round(x)), int(round(y))), 4, (0, 255, 0), -1)
        marked.append(c[::2, ::2])
    save_rgb(AREA, "crops_with_template.png", np.concatenate(marked, axis=1))


def test_rotated_photo_gives_the_same_upright_crop(astro):
    rgb, found = astro
    img = to_float(rgb)
    five = found[0][1]
    size = 256
    ref, _ = align.align_face(img, five, size)
    h, w = img.shape[:2]
    diffs = {}
    for k in (1, 2, 3):  # exact quarter turns (counter-clockwise)
        turned = np.ascontiguousarray(np.rot90(img, k))
        pts = five.copy()
        for _ in range(k):  # (x, y) -> (y, W - 1 - x) for one counter-clockwise quarter turn
            pts = np.stack([pts[:, 1], (w if _ % 2 == 0 else h) - 1 - pts[:, 0]], axis=1)
        crop, matrix = align.align_face(turned, pts, size)
        diffs[f"rot{90 * k}"] = float(np.abs(crop - ref).mean())
        turn = (align.rotation_degrees(matrix) - align.rotation_degrees(align.alignment_matrix(five, size))) % 90
        assert min(turn, 90 - turn) < 1e-6  # the transform undoes exactly the quarter turns
    # an arbitrary angle: the photo is resampled, so the crops differ by interpolation only
    angle = 33.0
    big = cv2.copyMakeBorder(img, 200, 200, 200, 200, cv2.BORDER_REFLECT_101)
    centre = (big.shape[1] / 2, big.shape[0] / 2)
    rot = cv2.getRotationMatrix2D(centre, angle, 1.0)
    turned = cv2.warpAffine(big, rot, (big.shape[1], big.shape[0]), flags=cv2.INTER_CUBIC)
    pts = align.transform_points(five + 200, rot)
    crop, _ = align.align_face(turned, pts, size)
    diffs["rot33"] = float(np.abs(crop - ref).mean())
    record_figures("rotation_invariance_mean_abs", diffs)
    save_rgb(AREA, "rotated_crops_astronaut.png", np.concatenate([ref, crop], axis=1))
    for key in ("rot90", "rot180", "rot270"):
        assert diffs[key] < 0.003
    assert diffs["rot33"] < 0.02


# --- paste-back --------------------------------------------------------------------------------------

def _roundtrip(image, dets, size, feather=DEFAULT_FEATHER):
    faces, crops, _ = pipeline.align_detections([image], [dets], crop_size=size)
    outs, coverage, _ = pipeline.paste_back([image], crops, faces, feather=feather)
    out, cov = outs[0], coverage[0]
    inside = cov > 0
    diff = np.abs(out - image).max(axis=-1)
    return out, cov, {
        "crop_size": size, "faces": len(dets),
        "in_mask_max_abs": float(diff[inside].max()), "in_mask_mean_abs": float(diff[inside].mean()),
        "in_mask_pixels": int(inside.sum()),
        "outside_bit_exact": bool(np.array_equal(out[~inside], image[~inside])),
        "outside_pixels": int((~inside).sum()),
    }


def test_paste_back_of_unmodified_crops_reproduces_the_photo(t1):
    rgb, found = t1
    image = to_float(rgb)
    figures = {}
    for size in (1024, 256):
        out, cov, fig = _roundtrip(image, detections(found), size)
        figures[f"t1_{size}"] = fig
        assert fig["outside_bit_exact"]
        assert fig["in_mask_mean_abs"] < 0.01 and fig["in_mask_max_abs"] < 0.2
        # every face is inside the pasted region
        for _, five, _ in found:
            for x, y in five:
                assert cov[int(round(y)), int(round(x))] > 0.99
    # a photo over 4K (t1 x4: 5120x3544): faces larger than a 256 crop exercise the pyramid both ways
    huge = cv2.resize(image, (image.shape[1] * 4, image.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    huge = np.clip(huge, 0, 1)
    big = [Detection(b * 4, f * 4, s) for b, f, s in found]
    for size in (1024, 256):
        _, _, fig = _roundtrip(huge, big, size)
        figures[f"t1x4_{size}"] = fig
        assert fig["outside_bit_exact"]
        assert fig["in_mask_mean_abs"] < 0.01 and fig["in_mask_max_abs"] < 0.2
    # a tiny photo (48x48, Tom Hanks' aligned 112 px face scaled down) into a 1024 crop
    tom = insightface_image("Tom_Hanks_54745.png")
    tiny = to_float(cv2.resize(tom, (48, 48), interpolation=cv2.INTER_AREA))
    five = align.ARCFACE_TEMPLATE_112 * 48 / 112
    _, _, fig = _roundtrip(tiny, [Detection(np.array([0, 0, 48, 48.0]), five, 1.0)], 1024)
    figures["tiny48_1024"] = fig
    assert fig["outside_bit_exact"]
    assert fig["in_mask_mean_abs"] < 0.02
    record_figures("paste_back_roundtrip", figures)


def test_several_faces_are_all_replaced(t1):
    rgb, found = t1
    image = to_float(rgb)
    faces, crops, _ = pipeline.align_detections([image], [detections(found)], crop_size=512)
    anonymized = 1.0 - crops  # the stand-in "anonymizer": colour-inverted faces
    outs, coverage, warning = pipeline.paste_back([image], anonymized, faces, feather=DEFAULT_FEATHER)
    out, cov = outs[0], coverage[0]
    assert warning == ""
    changes = []
    for record in faces.faces:
        # the face itself: a disc around the landmarks' centre, radius = eye distance
        lm = record.landmarks
        cx, cy = lm.mean(0)
        r = np.linalg.norm(lm[1] - lm[0])
        ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= r ** 2
        changes.append(float(np.abs(out[disc] - image[disc]).mean()))
        assert cov[disc].min() > 0.99
    assert np.array_equal(out[cov == 0], image[cov == 0])
    record_figures("several_faces_replaced", {"mean_abs_change_per_face": changes,
                                              "covered_fraction": float((cov > 0).mean())})
    assert min(changes) > 0.2
    path = save_rgb(AREA, "before_after_t1.png", np.concatenate([image, out], axis=1))
    assert path.is_file()


def test_the_whole_face_is_replaced_not_just_feathered(t1, astro):
    """Privacy: every pixel inside the hull of dlib's 68 points (jaw line, brows, eyes, nose, mouth)
    comes wholly from the crop at the default mask and feather, also for turned heads."""
    worst = []
    for rgb, min_score in ((t1[0], 0.3), (astro[0], 0.5)):
        found = dlib_faces(rgb, min_score=min_score, all_points=True)
        image = to_float(rgb)
        faces, crops, _ = pipeline.align_detections(
            [image], [[Detection(b, f, s) for b, f, s, _ in found]], crop_size=1024)
        coverage = pipeline.paste_back([image], crops, faces)[1][0]
        for _, _, _, points in found:
            hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
            inside = np.zeros(rgb.shape[:2], np.uint8)
            cv2.fillConvexPoly(inside, hull, 1)
            worst.append(float(coverage[inside > 0].min()))
    record_figures("whole_face_coverage", {"min_coverage_in_68_point_hull_per_face": worst})
    assert min(worst) > 0.99


def test_feathered_edge_leaves_no_seam_on_a_flat_background():
    image = np.full((400, 400, 3), 0.5, dtype=np.float32)
    # a face in the middle, rolled by 20 degrees
    rot = cv2.getRotationMatrix2D((56, 56), 20, 1.6)
    five = align.transform_points(align.ARCFACE_TEMPLATE_112, rot) + 110
    det = Detection(np.array([110, 110, 290, 290.0]), five, 1.0)
    size = 512
    faces, crops, _ = pipeline.align_detections([image], [[det]], crop_size=size)
    flat = np.full_like(crops, 0.8)
    steps = {}
    for feather in (DEFAULT_FEATHER, 0.0):
        out = pipeline.paste_back([image], flat, faces, feather=feather)[0][0]
        step = max(float(np.abs(np.diff(out, axis=0)).max()), float(np.abs(np.diff(out, axis=1)).max()))
        steps[feather] = step
        if feather:
            save_rgb(AREA, "feather_flat.png", out)
    scale = align.transform_scale(faces.faces[0].transform)  # crop px per photo px
    ramp_px = DEFAULT_FEATHER * size / scale
    bound = 0.3 * 1.5 / ramp_px + 0.01  # smoothstep's steepest slope is 1.5 / width
    record_figures("feather_seam", {"feather": DEFAULT_FEATHER, "max_neighbour_step_feathered": steps[DEFAULT_FEATHER],
                                    "max_neighbour_step_hard_edge": steps[0.0],
                                    "ramp_width_photo_px": ramp_px, "bound": bound})
    assert steps[0.0] > 0.15  # a hard edge is a seam: most of the 0.3 contrast within one pixel
    assert steps[DEFAULT_FEATHER] <= bound


def test_overlapping_faces_blend_order_independently():
    image = np.full((300, 400, 3), 0.2, dtype=np.float32)
    a = align.ARCFACE_TEMPLATE_112 * 1.5 + np.array([80, 60])
    b = align.ARCFACE_TEMPLATE_112 * 1.5 + np.array([150, 70])  # overlaps the first
    dets = [Detection(np.array([80, 60, 248, 228.0]), a, 1.0), Detection(np.array([150, 70, 318, 238.0]), b, 1.0)]
    size = 256
    faces, crops, _ = pipeline.align_detections([image], [dets], crop_size=size)
    colours = np.zeros_like(crops)
    colours[0, ..., 0] = 1.0  # red face
    colours[1, ..., 2] = 1.0  # blue face
    out = pipeline.paste_back([image], colours, faces)[0][0]
    faces_swapped, _, _ = pipeline.align_detections([image], [dets[::-1]], crop_size=size)
    out_swapped = pipeline.paste_back([image], colours[::-1].copy(), faces_swapped)[0][0]
    assert np.abs(out - out_swapped).max() < 1e-6
    # where both faces cover fully, the two are shared and the original does not show through
    alpha = feathered_alpha(align.face_mask(size), DEFAULT_FEATHER * size)
    cover = []
    for record in faces.faces:
        cover.append(cv2.warpAffine(alpha, record.transform, (400, 300), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    both = (cover[0] > 0.999) & (cover[1] > 0.999)
    assert both.sum() > 100
    assert np.allclose(out[both], [0.5, 0.0, 0.5], atol=1e-3)
    none = (cover[0] == 0) & (cover[1] == 0)
    assert np.array_equal(out[none], image[none])


def test_face_at_the_image_border(astro):
    rgb, found = astro
    _, five, _ = found[0]
    # cut the photo so the face's left part lies outside it (its left eye is 20 px from the edge)
    left = int(five[0, 0]) - 20
    cut = to_float(rgb[:, left:])
    shifted = five - np.array([left, 0])
    assert shifted[:, 0].min() < 30
    out, cov, fig = _roundtrip(cut, [Detection(np.array([0, 0, 1, 1.0]), shifted, 1.0)], 512)
    record_figures("face_at_border", fig)
    assert fig["outside_bit_exact"] and fig["in_mask_mean_abs"] < 0.01
    assert cov[:, 0].max() > 0.99  # the face region reaches the border and is pasted up to it


def test_grey_and_rgba_photos(t1):
    rgb, found = t1
    image = to_float(rgb)
    grey = (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    rng = np.random.default_rng(1)
    rgba = np.concatenate([image, rng.uniform(0, 1, size=image.shape[:2] + (1,)).astype(np.float32)], axis=2)
    for photo in (grey, rgba):
        faces, crops, _ = pipeline.align_detections([photo], [detections(found)], crop_size=256)
        assert crops.shape == (6, 256, 256, 3)
        outs, coverage, _ = pipeline.paste_back([photo], 1.0 - crops, faces)
        out, cov = outs[0], coverage[0]
        assert out.shape == photo.shape and out.dtype == np.float32
        assert np.array_equal(out[cov == 0], photo[cov == 0])
        assert np.abs(out[cov > 0.99] - photo[cov > 0.99]).mean() > 0.2
        if photo.shape[2] == 4:
            assert np.array_equal(out[..., 3], photo[..., 3])  # alpha untouched everywhere
    with pytest.raises(ValueError, match="2 channels"):
        pipeline.align_detections([np.zeros((50, 50, 2), np.float32)], [[]], crop_size=256)
