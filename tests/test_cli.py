"""The `revpers` command: argument errors, the missing-model-files message (before any work), the
workflow knobs, and the whole client path (upload, queue, websocket progress, download, failure
messages) against the session's real ComfyUI server."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paths import REPO, artifact_dir
from revpers_cli import cli, examples, models, servers, workflow


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(path)
    return path


def write_workflow(tmp_path, graph, name="wf.json"):
    path = tmp_path / name
    path.write_text(json.dumps(graph))
    return path


INVERT = {  # a real graph of ComfyUI's own nodes: photo -> invert -> save
    "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "wf"}},
}


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    assert e.value.code == cli.EXIT_USAGE
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--skip", "1.5"], "--skip 1.5: skip must lie strictly between 0 and 1, from 0.01 to 0.99"),
    (["--skip", "1.0"], "--skip 1: skip must lie strictly between 0 and 1"),  # what the server refuses too
    (["--steps", "1"], "--steps 1: steps must be at least 2"),
    (["--steps", "1001"], "--steps 1001: steps must be at most 1000"),
    (["--seed", "-1"], "--seed -1: seed must be a whole number from 0 to"),
    (["--crop-size", "100"], "--crop-size 100: crop size 100 is not supported: use a multiple of 8 from 64"),
    (["--faces", "the big one"], "--faces 'the big one': use all, largest, or a number N"),
    (["--faces", "0,2"], "--faces '0,2': use all, largest, or a number N"),
    (["--on-fail", "redact", "--allow-unanonymized"], "--on-fail redact covers a face still recognizable"),
])
def test_bad_knobs_are_refused_with_the_reason(photo, tmp_path, capsys, extra, message):
    err = usage_error(["anonymize", photo, "-o", tmp_path / "out.png", *extra], capsys)
    assert message in err


def test_bad_photo_and_output_are_refused(photo, tmp_path, capsys):
    assert "the photo nope.jpg does not exist" in usage_error(["anonymize", "nope.jpg", "-o", "x.png"], capsys)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert "is not an image this tool can read" in usage_error(["anonymize", text, "-o", "x.png"], capsys)
    assert "must end in .png, .jpg" in usage_error(["anonymize", photo, "-o", tmp_path / "out.gif"], capsys)
    assert "is a folder" in usage_error(["anonymize", photo, "-o", tmp_path], capsys)
    assert "the following arguments are required: -o/--output" in usage_error(["anonymize", photo], capsys)


def test_missing_model_files_fail_before_any_work(photo, tmp_path, capsys):
    """No ComfyUI is started (the --comfyui folder has none: starting would be a different error),
    nothing is uploaded; the message names every missing file, its folder and its source."""
    fake_host = tmp_path / "ComfyUI"
    (fake_host / "models" / "checkpoints").mkdir(parents=True)
    (fake_host / "models" / "checkpoints" / "sd_xl_base_1.0.safetensors").write_bytes(b"")  # wrong size
    wf = write_workflow(tmp_path, {**INVERT, "4": {"class_type": "CheckpointLoaderSimple",
                                                   "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}})
    code, out, err = run(["anonymize", photo, "-o", tmp_path / "out.png", "--comfyui", fake_host,
                          "--workflow", wf, "--models", tmp_path / "models"], capsys)
    assert code == cli.EXIT_MISSING
    assert "7 model file(s) missing" in err
    assert "sd_xl_base_1.0.safetensors (0 bytes, expected 6938078334)" in err
    for e in models.REGISTRY:
        assert e.name in err and e.source.url in err
        folder = fake_host / "models" if e.folder == "checkpoints" else tmp_path / "models"
        assert f"folder: {folder / e.folder}\n" in err
    assert "revpers models" in err and "--standin-weights" in err
    assert not (tmp_path / "out.png").exists()


def test_own_checkpoint_is_checked_by_name(photo, tmp_path, capsys):
    code, out, err = run(["anonymize", photo, "-o", tmp_path / "out.png", "--comfyui", tmp_path / "none",
                          "--workflow", write_workflow(tmp_path, {**INVERT, "4": {
                              "class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}}),
                          "--checkpoint", "my_sdxl.safetensors"], capsys)
    assert code == cli.EXIT_MISSING
    assert "my_sdxl.safetensors" in err and "sd_xl_base_1.0.safetensors\n" not in err


def test_workflow_problems_are_named(photo, tmp_path, capsys):
    ui = write_workflow(tmp_path, {"nodes": [], "links": []}, "ui.json")
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--workflow", ui], capsys)
    assert code == cli.EXIT_USAGE and "is a UI-format workflow" in err
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--workflow", write_workflow(tmp_path, INVERT),
                        "--guidance", "-5", "--attribute", "an old man"], capsys)
    assert code == cli.EXIT_USAGE
    assert "--guidance (the workflow has no RevPersAnonymizedSampler.guidance or RevPersInvert.guidance)" in err
    assert "--attribute (the workflow has no RevPersAnonymizedSampler.attribute)" in err
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--workflow", tmp_path / "absent.json"], capsys)
    assert code == cli.EXIT_USAGE and "absent.json does not exist" in err


def test_the_hosts_extra_model_paths_are_read_and_a_broken_file_is_said(tmp_path, capsys):
    """extra_model_paths.yaml beside the host: its folders (relative to base_path, one per line)
    count as model folders; a file that is not YAML is said on stderr, and only the host's own
    models folder is used."""
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text("mine:\n  base_path: /data/models\n  ipadapter: |\n    ipadapter\n    more/ipadapter\n"
                         "  checkpoints: ckpt\nlocal:\n  base_path: shared\n  insightface: insightface\n")
    bases = servers.extra_model_folders(tmp_path)
    assert bases == {"ipadapter": [Path("/data/models/ipadapter"), Path("/data/models/more/ipadapter")],
                     "checkpoints": [Path("/data/models/ckpt")],
                     "insightface": [tmp_path / "shared" / "insightface"]}
    assert capsys.readouterr().err == ""
    yaml_file.write_text("mine: [unclosed\n")
    assert servers.extra_model_folders(tmp_path) == {}
    assert "extra_model_paths.yaml could not be read" in capsys.readouterr().err


def test_knobs_land_on_the_nodes_by_class_type():
    graph = {
        "1": {"class_type": "RevPersInvert", "inputs": {"skip": 0.7, "steps": 100, "seed": 0, "guidance": -10.0,
                                                        "model": ["9", 0]}},
        "2": {"class_type": "RevPersAnonymizedSampler", "inputs": {"guidance": -10.0, "inversion": ["1", 0],
                                                                   "attribute": ["4", 0]}},
        "3": {"class_type": "RevPersDetectAlign", "inputs": {"max_faces": 0, "crop_size": 1024}},
        "4": {"class_type": "RevPersAttributeText", "inputs": {"text": ""}},
        "7": {"class_type": "RevPersAttributeText", "inputs": {"text": ""}},  # the inversion's: stays empty
        "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "6": {"class_type": "RevPersInvert", "inputs": {"skip": 0.7, "steps": ["8", 0], "seed": 0}},
    }
    out = workflow.apply_knobs(graph, {"skip": 0.5, "steps": 20, "seed": 7, "guidance": -4.0, "faces": 2,
                                  "crop_size": 512, "attribute": "an old man", "checkpoint": "own.safetensors",
                                  "adapter": None})
    assert out["1"]["inputs"] == {"skip": 0.5, "steps": 20, "seed": 7, "guidance": -4.0, "model": ["9", 0]}
    assert out["6"]["inputs"] == {"skip": 0.5, "steps": ["8", 0], "seed": 7}  # a linked input stays linked
    assert out["2"]["inputs"]["guidance"] == -4.0
    assert out["3"]["inputs"] == {"max_faces": 2, "crop_size": 512}
    assert out["4"]["inputs"]["text"] == "an old man"
    assert out["7"]["inputs"]["text"] == ""
    assert out["5"]["inputs"]["ckpt_name"] == "own.safetensors"
    assert graph["1"]["inputs"]["skip"] == 0.7  # the workflow itself is not modified
    assert workflow.apply_knobs(graph, {"skip": None}) == graph


def test_files_are_looked_up_in_v1_and_v3_combo_specs():
    """The server's file lists as /object_info gives them: a V1 node's list, a V3 node's COMBO options
    (the pack's own loaders are V3 nodes)."""
    graph = {"1": {"class_type": "RevPersFaceIDAdapterLoader",
                   "inputs": {"adapter_name": "ip-adapter-faceid_sdxl.bin"}},
             "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
             "3": {"class_type": "RevPersFaceAnalysisLoader", "inputs": {"model_pack": "buffalo_l"}}}
    info = {"RevPersFaceIDAdapterLoader": {"input": {"required": {"adapter_name": ["COMBO", {"options": ["a.bin"]}]}}},
            "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["b.safetensors"], {}]}}},
            "RevPersFaceAnalysisLoader": {"input": {"required": {"model_pack": ["COMBO", {"options": ["buffalo_l"]}]}}}}
    unknown, missing = workflow.check_against_server(graph, info, models.REGISTRY)
    assert unknown == []
    assert sorted(m.name for m in missing) == ["ip-adapter-faceid_sdxl.bin", "sd_xl_base_1.0.safetensors"]
    assert workflow.combo_choices(["INT", {"default": 0}]) is None


def test_the_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "revpers_cli.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0 and "anonymize" in result.stdout and "models" in result.stdout
    assert "exit codes" in result.stdout


# --- against the real server ---------------------------------------------------------------------

def test_a_workflow_runs_through_the_server(comfy_server, photo, tmp_path, capsys):
    out = tmp_path / "inverted.png"
    code, stdout, err = run(["anonymize", photo, "-o", out, "--server", comfy_server.url,
                             "--workflow", write_workflow(tmp_path, INVERT)], capsys)
    assert code == cli.EXIT_OK, err
    assert f"wrote {out}" in stdout
    assert "running ImageInvert [2]" in err and "running SaveImage [3]" in err
    got = np.asarray(Image.open(out).convert("RGB")).astype(int)
    want = 255 - np.asarray(Image.open(photo).convert("RGB")).astype(int)
    assert np.abs(got - want).max() <= 1  # the server's inversion of exactly our photo
    shutil.copy(out, artifact_dir("cli") / "inverted_through_server.png")
    # a .jpg output is converted
    code, stdout, err = run(["anonymize", photo, "-o", tmp_path / "inv.jpg", "--server", comfy_server.url,
                             "--workflow", write_workflow(tmp_path, INVERT), "-q"], capsys)
    assert code == cli.EXIT_OK and Image.open(tmp_path / "inv.jpg").format == "JPEG"
    assert "running" not in err  # -q: no progress


def test_a_node_failure_exits_with_the_servers_message(comfy_server, photo, tmp_path, capsys):
    comfy_server.upload_image(b"this is not a png", name="broken-for-cli.png")
    graph = {**INVERT, "4": {"class_type": "LoadImageMask", "inputs": {"image": "broken-for-cli.png",
                                                                        "channel": "alpha"}},
             "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
             "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "m"}}}
    code, stdout, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--server", comfy_server.url,
                             "--workflow", write_workflow(tmp_path, graph)], capsys)
    assert code == cli.EXIT_FAILED
    assert "error: the run failed: LoadImageMask (node 4) failed with PIL.UnidentifiedImageError" in err
    assert "cannot identify image file" in err
    assert not (tmp_path / "o.png").exists()


