"""Face tracks over the frames of a clip (revpers_core.faces.tracks, Detect and Track Faces): one track id
per person, faces the detector misses between two sightings interpolated and anonymized, long gaps
reported, frames without a face unchanged, one identity per track at the model. Marker faces seen by
the stand-in detector for the clip; a pan over a real group photo tracked with dlib's real detector and
descriptor for the real-face case."""
import numpy as np
import pytest
import torch

from faces_fixtures import dlib_faces, insightface_image, marker_photo, save_rgb, to_float, write_standin_pack
from revpers_core.faces import analysis, audit, pipeline, tracks
from revpers_core.faces.records import Detection

AREA = "tracks"
RADIUS = 45
FRAMES = 25  # frames 0..23 show people, frame 24 nobody
C_FRAME, C_PLACE = 17, (880, 480)
HIDDEN_WITHIN = 200  # B is behind A (not drawn) while they are this close (the stand-in detector, like a
                     # real one in a crowd, loses both faces when two discs share its window)
MAX_GAP = 16


def positions(t):
    """Where the two people of the crossing clip are in frame t: both walk right, A from the top down, B
    from the bottom up; where they cross, B is behind A (not drawn) while their discs would touch."""
    w = t / 23.0
    a = (150 + 660 * w, 100 + 340 * w)
    b = (170 + 660 * w, 440 - 340 * w)
    return a, b


def crossing_clip():
    """Frames (RGB uint8) and, per frame, the people drawn: {name: centre}. A is also missed in frame 3
    (not drawn: motion blur); C is seen in one frame only; the last frame shows nobody."""
    frames, truth = [], []
    for t in range(FRAMES):
        people = {}
        if t < FRAMES - 1:
            a, b = positions(t)
            if t != 3:
                people["A"] = (a, RADIUS, 11)
            if abs(a[1] - b[1]) > HIDDEN_WITHIN:
                people["B"] = (b, RADIUS, 22)
            if t == C_FRAME:
                people["C"] = (C_PLACE, 40, 33)
        frames.append(marker_photo(faces=list(people.values()), seed=t))
        truth.append({n: c for n, (c, _, _) in people.items()})
    return frames, truth


@pytest.fixture(scope="module")
def analyser(tmp_path_factory):
    folder = write_standin_pack(tmp_path_factory.mktemp("insightface_root") / "models" / "buffalo_l")
    return analysis.load_analyser(str(folder), provider="CPU", det_size=640)


@pytest.fixture(scope="module")
def clip(analyser):
    frames, truth = crossing_clip()
    images = [to_float(f) for f in frames]
    faces, crops, masks = pipeline.detect_and_align(analyser, images, crop_size=128,
                                                    on_no_face=pipeline.FRAME_UNCHANGED,
                                                    tracking=tracks.TrackSettings(max_gap=MAX_GAP))
    return {"frames": frames, "images": images, "truth": truth, "faces": faces, "crops": crops}


def who(record):
    """The person of the clip whose true centre is nearest to a face record's box centre (and the distance)."""
    cx, cy = (record.box[0] + record.box[2]) / 2, (record.box[1] + record.box[3]) / 2
    a, b = positions(record.image_index)
    places = {"A": a, "B": b, "C": C_PLACE}
    name = min(places, key=lambda n: np.hypot(places[n][0] - cx, places[n][1] - cy))
    return name, float(np.hypot(places[name][0] - cx, places[name][1] - cy))


def test_crossing_people_keep_their_tracks_and_missed_faces_are_interpolated(clip):
    faces, truth = clip["faces"], clip["truth"]
    last = FRAMES - 1
    hidden_b = [t for t in range(last) if "B" not in truth[t]]
    assert 8 <= len(hidden_b) <= MAX_GAP, "the clip must hide B behind A where they cross"
    track_of, filled = {}, set()
    for f in faces.faces:
        name, off = who(f)
        assert off < 6, f"frame {f.image_index}: face at {f.box} is {off:.1f} px from {name}"
        track_of.setdefault(name, set()).add(f.track)
        if f.interpolated:
            filled.add((name, f.image_index))
            assert f.score == 0.0
    # one track per person, over the whole clip, through the crossing
    assert track_of == {"A": {0}, "B": {1}, "C": {2}}  # ids by first sighting, then reading order
    # A missed in frame 3 and B while hidden behind A: present, interpolated, reported
    assert filled == {("A", 3)} | {("B", t) for t in hidden_b}
    counts = [len(faces.faces_of(t)) for t in range(FRAMES)]
    assert counts == [3 if t == C_FRAME else 2 for t in range(last)] + [0]  # C: its single frame only
    assert faces.unchanged.keys() == {last} and not faces.passed_through and not faces.track_notes
    warning = faces.warning()
    assert f"{1 + len(hidden_b)} face(s) the detector missed were interpolated" in warning
    assert f"frame(s) without a face detected passed through unchanged: {last}" in warning


