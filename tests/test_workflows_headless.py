"""The shipped API workflows, posted headless to a real ComfyUI server with stand-in weights.

Each workflow is loaded from workflows/api/ and posted with only these changes:
  * the LoadImage image (an uploaded marker-face picture: the stand-in detector sees nothing else)
    and the checkpoint file name (the stand-in's; the adapter and buffalo_l keep their real names);
  * on a CPU (the default, and CI), for the time budget: RevPersInvert.steps = STEPS instead of 100,
    and in the photo and video workflows RevPersDetectAlign/DetectTrack.crop_size = CROP instead of 1024, except in
    test_aligned_face_workflow_runs_unchanged, which posts the aligned-face workflow with its 100
    steps (a 64x64 face: ~15 minutes here). Measured on the 2-core CI machine with the full-size
    SDXL stand-in in bf16 (as the quick start runs it): ~4-10 s per step at 64 px (two UNet calls:
    ComfyUI casts all 2.6 B UNet weights to float32 on every call on a CPU); 1024 px crops are far
    beyond a CPU.
  * with REVPERS_TEST_GPU=1 on a CUDA machine (see standin_models.ON_GPU), nothing else: every
    workflow is posted with its shipped steps and crop size (checked against the shipped file).

Covered: every workflow runs to completion and returns an image of the input's size; the same seed
twice (the same picture uploaded under another name, so nothing is cached away) gives identical
pixels (the workflows encode with the pack's VAE Encode (mode): the 2024 host's own VAEEncode draws
from the VAE posterior with an unseeded RNG); bad inputs
give readable execution errors (or the validation message) and the server then runs a good prompt; a change of guidance or attribute text re-runs only the sampler and what follows
it (from the websocket's execution_cached/executing events); 20 prompts queued back to back all
complete with their outputs.
"""
import json
import time
import uuid

import numpy as np
import pytest

from harness import PromptRejected
from paths import artifact_dir
from standin_models import (FACEID_SD15, ON_GPU, _sdxl_server_module, cached_nodes, decode, executed_nodes,  # noqa: F401
                            load_workflow, marker_picture, background, nodes_of, only, output_images, png_bytes,
                            sdxl_server, standin_buffalo, standin_sd15_adapter, standin_sdxl, with_inputs)

pytestmark = pytest.mark.server

SHIPPED_STEPS, SHIPPED_CROP = 100, 1024
STEPS = SHIPPED_STEPS if ON_GPU else 3
CROP = SHIPPED_CROP if ON_GPU else 64  # photo workflows
TIMEOUT = 1800

PHOTO_FACES = [((70, 80), 28, 11), ((170, 76), 24, 22)]
PHOTO_SIZE = (240, 160)
ALIGNED_FACE = [((32, 33), 22, 5)]

FIGURES = {}
_say = [print]