def test_a_refused_graph_exits_with_the_validation_message(comfy_server, photo, tmp_path, capsys):
    graph = {**INVERT, "2": {"class_type": "ImageScale", "inputs": {
        "image": ["1", 0], "upscale_method": "nearest-exact", "width": 64, "height": 0, "crop": "sideways"}}}
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--server", comfy_server.url,
                        "--workflow", write_workflow(tmp_path, graph)], capsys)
    assert code == cli.EXIT_FAILED
    assert "the server refused the workflow" in err and "crop: 'sideways' not in ['disabled', 'center']" in err


def test_files_the_server_lacks_are_named_before_upload(comfy_server, photo, tmp_path, capsys):
    graph = {**INVERT, "4": {"class_type": "CheckpointLoaderSimple",
                             "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}}
    before = set(p.name for p in comfy_server.input_dir.iterdir()) if comfy_server.input_dir.exists() else set()
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--server", comfy_server.url,
                        "--workflow", write_workflow(tmp_path, graph)], capsys)
    assert code == cli.EXIT_MISSING
    assert "sd_xl_base_1.0.safetensors" in err and "the server's checkpoints/ folder" in err
    assert models.REGISTRY[0].source.url in err
    after = set(p.name for p in comfy_server.input_dir.iterdir()) if comfy_server.input_dir.exists() else set()
    assert after == before  # nothing was uploaded