def test_paste_back_keeps_every_frame_and_the_faceless_one_unchanged(clip, analyser):
    faces = clip["faces"]
    crops = np.ascontiguousarray(clip["crops"][:, ::-1])  # any edit of the crops will do for the plumbing
    outs, coverage, _ = pipeline.paste_back(clip["images"], crops, faces)
    assert len(outs) == FRAMES
    assert np.array_equal(outs[-1], clip["images"][-1]) and not coverage[-1].any()
    for t in range(FRAMES - 1):
        assert coverage[t].max() > 0.99, f"frame {t} has a face that was not pasted over"
    strip = np.concatenate([np.round(o[::3, ::3] * 255).astype(np.uint8) for o in outs[6:18:2]], axis=1)
    save_rgb(AREA, "crossing_clip_pasted.png", strip)


def test_audit_reports_the_interpolated_faces(clip, analyser):
    """Each face replaced by a marker face of another pattern (an outsider), pasted back: the audit of the
    saved frames passes and names the faces tracking interpolated."""
    from revpers_cli.standins.buffalo_l import draw_marker_face

    faces = clip["faces"]
    size = clip["crops"].shape[1]
    outsiders = []
    for k, f in enumerate(faces.faces):
        crop = np.full((size, size, 3), 100, np.uint8)
        landmarks = f.crop_landmarks()
        centre = landmarks.mean(0)
        draw_marker_face(crop, centre, size * 0.3, seed=1000 + k)
        outsiders.append(crop.astype(np.float32) / 255)
    outs, _, _ = pipeline.paste_back(clip["images"], np.stack(outsiders), faces)
    auditor = audit.make_auditor(analyser, 0.3, 0.6, second="off")
    report = audit.audit(auditor, clip["images"], outs, faces)
    interpolated = [f for f in report.faces if "interpolated" in f.status]
    assert len(interpolated) == sum(f.interpolated for f in faces.faces) > 0
    assert report.passed, report.text()
    assert "interpolated along track 0" in report.text()


def test_a_long_gap_is_reported_not_guessed_and_the_person_found_again(analyser):
    """Hidden for 6 frames with max_gap 3: no face is made up there, the warning names the frames, and the
    same person seen again continues the track (by ArcFace similarity; the box is far from where the
    track was expected)."""
    frames = []
    for t in range(10):
        faces = [((700, 300), 50, 7)]  # a second person, still
        if t < 2 or t > 7:
            faces.append(((150 + 40 * t, 200), 50, 5))
        frames.append(to_float(marker_photo(faces=faces, seed=t)))
    # the stand-in recognizer sees the background in the crop too: a marker face that moved scores 0.2-0.5
    # with itself, two different ones below 0.1
    faces, _, _ = pipeline.detect_and_align(analyser, frames, crop_size=128,
                                            tracking=tracks.TrackSettings(3, min_similarity=0.15))
    moving = [f for f in faces.faces if f.box[0] < 600]
    assert [f.image_index for f in moving] == [0, 1, 8, 9]
    assert {f.track for f in moving} == {0} and not any(f.interpolated for f in faces.faces)
    assert faces.track_notes == [
        "track 0 was not detected in frames 2-7 (6 frames, more than max_gap 3): those frames were NOT "
        "interpolated; any face of it there is left to the audit"]
    assert "WARNING: track 0 was not detected in frames 2-7" in faces.warning()


def test_frames_mode_needs_tracking_and_a_clip_without_faces_stops(analyser):
    empty = [to_float(marker_photo(faces=[], seed=s)) for s in range(3)]
    with pytest.raises(ValueError, match="for the frames of a clip"):
        pipeline.detect_and_align(analyser, empty, crop_size=128, on_no_face=pipeline.FRAME_UNCHANGED)
    with pytest.raises(ValueError, match="no face in any of the 3 frame"):
        pipeline.detect_and_align(analyser, empty, crop_size=128, on_no_face=pipeline.FRAME_UNCHANGED,
                                  tracking=tracks.TrackSettings())
    with pytest.raises(ValueError, match="max_gap -1 is out of range"):
        tracks.TrackSettings(max_gap=-1)


def test_one_identity_per_track(clip, analyser):
    faces = clip["faces"]
    per_track = pipeline.embed_aligned(analyser, clip["crops"], faces, "per track")
    per_face = pipeline.embed_aligned(analyser, clip["crops"], faces, "per face")
    ids = np.array([f.track for f in faces.faces])
    for track in set(ids):
        rows = per_track[ids == track]
        assert np.array_equal(rows, np.repeat(rows[:1], len(rows), axis=0))
        assert abs(np.linalg.norm(rows[0]) - 1) < 1e-5
        sighted = [i for i, f in enumerate(faces.faces) if f.track == track and not f.interpolated]
        mean = per_face[sighted].mean(0)
        assert np.allclose(rows[0], mean / np.linalg.norm(mean), atol=1e-6)
    assert not np.allclose(per_track[ids == 0][0], per_track[ids == 1][0], atol=0.1)
    assert not np.array_equal(per_face[ids == 0][0], per_face[ids == 0][1])  # frames differ on their own


