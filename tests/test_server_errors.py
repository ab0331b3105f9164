"""How the running server reports the pack's errors: a graph it refuses at validation, and a pack
node that raises while running. Either way the server keeps serving."""
import io

import numpy as np
import pytest
from PIL import Image

from harness import PromptRejected


def _png(size=64, value=128):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_invalid_prompt_is_refused_with_node_errors(comfy_server):
    name = comfy_server.upload_image(_png(), "harness-grey.png")
    prompt = {
        "1": {"class_type": "RevPersFaceAnalysisLoader",
              "inputs": {"model_pack": "buffalo_l", "provider": "CPU", "det_size": 640, "det_thresh": 0.5}},
        "2": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {"class_type": "RevPersAnonymityCheck",
              # threshold above its maximum, and the face analysis wired into an IMAGE input
              "inputs": {"analysis": ["1", 0], "anonymized": ["1", 0], "threshold": 7.5,
                         "fail_if_recognizable": True}},
    }
    with pytest.raises(PromptRejected) as caught:
        comfy_server.queue(prompt)
    rejected = caught.value
    assert rejected.status == 400
    body = rejected.body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"]
    node = body["node_errors"]["3"]
    assert node["class_type"] == "RevPersAnonymityCheck"
    by_input = {e["extra_info"]["input_name"]: e for e in node["errors"]}
    assert by_input["threshold"]["type"] == "value_bigger_than_max"
    assert "7.5" in by_input["threshold"]["message"] + by_input["threshold"]["details"]
    assert by_input["anonymized"]["type"] == "return_type_mismatch"
    assert "REVPERS_FACE_ANALYSIS" in by_input["anonymized"]["message"] + by_input["anonymized"]["details"]
    assert "threshold" in str(rejected) and "RevPersAnonymityCheck" in str(rejected)
    # the refused graph left nothing behind: the queue is empty and the server answers
    assert comfy_server.alive()


def _check_prompt(model_pack, image_name):
    """The smallest graph that runs a pack loader: the face analysis feeds the anonymity check, an
    output node, so ComfyUI executes the loader."""
    return {
        "1": {"class_type": "RevPersFaceAnalysisLoader",
              "inputs": {"model_pack": model_pack, "provider": "CPU", "det_size": 640, "det_thresh": 0.5}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "3": {"class_type": "RevPersAnonymityCheck",
              "inputs": {"analysis": ["1", 0], "anonymized": ["2", 0], "original": ["2", 0],
                         "threshold": 0.4, "fail_if_recognizable": False}},
    }


def test_pack_node_error_reaches_websocket_and_history_and_server_survives(comfy_server):
    # A model pack whose detector file is garbage (a truncated download, say).
    pack = comfy_server.models_dir / "insightface" / "models" / "harness_broken"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "det_10g.onnx").write_bytes(b"this is not an onnx file")
    name = comfy_server.upload_image(_png(), "harness-grey.png")

    result = comfy_server.run(_check_prompt("harness_broken", name), timeout=120)

    assert result.status == "error"
    kinds = [kind for kind, _ in result.events]
    assert "execution_start" in kinds and "execution_error" in kinds
    error = result.error
    assert error["node_id"] == "1" and error["node_type"] == "RevPersFaceAnalysisLoader"
    message = error["exception_message"]
    assert "harness_broken" in message and "det_10g.onnx" in message, message
    assert "Traceback" not in message
    # the same error is in the history
    status = comfy_server.history(result.prompt_id)["status"]
    assert status["status_str"] == "error"
    recorded = [data for kind, data in status["messages"] if kind == "execution_error"]
    assert recorded and recorded[0]["node_type"] == "RevPersFaceAnalysisLoader"
    assert recorded[0]["exception_message"] == message
    print(f"\nexecution_error from node {error['node_id']} ({error['node_type']}): {message}")

    # and the server goes on: it still answers, and still runs a good graph
    assert comfy_server.alive()
    ok = comfy_server.run({"2": {"class_type": "LoadImage", "inputs": {"image": name}},
                           "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                                        "filename_prefix": "harness"}}},
                          timeout=120)
    assert ok.status == "success", ok.message
    saved = ok.images("4")
    assert saved and comfy_server.view(saved[0]["filename"], saved[0]["subfolder"])[:8] == b"\x89PNG\r\n\x1a\n"