def test_an_unreachable_server_is_reported(photo, tmp_path, capsys):
    from revpers_cli.host import free_port
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--server", f"http://127.0.0.1:{free_port()}",
                        "--workflow", write_workflow(tmp_path, INVERT)], capsys)
    assert code == cli.EXIT_SERVER and "cannot reach a ComfyUI server" in err


def test_the_anonymity_check_text_is_printed(comfy_server, tmp_path, capsys):
    """The pack's own check node (stand-in buffalo_l, a photo with a marker face compared with
    itself): the CLI prints the text of the node's `ui` output."""
    from revpers_cli import standins
    from revpers_cli.standins.buffalo_l import draw_marker_face

    standins.generate_buffalo(comfy_server.models_dir, seed=0, log=lambda s: None)
    picture = np.full((192, 192, 3), 90, np.uint8)
    draw_marker_face(picture, (96, 96), 60, seed=1)
    photo = tmp_path / "marker.png"
    Image.fromarray(picture).save(photo)
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "RevPersFaceAnalysisLoader", "inputs": {
            "model_pack": "buffalo_l", "provider": "auto", "det_size": 640, "det_thresh": 0.5}},
        "3": {"class_type": "RevPersAnonymityCheck", "inputs": {
            "analysis": ["2", 0], "anonymized": ["1", 0], "original": ["1", 0], "threshold": 0.3,
            "fail_if_recognizable": False}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 2], "filename_prefix": "chk"}},
    }
    argv = ["anonymize", photo, "-o", tmp_path / "o.png", "--server", comfy_server.url,
            "--workflow", write_workflow(tmp_path, graph)]
    # the face compared with itself fails the check: the CLI writes nothing, whatever the workflow says
    code, stdout, err = run(argv, capsys)
    assert code == cli.EXIT_FAILED and "nothing was written" in err and not (tmp_path / "o.png").exists()
    # unless asked to: written, loudly
    code, stdout, err = run(argv + ["--allow-unanonymized"], capsys)
    assert code == cli.EXIT_UNANONYMIZED, err
    assert "WARNING: the audit FAILED" in err
    text, _, tail = stdout.partition("anonymity check:\n")[2].partition("wrote ")
    assert tail.startswith(str(tmp_path / "o.png"))
    ui = comfy_server.history(list(comfy_server.history())[-1])["outputs"]["3"]["text"][0]
    assert text.strip() == ui.strip().replace("\n", "\n  ") and text.strip()
    print(text)


