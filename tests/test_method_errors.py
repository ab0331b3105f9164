"""Bad input to the method's nodes gives a clear error, in-process and through the running server (which
keeps answering afterwards)."""
import shutil

import pytest
import torch

import oracle_model as om
from revpers_cli import standins
from revpers_core.faceid import AdapterMismatch, load_faceid_adapter
from revpers_cli.standins.faceid import make_faceid_state_dict


@pytest.fixture(scope="module")
def tiny(pack, tiny_sdxl):
    with torch.inference_mode():
        pos, neg = om.conditioning("default", "inversion")
        record, _ = pack.nodes.inversion.RevPersInvert.execute(tiny_sdxl["inversion"], om.latent("default"), pos,
                                                               neg, -10.0, 2, 0.7, 0)
    return dict(tiny_sdxl, record=record)


def test_adapter_for_sd15_on_the_sdxl_model(pack, tiny, tmp_path):
    """A file with the real SD1.5 FaceID layout (16 cross-attention layers, width 768, 320/640/1280) applied to the
    (tiny) SDXL model: the error names the adapter file and the model."""
    path = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save(make_faceid_state_dict("sd15", seed=0, rank=4), path)
    sd15 = load_faceid_adapter(str(path))
    with pytest.raises(AdapterMismatch, match=r"'ip-adapter-faceid_sd15\.bin'.*does not fit the model 'TinySDXL'"):
        tiny["node"].execute(tiny["base"], sd15, 1.0)


def test_adapter_with_wrong_identity_width(pack, tiny):
    """Same layer count, but to_k_ip shapes that do not fit the model's cross-attention."""
    state = make_faceid_state_dict("sd15", seed=0, rank=4)
    keep = {f"{n}.to_{kv}_ip.weight" for n in range(1, 8, 2) for kv in "kv"}
    state["ip_adapter"] = {k: v for k, v in state["ip_adapter"].items() if k in keep}
    from revpers_core.faceid import faceid_adapter_from_state_dict

    wrong = faceid_adapter_from_state_dict(state, "narrow.bin")
    with pytest.raises(AdapterMismatch, match=r"'narrow\.bin'.*does not fit the model 'TinySDXL'.*layer 1 to_k_ip"):
        tiny["node"].execute(tiny["base"], wrong, 1.0)


def test_embedding_count_must_match_the_faces(pack, tiny):
    e = om.identity_embedding()
    gpos, gneg = om.conditioning("default", "generation")
    sampler = pack.nodes.sampler.RevPersAnonymizedSampler
    with torch.inference_mode():
        two = tiny["node"].execute(tiny["base"], tiny["adapter"], 1.0, torch.cat([e, -e]))[0]
        with pytest.raises(ValueError, match=r"carries 2 identity embedding\(s\) but the inversion holds 1 face"):
            sampler.execute(two, gpos, gneg, tiny["record"], -10.0, False, 1024)
        with pytest.raises(ValueError, match=r"embeddings must be \[faces, 512\]"):
            tiny["node"].execute(tiny["base"], tiny["adapter"], 1.0, torch.zeros(1, 256))


def test_sampler_refuses_a_model_without_identity(pack, tiny):
    gpos, gneg = om.conditioning("default", "generation")
    sampler = pack.nodes.sampler.RevPersAnonymizedSampler
    for model in (tiny["base"], tiny["inversion"]):
        with pytest.raises(ValueError, match="carries no identity.*reproduce the input faces"):
            sampler.execute(model, gpos, gneg, tiny["record"], -10.0, False, 1024)


def test_the_sampler_says_when_its_guidance_is_not_the_inversions(pack, tiny):
    """The record keeps the inversion's guidance: sampling it with another scale works (a user may explore)
    but the node's text and the log say the two differ and which to set; with the same scale it says
    nothing."""
    gpos, gneg = om.conditioning("default", "generation")
    sampler = pack.nodes.sampler.RevPersAnonymizedSampler
    with torch.inference_mode():
        model = tiny["node"].execute(tiny["base"], tiny["adapter"], 1.0, om.identity_embedding())[0]
        same = sampler.execute(model, gpos, gneg, tiny["record"], -10.0, False, 1024)
        other = sampler.execute(model, gpos, gneg, tiny["record"], -7.5, False, 1024)
    assert same.ui["text"] == [] and same.ui["revpers_sampler"] == [{"anonymizing": True, "warnings": [],
                                                                      "face_guidance": ""}]
    assert other.ui["revpers_sampler"][0]["anonymizing"] and other.ui["revpers_sampler"][0]["warnings"] == \
        other.ui["text"]
    assert other.ui["text"] == ["the sampler's guidance -7.5 differs from the inversion's -10: the method uses one "
                                "guidance for both (the paper's -10); set Invert's guidance to the sampler's"]


def test_invert_refuses_other_models(pack, tiny):
    pos, neg = om.conditioning("default", "inversion")
    invert = pack.nodes.inversion.RevPersInvert
    with torch.inference_mode():
        identity = tiny["node"].execute(tiny["base"], tiny["adapter"], 1.0, om.identity_embedding())[0]
    with pytest.raises(ValueError, match="NO embedding connected.*carries identity embeddings"):
        invert.execute(identity, om.latent("default"), pos, neg, -10.0, 2, 0.7, 0)
    with pytest.raises(ValueError, match="has no FaceID adapter"):
        invert.execute(tiny["base"], om.latent("default"), pos, neg, -10.0, 2, 0.7, 0)