def test_the_model_receives_one_identity_and_modulation_per_person(comfy_inprocess, tiny_sdxl):
    """At the model: a clip's face rows of one person carry identical identity tokens (and so one
    modulation) on the conditional branch in every sampling call; different people differ."""
    import oracle_model as om

    pack = comfy_inprocess
    rng = np.random.default_rng(3)
    base_rows = rng.normal(size=(2, 512)).astype(np.float32)
    per_face = np.concatenate([base_rows[[0, 0, 1, 0]] + 0.05 * rng.normal(size=(4, 512)).astype(np.float32)])
    per_face /= np.linalg.norm(per_face, axis=1, keepdims=True)
    track_ids, interpolated = [0, 0, 1, 0], [False, True, False, False]
    rows = tracks.track_identities(per_face, track_ids, interpolated)
    embedding = pack.nodes.modulation.RevPersModulateIdentity.execute(
        torch.from_numpy(rows), 30.0, False, 1.0, 5)[0]
    with torch.inference_mode():
        model = tiny_sdxl["node"].execute(tiny_sdxl["base"], tiny_sdxl["adapter"], 1.0, embedding)[0]
    identity = pack.nodes._identity_attention.identity_of(model)
    seen = []
    real_keys_values = identity.keys_values

    def recording(block, conditional, rows_per_branch, device, dtype, window=None):
        keys, values = real_keys_values(block, conditional, rows_per_branch, device, dtype, window)
        seen.append((list(conditional), keys.detach().clone()))
        return keys, values

    identity.keys_values = recording
    x = om.latent("default")["samples"]
    latents = torch.cat([x, x.flip(-1), x.roll(3, -2), x.roll(5, -1)])
    pos, neg = om.conditioning("default", "generation")
    with torch.inference_mode():
        inv_model = tiny_sdxl["inversion"]
        ipos, ineg = om.conditioning("default", "inversion")
        record, _ = pack.nodes.inversion.RevPersInvert.execute(inv_model, {"samples": latents}, ipos, ineg,
                                                               -10.0, 4, 0.5, 0)
        pack.nodes.sampler.RevPersAnonymizedSampler.execute(model, pos, neg, record, -10.0, False, 1024)
    assert seen, "the identity attention was never called"
    for branches, keys in seen:
        for conditional, part in zip(branches, keys.chunk(len(branches))):
            if not conditional:  # the unconditional branch carries the null identity
                continue
            assert torch.equal(part[0], part[1]) and torch.equal(part[0], part[3])  # person 0, frames 0, 1, 3
            assert not torch.allclose(part[0], part[2])                              # person 1


def test_pan_over_a_real_group_photo_keeps_track_ids(tmp_path):
    """Crops sliding across InsightFace's t1.jpg, tracked with dlib's real HOG detector, 68-point model
    and 128-d descriptor: every person keeps one track id while the window pans over them."""
    from revpers_core.faces import recognizers

    if not recognizers.dlib_available():
        pytest.skip("dlib is not installed")
    photo = insightface_image("t1.jpg")
    height, width = photo.shape[:2]
    win_w, step, count = 760, 32, 12
    frames = [np.ascontiguousarray(photo[:, x:x + win_w]) for x in range(0, step * count, step)]
    descriptor = recognizers.Dlib()
    detections, embeddings = [], []
    for frame in frames:
        found = [Detection(box, five, score) for box, five, score in dlib_faces(frame)]
        detections.append(found)
        d = descriptor.descriptors(to_float(frame), found) if found else np.zeros((0, 128))
        embeddings.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9))
    ids = tracks.link(detections, embeddings, tracks.TrackSettings(max_gap=2, min_similarity=0.9))
    by_person = {}
    for t, (found, frame_ids) in enumerate(zip(detections, ids)):
        offset = t * step
        for det, track in zip(found, frame_ids):
            x = round((det.box[0] + det.box[2]) / 2 + offset)  # the person's place in the whole photo
            person = min(by_person, key=lambda p: abs(p - x), default=None)
            if person is None or abs(person - x) > 40:
                by_person[x] = set()
                person = x
            by_person[person].add(track)
    assert len(by_person) >= 4, f"dlib found {len(by_person)} people in the pan"
    assert all(len(t) == 1 for t in by_person.values()), by_person
    assert len({next(iter(t)) for t in by_person.values()}) == len(by_person)
    import cv2

    drawn = []
    for t in (0, count // 2, count - 1):
        frame = frames[t].copy()
        for det, track in zip(detections[t], ids[t]):
            x1, y1, x2, y2 = (int(v) for v in det.box)
            cv2.rectangle(frame, (x1, y1), (x2, y2), (255, 0, 255), 2)
            cv2.putText(frame, f"track {track}", (x1, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        (255, 0, 255), 2)
        drawn.append(frame[:, :, :])
    save_rgb(AREA, "pan_tracks.png", np.concatenate(drawn, axis=1))