def test_standin_weights_run_on_a_local_host_it_starts_and_stops(photo, tmp_path, capsys):
    """--standin-weights: stand-ins are generated (reused from .host/test-models), a local ComfyUI is
    started with them as its models folder, the graph runs, the server is stopped, and the banner
    says the output is not an anonymization. The graph names the stand-in checkpoint and adapter
    (set by the CLI) in loaders that do not feed the output, so only the plumbing is exercised."""
    from revpers_cli.host import ComfyHost

    graph = {**INVERT,
             "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
             "5": {"class_type": "RevPersFaceIDAdapterLoader", "inputs": {"adapter_name": "x.bin"}}}
    wf = write_workflow(tmp_path, graph)
    started = []
    original_start = ComfyHost.start

    def spy(self):  # records the host, then really starts it
        started.append(self)
        return original_start(self)

    ComfyHost.start = spy
    try:
        code, stdout, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--workflow", wf,
                                 "--standin-weights", "--standin-arch", "sd15",
                                 "--models", REPO / ".host" / "test-models"], capsys)
    finally:
        ComfyHost.start = original_start
    assert code == cli.EXIT_OK, err
    assert err.count("STAND-IN WEIGHTS") == 2 and "NOT an anonymization" in err
    assert (tmp_path / "o.png").is_file()
    (host,) = started
    assert not host.running and host.models_dir == (REPO / ".host" / "test-models").resolve()
    assert "--cpu" in host.extra_args  # no CUDA here
    assert "--bf16-unet" in host.extra_args  # the stand-in setting for a CPU