@pytest.mark.parametrize("steps,skip,match", [
    (1, 0.7, "steps must be at least 2"), (0, 0.7, "steps must be at least 2"),
    (10, 0.0, "skip must lie strictly between 0 and 1"), (10, 1.0, "skip must lie strictly between 0 and 1"),
    (10, 1.5, "skip must lie strictly between 0 and 1"), (200, 0.9, "without repeating a timestep"),
])
def test_invert_settings(pack, tiny, steps, skip, match):
    pos, neg = om.conditioning("default", "inversion")
    with pytest.raises(ValueError, match=match):
        pack.nodes.inversion.RevPersInvert.execute(tiny["inversion"], om.latent("default"), pos, neg, -10.0,
                                                   steps, skip, 0)


def test_invert_needs_a_latent_batch(pack, tiny):
    pos, neg = om.conditioning("default", "inversion")
    with pytest.raises(ValueError, match="batch of face latents"):
        pack.nodes.inversion.RevPersInvert.execute(tiny["inversion"], {"samples": torch.zeros(4, 8, 8)}, pos,
                                                   neg, -10.0, 2, 0.7, 0)


def test_identity_patch_applied_twice(pack, tiny):
    with pytest.raises(ValueError, match="already carries a FaceID identity patch"):
        tiny["node"].execute(tiny["inversion"], tiny["adapter"], 1.0)


# -- through the running server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server_models(request):
    """An SD1.5 stand-in checkpoint and SD1.5 FaceID stand-in in the server's models folder (generated once,
    kept between sessions), plus the oracle adapter and broken adapters."""
    server = request.getfixturevalue("_server_session")
    ckpt = standins.generate_checkpoint(server.models_dir, "sd15", seed=0, log=lambda *a: None)
    faceid = standins.generate_faceid(server.models_dir, "sd15", seed=0, log=lambda *a: None)
    folder = server.models_dir / "ipadapter"
    tiny_sdxl = folder / "revpers-test-faceid-tiny-sdxl.safetensors"
    shutil.copyfile(om.adapter_path("golden"), tiny_sdxl)
    data = om.adapter_path("golden").read_bytes()
    corrupt = folder / "revpers-test-corrupt.safetensors"
    corrupt.write_bytes(data[: len(data) // 3])
    created = [tiny_sdxl, corrupt]
    yield {"ckpt": ckpt.name, "faceid": faceid.name, "tiny_sdxl": tiny_sdxl.name, "corrupt": corrupt.name,
           "folder": folder, "created": created}
    for path in created:
        path.unlink(missing_ok=True)


def inversion_graph(ckpt, adapter, steps=2):
    """Checkpoint → Identity Conditioning (no embedding) → RevPers Invert of an empty 64 px latent → SaveLatent.
    The adapter input is listed first, so a failing adapter stops the run before the checkpoint loads."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "RevPersFaceIDAdapterLoader", "inputs": {"adapter_name": adapter}},
        "3": {"class_type": "RevPersIdentityConditioning",
              "inputs": {"faceid_adapter": ["2", 0], "model": ["1", 0], "ip_adapter_scale": 1.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "6": {"class_type": "RevPersAttributeText", "inputs": {"clip": ["1", 1], "text": ""}},
        "7": {"class_type": "RevPersInvert",
              "inputs": {"model": ["3", 0], "latent": ["4", 0], "conditioning": ["5", 0], "unconditional": ["6", 0],
                         "guidance": -10.0, "steps": steps, "skip": 0.7, "seed": 0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 1], "filename_prefix": "revpers_test/x_T"}},
    }


@pytest.mark.server
def test_server_reports_a_corrupt_adapter_then_runs_a_good_prompt(comfy_server, server_models):
    bad = comfy_server.run(inversion_graph(server_models["ckpt"], server_models["corrupt"]), timeout=600)
    assert bad.status == "error"
    assert bad.error["node_type"] == "RevPersFaceIDAdapterLoader"
    assert "revpers-test-corrupt.safetensors" in bad.error["exception_message"]
    assert "corrupt or truncated" in bad.error["exception_message"]

    good = comfy_server.run(inversion_graph(server_models["ckpt"], server_models["faceid"], steps=3), timeout=600)
    assert good.status == "success", good.message
    assert good.outputs["8"]["latents"]
    # the inversion drove ComfyUI's progress bar once per step
    progress = [(d["value"], d["max"]) for kind, d in good.events if kind == "progress" and d.get("node") == "7"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.server
def test_server_reports_an_adapter_for_another_model(comfy_server, server_models):
    result = comfy_server.run(inversion_graph(server_models["ckpt"], server_models["tiny_sdxl"]), timeout=600)
    assert result.status == "error"
    assert result.error["node_type"] == "RevPersIdentityConditioning"
    message = result.error["exception_message"]
    assert "revpers-test-faceid-tiny-sdxl.safetensors" in message and "does not fit the model 'SD15'" in message
    assert comfy_server.alive()


@pytest.mark.server
def test_server_refuses_a_code_carrying_pickle(comfy_server, server_models, tmp_path):
    marker = tmp_path / "payload-ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = server_models["folder"] / "revpers-test-evil.bin"
    server_models["created"].append(evil)
    torch.save({"image_proj": {"proj.0.weight": RunsCode()}, "ip_adapter": {}}, evil)
    result = comfy_server.run(inversion_graph(server_models["ckpt"], evil.name), timeout=600)
    assert result.status == "error"
    assert "revpers-test-evil.bin' was refused" in result.error["exception_message"]
    assert not marker.exists()