@pytest.fixture(autouse=True)
def _terminal(request):
    """Figures go straight to the terminal (also without -s), and to artifacts/workflows/figures.json."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line):
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    _say[0] = say
    yield


def record(name, **figures):
    FIGURES[name] = figures
    path = artifact_dir("workflows") / "figures.json"
    path.write_text(json.dumps(FIGURES, indent=1, default=str))
    _say[0](f"\n[workflows] {name}: {json.dumps(figures, default=str)}")


def upload(server, rgb_or_bytes, stem):
    data = rgb_or_bytes if isinstance(rgb_or_bytes, bytes) else png_bytes(rgb_or_bytes)
    return server.upload_image(data, f"{stem}-{uuid.uuid4().hex[:8]}.png")


def prepared(name, image, checkpoint, **extra):
    """A shipped workflow with only the input image, the checkpoint name and the CPU-budget settings
    changed (see the module docstring); `extra` = {class_type: {input: value}} on top."""
    graph = load_workflow(name)
    graph = with_inputs(graph, "LoadImage", image=image)
    graph = with_inputs(graph, "CheckpointLoaderSimple", ckpt_name=checkpoint)
    graph = with_inputs(graph, "RevPersInvert", steps=STEPS)
    for detector in ("RevPersDetectAlign", "RevPersDetectTrack"):
        if nodes_of(graph, detector):
            graph = with_inputs(graph, detector, crop_size=CROP)
    if ON_GPU:  # posted as shipped: only the picture and the checkpoint name differ
        assert changed_inputs(load_workflow(name), graph) == {"LoadImage.image", "CheckpointLoaderSimple.ckpt_name"}
    for class_type, values in extra.items():
        graph = with_inputs(graph, class_type, **values)
    return graph


def changed_inputs(shipped, posted):
    """'ClassType.input' for every literal input of `posted` that differs from `shipped`."""
    assert shipped.keys() == posted.keys()
    return {f"{node['class_type']}.{key}" for nid, node in posted.items()
            for key, value in node["inputs"].items() if shipped[nid]["inputs"].get(key) != value}


def server_device(server):
    """The name of the device the server computes on, as its /system_stats reports it."""
    return server.system_stats()["devices"][0]["name"]


def timed_run(server, graph):
    t0 = time.monotonic()
    result = server.run(graph, timeout=TIMEOUT)
    return result, round(time.monotonic() - t0, 1)


def the_output(server, result, graph):
    (image,) = output_images(server, result, only(graph, "RevPersSave"))
    return image


def check_node(graph):
    """The photo workflows end in the audit of the saved photo; the aligned-face one in the crop check."""
    audits = [nid for nid, node in graph.items() if node["class_type"] == "RevPersAudit"]
    return audits[0] if audits else only(graph, "RevPersAnonymityCheck")


def check_text(result, graph):
    return result.outputs[check_node(graph)]["text"][0]


# --- each workflow runs, right size, same seed -> same pixels ------------------------------------

def test_aligned_face_workflow_runs_unchanged(sdxl_server, standin_sdxl):
    face = marker_picture(64, 64, ALIGNED_FACE, seed=1)
    graph = load_workflow("anonymize_aligned_face")
    graph = with_inputs(graph, "LoadImage", image=upload(sdxl_server, face, "aligned"))
    graph = with_inputs(graph, "CheckpointLoaderSimple", ckpt_name=standin_sdxl["checkpoint"])
    assert graph[only(graph, "RevPersInvert")]["inputs"]["steps"] == 100  # the paper's setting, as shipped

    result, seconds = timed_run(sdxl_server, graph)
    assert result.status == "success", result.message
    image = the_output(sdxl_server, result, graph)
    assert image.shape == face.shape
    assert np.abs(image.astype(int) - face.astype(int)).mean() > 5  # not handed through
    # the check measured the face (at the input's landmarks: the random-weight output has no face a
    # detector would find) and found it below the threshold
    text = check_text(result, graph)
    assert "face 0: " in text and "NOT MEASURED" not in text and "below the threshold" in text
    progress = [d for kind, d in result.events if kind == "progress" and d.get("node") == only(graph, "RevPersInvert")]
    assert progress and progress[-1]["max"] == 100

    from PIL import Image
    Image.fromarray(np.concatenate([face, image], axis=1)).save(artifact_dir("workflows") / "aligned_face.png")
    record("aligned_face_unchanged", device=server_device(sdxl_server), steps=100, size=list(face.shape),
           seconds=seconds, check=text)


def test_photo_workflow_runs_and_reuses_on_guidance_change(sdxl_server, standin_sdxl):
    width, height = PHOTO_SIZE
    photo = marker_picture(width, height, PHOTO_FACES, seed=2)
    graph = prepared("anonymize_photo", upload(sdxl_server, photo, "photo"), standin_sdxl["checkpoint"])
    sampler, invert = only(graph, "RevPersAnonymizedSampler"), only(graph, "RevPersInvert")
    detect, embed = only(graph, "RevPersDetectAlign"), only(graph, "RevPersArcFaceEmbedding")
    encode = only(graph, "RevPersVAEEncode")

    first, t_first = timed_run(sdxl_server, graph)
    assert first.status == "success", first.message
    image = the_output(sdxl_server, first, graph)
    assert image.shape == photo.shape
    text = check_text(first, graph)
    assert "face 0 (image 0," in text and "face 1 (image 0," in text and "face 2" not in text
    assert "RESULT: passed" in text

    # only the sampler's guidance changed: detection, ArcFace, VAE encode and inversion come from
    # the cache; the sampler and everything after it run again
    guided = json.loads(json.dumps(graph))
    guided[sampler]["inputs"]["guidance"] = -6.0
    reuse, t_reuse = timed_run(sdxl_server, guided)
    assert reuse.status == "success", reuse.message
    cached, ran = cached_nodes(reuse), executed_nodes(reuse)
    assert {detect, embed, encode, invert} <= set(cached), cached
    assert not {detect, embed, encode, invert} & set(ran), ran
    after = {sampler, only(graph, "VAEDecode"), only(graph, "RevPersPasteBack"),
             check_node(graph), only(graph, "RevPersSave")}
    assert set(ran) == after, ran
    changed = the_output(sdxl_server, reuse, graph)
    assert changed.shape == photo.shape and not np.array_equal(changed, image)

    from PIL import Image
    Image.fromarray(np.concatenate([photo, image, changed], axis=1)).save(artifact_dir("workflows") / "photo.png")
    record("photo", device=server_device(sdxl_server), steps=STEPS, crop=CROP, faces=len(PHOTO_FACES),
           changed=sorted(changed_inputs(load_workflow("anonymize_photo"), graph)), size=list(photo.shape), first_s=t_first,
           guidance_only_s=t_reuse, cached=cached, ran=ran, check=text)


def webp_frames(frames, fps=8):
    """Frames (RGB uint8) -> a lossless animated WebP (what LoadImage reads as one IMAGE batch)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(buf, format="WEBP", save_all=True, append_images=pictures[1:], lossless=True,
                     duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def read_webp_frames(data):
    import io

    from PIL import Image, ImageSequence
    with Image.open(io.BytesIO(data)) as im:
        return [np.array(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def test_video_workflow_keeps_every_frame_and_anonymizes_the_missed_face(sdxl_server, standin_sdxl):
    """A five-frame clip (animated WebP) of two walking marker faces: B is hidden in frame 2, nobody is in
    frame 4. The shipped video workflow saves five frames, the faceless one unchanged, and its audit names
    B's face in frame 2 as interpolated along B's track and anonymized."""
    width, height = PHOTO_SIZE
    clip = []
    for t in range(5):
        faces = [] if t == 4 else [((55 + 8 * t, 80), 26, 11)] + ([] if t == 2 else [((185 - 8 * t, 76), 24, 22)])
        clip.append(marker_picture(width, height, faces, seed=t))
    name = sdxl_server.upload_image(webp_frames(clip), f"clip-{uuid.uuid4().hex[:8]}.webp")
    graph = prepared("anonymize_video", name, standin_sdxl["checkpoint"],
                     RevPersSave={"lossless": True})  # lossless, to compare the faceless frame exactly
    result, seconds = timed_run(sdxl_server, graph)
    assert result.status == "success", result.message
    (saved,) = result.images(only(graph, "RevPersSave"))
    frames = read_webp_frames(sdxl_server.view(saved["filename"], saved.get("subfolder", ""), saved.get("type", "output")))
    assert len(frames) == 5 and all(f.shape == clip[0].shape for f in frames)
    assert np.array_equal(frames[4], clip[4])
    for t in range(4):
        assert not np.array_equal(frames[t], clip[t])
    text = check_text(result, graph)
    interpolated = [line for line in text.splitlines() if "interpolated along track" in line]
    assert len(interpolated) == 1 and "image 2," in interpolated[0] and "track 1" in interpolated[0], text
    assert "RESULT: passed" in text
    from PIL import Image
    Image.fromarray(np.concatenate([np.concatenate(clip, axis=1), np.concatenate(frames, axis=1)])).save(
        artifact_dir("workflows") / "video.png")
    record("video", device=server_device(sdxl_server), steps=STEPS, crop=CROP, frames=5, faces=8, seconds=seconds,
           changed=sorted(changed_inputs(load_workflow("anonymize_video"), graph)), check=text)


def vae_encode_spread(server, checkpoint, rgb, node):
    """Encode the same picture twice with an encode node (LoadImage -> node -> SaveLatent, the picture
    under two names so nothing is cached) and return the largest difference of the two latents: 0
    where the node takes the posterior's mode, > 0 where it draws a sample."""
    import safetensors.torch

    latents = []
    for tag in ("a", "b"):
        graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
                 "2": {"class_type": "LoadImage", "inputs": {"image": upload(server, rgb, f"vae-{node}-{tag}")}},
                 "3": {"class_type": node, "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
                 "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "revpers_vae"}}}
        result = server.run(graph, timeout=TIMEOUT)
        assert result.status == "success", result.message
        (saved,) = result.outputs["4"]["latents"]
        data = server.view(saved["filename"], saved.get("subfolder", ""), saved.get("type", "output"))
        latents.append(safetensors.torch.load(data)["latent_tensor"])
    return float((latents[0] - latents[1]).abs().max())


@pytest.mark.parametrize("name", ["anonymize_aligned_face", "anonymize_photo"])
def test_same_seed_twice_gives_the_identical_image(sdxl_server, standin_sdxl, name):
    """The same picture (uploaded under two names, so the second run is not served from the cache)
    with the same seed gives the same pixels, byte for byte."""
    if name == "anonymize_aligned_face":
        rgb = marker_picture(64, 64, ALIGNED_FACE, seed=6)
    else:
        rgb = marker_picture(*PHOTO_SIZE, PHOTO_FACES, seed=6)
    images, ran, seconds = [], [], []
    for tag in ("first", "second"):
        graph = prepared(name, upload(sdxl_server, rgb, f"same-seed-{tag}"), standin_sdxl["checkpoint"])
        result, t_run = timed_run(sdxl_server, graph)
        assert result.status == "success", result.message
        images.append(the_output(sdxl_server, result, graph))
        ran.append(set(executed_nodes(result)))
        seconds.append(t_run)
    steps = graph[only(graph, "RevPersInvert")]["inputs"]["steps"]
    record(f"same_seed/{name}", device=server_device(sdxl_server), steps=steps, seconds=seconds,
           changed=sorted(changed_inputs(load_workflow(name), graph)),
           identical=bool(np.array_equal(images[0], images[1])))
    assert {only(graph, "RevPersInvert"), only(graph, "RevPersAnonymizedSampler")} <= ran[1]  # really re-run
    assert images[0].shape == rgb.shape
    changed = float((images[0] != images[1]).any(axis=2).mean())
    assert np.array_equal(images[0], images[1]), f"{changed:.1%} of the pixels differ between two same-seed runs"


def test_pack_vae_encode_is_deterministic_where_the_host_one_is_not(sdxl_server, standin_sdxl):
    rgb = marker_picture(64, 64, ALIGNED_FACE, seed=8)
    ours = vae_encode_spread(sdxl_server, standin_sdxl["checkpoint"], rgb, "RevPersVAEEncode")
    hosts = vae_encode_spread(sdxl_server, standin_sdxl["checkpoint"], rgb, "VAEEncode")
    record("vae_encode_spread", revpers=ours, host=hosts)
    print(f"\nlargest latent difference, same picture encoded twice: RevPersVAEEncode {ours}, host VAEEncode {hosts}")
    assert ours == 0.0


@pytest.mark.parametrize("name", [
    "anonymize_photo",
    "anonymize_photo_attribute",
])
def test_attribute_text_change_reruns_only_the_sampler(sdxl_server, standin_sdxl, name):
    width, height = PHOTO_SIZE
    photo = marker_picture(width, height, PHOTO_FACES, seed=3)
    graph = prepared(name, upload(sdxl_server, photo, name), standin_sdxl["checkpoint"])
    sampler, invert = only(graph, "RevPersAnonymizedSampler"), only(graph, "RevPersInvert")
    detect, embed = only(graph, "RevPersDetectAlign"), only(graph, "RevPersArcFaceEmbedding")

    first, t_first = timed_run(sdxl_server, graph)
    assert first.status == "success", first.message
    image = the_output(sdxl_server, first, graph)
    assert image.shape == photo.shape

    attribute = graph[sampler]["inputs"]["attribute"][0]  # the Attribute Text the sampler reads
    assert graph[attribute]["class_type"] == "RevPersAttributeText"
    texted = json.loads(json.dumps(graph))
    texted[attribute]["inputs"]["text"] = "a young woman with red hair"
    reuse, t_reuse = timed_run(sdxl_server, texted)
    assert reuse.status == "success", reuse.message
    cached, ran = cached_nodes(reuse), executed_nodes(reuse)
    record(f"attribute_change/{name}", device=server_device(sdxl_server), steps=STEPS, crop=CROP,
           changed=sorted(changed_inputs(load_workflow(name), graph)), first_s=t_first, attribute_only_s=t_reuse, cached=cached, ran=ran)
    assert sampler in ran and attribute in ran
    assert {detect, embed, invert} <= set(cached), f"not cached: {sorted({detect, embed, invert} - set(cached))}"
    assert not {detect, embed, invert} & set(ran)
    assert not np.array_equal(the_output(sdxl_server, reuse, graph), image)


# --- bad inputs ----------------------------------------------------------------------------------

def test_bad_inputs_fail_readably_and_the_server_runs_on(sdxl_server, standin_sdxl, standin_sd15_adapter):
    width, height = PHOTO_SIZE
    ckpt = standin_sdxl["checkpoint"]
    good_photo = upload(sdxl_server, marker_picture(width, height, PHOTO_FACES, seed=4), "good")
    errors = {}

    def fails(graph, node_type, *phrases):
        result, seconds = timed_run(sdxl_server, graph)
        assert result.status == "error", f"expected {node_type} to fail"
        assert result.error["node_type"] == node_type, result.message
        message = result.error["exception_message"]
        for phrase in phrases:
            assert phrase in message, message
        assert "Traceback" not in message
        assert sdxl_server.alive()
        errors[node_type] = message.splitlines()[0][:300]
        return message

    # a photo without a face: the run stops at detection, nothing is saved
    no_face = upload(sdxl_server, background(width, height, seed=9), "no-face")
    fails(prepared("anonymize_photo", no_face, ckpt), "RevPersDetectAlign", "no face")

    # a file that is not a picture, uploaded as .png
    not_image = upload(sdxl_server, b"these are words, not pixels\n" * 20, "not-a-picture")
    fails(prepared("anonymize_photo", not_image, ckpt), "LoadImage", "cannot identify image file")

    # a checkpoint that is not there: refused before anything runs, with the name and the choices
    with pytest.raises(PromptRejected) as refused:
        sdxl_server.queue(prepared("anonymize_photo", good_photo, "revpers-no-such-checkpoint.safetensors"))
    assert refused.value.status == 400
    text = str(refused.value)
    assert "CheckpointLoaderSimple" in text and "revpers-no-such-checkpoint.safetensors" in text
    assert "not in" in text and ckpt in text
    errors["validation"] = text.splitlines()[0][:300]

    # an adapter file that vanished after the server listed it (a link whose target is gone)
    folder = sdxl_server.models_dir / "ipadapter"
    vanished = folder / "revpers-test-vanished_sdxl.bin"
    vanished.unlink(missing_ok=True)
    vanished.symlink_to(folder / "revpers-test-deleted-target.bin")
    try:
        assert vanished.name in sdxl_server.object_info("RevPersFaceIDAdapterLoader")[
            "RevPersFaceIDAdapterLoader"]["input"]["required"]["adapter_name"][1]["options"]
        fails(prepared("anonymize_photo", good_photo, ckpt,
                       RevPersFaceIDAdapterLoader={"adapter_name": vanished.name}),
              "RevPersFaceIDAdapterLoader", vanished.name, "models/ipadapter", "huggingface.co/h94/IP-Adapter-FaceID")
    finally:
        vanished.unlink(missing_ok=True)

    # the SD1.5 adapter on the SDXL checkpoint: the message names both
    fails(prepared("anonymize_photo", good_photo, ckpt, RevPersFaceIDAdapterLoader={"adapter_name": FACEID_SD15}),
          "RevPersIdentityConditioning", FACEID_SD15, "SDXL")

    # after all that, a good prompt runs through
    good_graph = prepared("anonymize_photo", good_photo, ckpt)
    good, t_good = timed_run(sdxl_server, good_graph)
    assert good.status == "success", good.message
    assert only(good_graph, "RevPersAnonymizedSampler") in executed_nodes(good)
    assert the_output(sdxl_server, good, good_graph).shape == (height, width, 3)
    record("bad_inputs", errors=errors, good_after_s=t_good)


# --- load ----------------------------------------------------------------------------------------

LOAD_PROMPTS = 20
LOAD_SIZE = (256, 128)


def load_graph(image, prefix):
    """The smallest graph that runs the pack's nodes end to end: detect and align the faces, invert
    the crops' colours (ComfyUI's ImageInvert), paste them back, save."""
    shipped = load_workflow("anonymize_photo")  # the pack nodes' settings as the main workflow has them
    detect = shipped[only(shipped, "RevPersDetectAlign")]
    loader = shipped[only(shipped, "RevPersFaceAnalysisLoader")]
    return {
        "1": {"class_type": "RevPersFaceAnalysisLoader", "inputs": dict(loader["inputs"])},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "RevPersDetectAlign",
              "inputs": {**detect["inputs"], "analysis": ["1", 0], "images": ["2", 0], "crop_size": 64}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "RevPersPasteBack",
              "inputs": {"images": ["2", 0], "crops": ["4", 0], "faces": ["3", 1], "feather": 0.05}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


def test_twenty_prompts_queued_back_to_back_all_complete(comfy_server, standin_buffalo):
    width, height = LOAD_SIZE
    pictures, faces, ids = [], [], []
    rng = np.random.default_rng(20)
    run_tag = uuid.uuid4().hex[:6]
    for i in range(LOAD_PROMPTS):
        centre = (int(rng.integers(40, width - 40)), int(rng.integers(40, height - 40)))
        face = (centre, 22, 100 + i)
        picture = marker_picture(width, height, [face], seed=100 + i)
        name = comfy_server.upload_image(png_bytes(picture), f"load-{run_tag}-{i:02d}.png")
        pictures.append(picture)
        faces.append(face)
        ids.append(name)
    comfy_server.connect()  # the websocket is open before the first prompt is queued: no event is missed
    t0 = time.monotonic()
    prompt_ids = [comfy_server.queue(load_graph(name, f"revpers_load/{run_tag}_{i:02d}")) for i, name in enumerate(ids)]
    t_queued = time.monotonic() - t0
    assert len(set(prompt_ids)) == LOAD_PROMPTS

    # The server runs them one after the other; following each in turn reads every event of every prompt
    # (those of later prompts wait on the socket for their turn).
    deadline = time.monotonic() + 600
    results = [comfy_server.follow(pid, timeout=max(1.0, deadline - time.monotonic())) for pid in prompt_ids]
    t_all = time.monotonic() - t0
    failed = {r.prompt_id: r.message for r in results if r.status != "success"}
    assert not failed, failed
    assert comfy_server.session.get(comfy_server.url + "/queue", timeout=30).json() == {
        "queue_running": [], "queue_pending": []}

    for i, result in enumerate(results):
        ran = executed_nodes(result)
        assert {"2", "3", "4", "5", "6"} <= set(ran), (i, ran)  # nothing cached away
        (saved,) = result.images("6")
        assert saved["filename"].startswith(f"{run_tag}_{i:02d}")
        out = decode(comfy_server.view(saved["filename"], saved["subfolder"], saved["type"]))
        assert out.shape == pictures[i].shape
        (cx, cy), r, _ = faces[i]
        ys, xs = np.mgrid[0:height, 0:width]
        far = (xs - cx) ** 2 + (ys - cy) ** 2 > (4 * r) ** 2
        diff = np.abs(out.astype(int) - pictures[i].astype(int)).max(axis=2)
        assert diff[far].max() <= 1  # outside the face, the photo is unchanged
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 < (0.5 * r) ** 2
        assert diff[disc].mean() > 60  # the face itself was replaced by the inverted crop
    record("load", prompts=LOAD_PROMPTS, queue_s=round(t_queued, 2), all_done_s=round(t_all, 1))