def test_a_host_that_cannot_start_reports_its_log(tmp_path):
    from paths import HOST
    from revpers_cli.host import ComfyHost, HostError

    host = ComfyHost(HOST, extra_args=["--cpu", "--no-such-option"], startup_timeout=60)
    with pytest.raises(HostError) as e:
        host.start()
    message = str(e.value)
    assert "ComfyUI exited with code" in message and "--no-such-option" in message
    assert not host.running
    assert Path(host.log_path).is_file()  # kept for the user to read
    shutil.rmtree(Path(host.log_path).parent, ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="main.py is missing"):
        ComfyHost(tmp_path)


# --- the quick start's example photo and stand-in settings -------------------------------------

def test_example_or_photo_exactly_one(tmp_path, capsys, photo):
    assert "give a photo or --example group, not both" in usage_error(
        ["anonymize", photo, "--example", "group", "-o", tmp_path / "o.png"], capsys)
    assert "give the photo to anonymize (or --example group" in usage_error(
        ["anonymize", "-o", tmp_path / "o.png"], capsys)
    assert "invalid choice: 'nope'" in usage_error(["anonymize", "--example", "nope", "-o", tmp_path / "o.png"], capsys)


def test_example_group_marker_faces_sit_on_real_faces_and_are_what_the_standin_detector_finds(tmp_path):
    """With stand-in weights the example is InsightFace's group photo with marker faces drawn over three
    of its real faces (dlib finds the real ones); the stand-in buffalo_l finds exactly those three, and
    nothing in the plain photo, which is what real weights get."""
    import cv2
    from faces_fixtures import dlib_faces
    from revpers_core.faces.analysis import FaceAnalyser
    from revpers_cli.standins.buffalo_l import write_buffalo_l

    source = examples.example_source("group")
    assert source.name == "t1.jpg" and source.parent.name == "images"
    plain, lines = examples.example_photo("group", False, tmp_path)
    assert plain == source and "t1.jpg" in lines[0]

    marked, lines = examples.example_photo("group", True, tmp_path)
    assert marked.parent == tmp_path and "marker faces" in " ".join(lines)
    original = np.asarray(Image.open(source).convert("RGB"))
    drawn = np.asarray(Image.open(marked).convert("RGB"))
    assert drawn.shape == original.shape
    markers = examples.EXAMPLES["group"]["markers"]
    real = [box for box, _, _ in dlib_faces(original)]
    assert len(real) == 6
    for (cx, cy), radius, _ in markers:
        assert any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in real), (cx, cy)  # over a real face
        assert np.abs(drawn[cy, cx].astype(int) - original[cy, cx].astype(int)).sum() > 100
    far = np.ones(original.shape[:2], bool)
    ys, xs = np.mgrid[0:original.shape[0], 0:original.shape[1]]
    for (cx, cy), radius, _ in markers:
        far &= (xs - cx) ** 2 + (ys - cy) ** 2 > (radius + 2) ** 2
    assert np.array_equal(drawn[far], original[far])  # nothing else drawn

    folder = tmp_path / "buffalo_l"
    write_buffalo_l(folder, seed=0)
    analyser = FaceAnalyser(str(folder), det_size=640)
    found = analyser.detect(cv2.imread(str(marked)), 0.5)
    assert len(found) == len(markers)
    centres = sorted(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in found)
    for (fx, fy), ((cx, cy), _, _) in zip(centres, sorted(markers)):
        assert abs(fx - cx) < 4 and abs(fy - cy) < 4
    assert analyser.detect(cv2.imread(str(source)), 0.5) == []


def test_standin_settings_are_documented_and_passed_to_the_local_server():
    help_text = " ".join(cli.build_parser().commands["anonymize"].format_help().split())
    assert f"--steps {cli.STANDIN_DEFAULTS['steps']}, --crop-size {cli.STANDIN_DEFAULTS['crop_size']}" in help_text
    assert "bf16" in help_text and "--standin-unet" in help_text
    p = cli.build_parser()
    cpu = None
    try:
        import torch
        cpu = not torch.cuda.is_available()
    except ImportError:
        pass
    if not cpu:
        pytest.skip("a CUDA machine: the local server gets no CPU settings")
    a = p.parse_args(["anonymize", "--example", "group", "-o", "o.png", "--standin-weights"])
    assert cli._host_args(a) == ["--cpu", "--bf16-unet", "--use-pytorch-cross-attention"]
    a = p.parse_args(["anonymize", "x.png", "-o", "o.png", "--standin-weights", "--standin-unet", "fp32",
                      "--server-args", "--preview-method none"])
    assert cli._host_args(a) == ["--cpu", "--use-pytorch-cross-attention", "--preview-method", "none"]
    assert cli._host_args(p.parse_args(["anonymize", "x.png", "-o", "o.png"])) == ["--cpu"]


def test_server_args_may_start_with_a_dash():
    p = cli.build_parser()
    for argv in (["--server-args", "--bf16-unet"], ["--server-args=--bf16-unet"],
                 ["--server-args", "--bf16-unet --lowvram"]):
        a = p.parse_args(cli.attach_option_values(["anonymize", "x.png", "-o", "o.png", "--gpu"] + argv))
        assert cli._host_args(a)[:1] == ["--bf16-unet"], argv
    with pytest.raises(SystemExit):  # without the joining, argparse refuses it
        p.parse_args(["anonymize", "x.png", "-o", "o.png", "--server-args", "--bf16-unet"])


def test_example_job_on_standins_shows_progress_and_the_anonymity_figures(tmp_path, capsys):
    """The quick start's main job end to end (the shipped photo workflow, the example photo with its
    marker faces, a local server the command starts and stops), on the SD1.5 stand-ins to keep it
    short; .ci/run runs the README's SDXL command itself."""
    out = tmp_path / "anonymized.png"
    code, stdout, err = run(["anonymize", "--example", "group", "-o", out, "--standin-weights",
                             "--standin-arch", "sd15", "--models", REPO / ".host" / "test-models"], capsys)
    assert code == cli.EXIT_OK, err
    assert "6 marker faces are drawn over real faces" in err
    assert "RevPersInvert [25]: 100%" in err and "RevPersAnonymizedSampler [26]: 100%" in err  # progress bars
    # the audit of the saved photo: six faces, each judged ok, with ArcFace's figure at its place
    assert "audit:" in stdout and "RESULT: passed" in stdout
    verdicts = re.findall(r"face (\d) \(image 0, at .*\): (\S.*)", stdout)
    assert [v[0] for v in verdicts] == ["0", "1", "2", "3", "4", "5"] and all(v[1] == "ok" for v in verdicts)
    figures = re.findall(r"ArcFace: cosine similarity ([+-]\d\.\d{3}) at its place", stdout)
    assert len(figures) == 6 and all(abs(float(f)) < 0.3 for f in figures)
    result = np.asarray(Image.open(out).convert("RGB"))
    assert result.shape == (886, 1280, 3)
    shutil.copy(out, artifact_dir("cli") / "example_group_sd15_standins.png")
    print(stdout)


def test_standins_are_taken_from_another_models_folder_instead_of_regenerated(tmp_path):
    """Stand-ins with reuse: a current stand-in (same kind, seed and generator) in another models folder
    is hard-linked with its marker; one for another seed is not taken."""
    from revpers_cli import standins

    logs = []
    made = standins.generate_faceid(tmp_path / "quickstart", "sd15", seed=0, log=logs.append)
    taken = standins.generate_faceid(tmp_path / "tests", "sd15", seed=0, log=logs.append,
                                     reuse=[tmp_path / "quickstart"])
    assert "hard-linked from" in logs[-1]
    assert taken.stat().st_ino == made.stat().st_ino and standins.is_current(taken, "faceid-sd15", 0)
    standins.generate_faceid(tmp_path / "tests", "sd15", seed=0, log=logs.append, reuse=[tmp_path / "quickstart"])
    assert logs[-1].endswith("kept")
    other = standins.generate_faceid(tmp_path / "seed1", "sd15", seed=1, log=logs.append,
                                     reuse=[tmp_path / "quickstart"])
    assert "hard-linked" not in logs[-1] and other.read_bytes() != made.read_bytes()


def test_fewer_faces_allowed_than_found_fails_unless_the_others_are_left_on_request(tmp_path, capsys):
    """--faces 1 on the six-face example: an error naming the way out, nothing written; with
    --leave-other-faces the photo is written, marked, and the audit names the five faces left."""
    out = tmp_path / "one.png"
    common = ["anonymize", "--example", "group", "--standin-weights", "--standin-arch", "sd15",
              "--models", REPO / ".host" / "test-models", "--faces", "1", "-q"]
    code, stdout, err = run(common + ["-o", out], capsys)
    assert code == cli.EXIT_FAILED and not out.exists()
    assert "6 faces to anonymize but max_faces is 1" in err and "beyond_max_faces" in err
    code, stdout, err = run(common + ["-o", out, "--leave-other-faces"], capsys)
    assert code == cli.EXIT_OK, err
    assert "WARNING: 5 face(s) left un-anonymized by request" in stdout and "RESULT: passed" in stdout
    assert stdout.count("LEFT UN-ANONYMIZED BY REQUEST") == 5
    result = np.asarray(Image.open(out).convert("RGB"))
    assert (result[5, 600] == [255, 0, 0]).all()  # the red banner across the top
    shutil.copy(out, artifact_dir("cli") / "example_group_one_face_others_left.png")


def partial_marker_photo(path):
    """A 640x480 cut of InsightFace's t1.jpg with three people: two hidden under full marker faces, and one
    whose marker is small (r 16) on the nose, so the stand-in detector sees only that marker while dlib
    still sees the real face around it: the model edits a bit of the face, the rest stays recognizable,
    whatever the guidance."""
    from faces_fixtures import insightface_image
    from revpers_cli.standins.buffalo_l import draw_marker_face

    rgb = insightface_image("t1.jpg")[40:520, 400:1040].copy()
    for centre, radius, seed in [((103, 322), 16, 22), ((378, 380), 54, 44), ((534, 91), 65, 55)]:
        draw_marker_face(rgb, centre, radius, seed=seed)
    Image.fromarray(rgb).save(path)
    return path


def test_guaranteed_mode_samples_only_the_failing_face_again_then_fails_closed(tmp_path, capsys):
    """A face still recognizable (by dlib) after paste-back is sampled again with -12.5, then -15, only it:
    the other faces' pixels are identical to those of the first attempt; after the strongest guidance the
    run fails naming the face, with its attempts, and writes nothing."""
    pytest.importorskip("dlib")
    photo = partial_marker_photo(tmp_path / "partial.png")
    common = ["anonymize", photo, "--standin-weights", "--standin-arch", "sd15",
              "--models", REPO / ".host" / "test-models", "-q"]
    out = tmp_path / "out.png"
    code, stdout, err = run(common + ["-o", out], capsys)
    assert code == cli.EXIT_FAILED and not out.exists(), err
    assert 'attempt 2: face_guidance "0:-12.5", the other faces -10' in err
    assert 'attempt 3: face_guidance "0:-15"' in err
    assert ("face row 0: guidance -10 -> STILL RECOGNIZABLE; guidance -12.5 -> STILL RECOGNIZABLE; "
            "guidance -15 -> STILL RECOGNIZABLE") in stdout
    assert "face row(s) 0: still recognizable after the strongest guidance tried (-15)" in err
    assert "nothing was written" in err
    # the same two runs written marked (--allow-unanonymized): first attempt only, and after the retries
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    code, stdout, err = run(common + ["-o", first, "--allow-unanonymized", "--no-retry"], capsys)
    assert code == cli.EXIT_UNANONYMIZED and "guaranteed mode" not in err, err
    code, stdout, err = run(common + ["-o", last, "--allow-unanonymized"], capsys)
    assert code == cli.EXIT_UNANONYMIZED and "attempt 3" in err, err
    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (first, last))
    differs = np.abs(a - b).max(axis=2) > 0
    ys, xs = np.nonzero(differs)
    assert differs.any() and xs.max() < 200 and ys.min() > 200  # only around the retried face at (103, 322)
    for (x, y), r in [((378, 380), 54), ((534, 91), 65)]:  # the other faces: bit-identical
        assert not differs[max(0, y - 2 * r):y + 2 * r, x - 2 * r:x + 2 * r].any()
    shutil.copy(last, artifact_dir("cli") / "guaranteed_mode_failed_marked.png")
