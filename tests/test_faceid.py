"""revpers_core.faceid (loading, validation, projection, LoRA deltas, layer mapping onto ComfyUI UNets)
and revpers_core.modulation (embedding modulation)."""
import math
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from oracle_model import adapter_path, golden
from revpers_core.faceid import (AdapterMismatch, FaceIDAdapter, faceid_adapter_from_state_dict,
                                 load_faceid_adapter)
from revpers_core.modulation import modulate_identity
from revpers_cli.standins.faceid import faceid_layout


def _nested(flat):
    return {"image_proj": {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")},
            "ip_adapter": {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}}


def _meta_adapter(arch, name, lora=True):
    """An adapter with the published layout of `arch`, tensors on the meta device (shapes only)."""
    layout = faceid_layout(arch, lora=lora, rank=8)
    state = {section: {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
             for section, keys in layout.items()}
    return faceid_adapter_from_state_dict(state, name)


# -- loading ----------------------------------------------------------------------------------

def test_oracle_adapter_layout():
    adapter = load_faceid_adapter(str(adapter_path("golden")))
    assert (adapter.num_processors, adapter.embedding_dim, adapter.cross_attention_dim, adapter.num_tokens) == (8, 512, 64, 4)
    assert adapter.has_lora
    nolora = load_faceid_adapter(str(adapter_path("golden_nolora")))
    assert nolora.num_processors == 8 and not nolora.has_lora
    assert nolora.lora_bytes() == 0


def test_bin_and_safetensors_give_the_same_adapter(tmp_path):
    flat = load_file(str(adapter_path("golden")))
    bin_path = tmp_path / "ip-adapter-faceid_tiny.bin"
    torch.save(_nested(flat), bin_path)  # the real .bin layout: nested {image_proj, ip_adapter}
    a = load_faceid_adapter(str(adapter_path("golden")))
    b = load_faceid_adapter(str(bin_path))
    assert b.name == "ip-adapter-faceid_tiny.bin"
    assert a.image_proj.keys() == b.image_proj.keys() and a.processors.keys() == b.processors.keys()
    e = golden()["ip_embeds_generation"].reshape(2, 512)
    assert torch.equal(a.project(e), b.project(e))
    for n in a.processors:
        for k in a.processors[n]:
            if "_ip" not in k:  # the identity projections are read when needed (next test)
                assert torch.equal(a.processors[n][k], b.processors[n][k])
    with a.reading_identity_weights() as wa, b.reading_identity_weights() as wb:
        for block in range(a.num_blocks):
            assert all(torch.equal(x, y) for x, y in zip(wa(block), wb(block)))


@pytest.mark.parametrize("layout", ["safetensors", "zip", "stream"])
def test_identity_projections_are_read_from_the_file_when_needed_and_let_go(tmp_path, layout, monkeypatch):
    """A loaded adapter holds its identity projections as shapes only; projecting identity tokens reads them
    from the file (the same tensors as the file's) a group of blocks at a time, letting each group go when
    the next is read and all on leaving; the keys and values are those of an adapter holding every weight.
    A pickle-stream .bin (older torch.save), which can only be read whole, is read once for all blocks.
    A file changed since it was loaded is refused by name."""
    import weakref

    import revpers_core.faceid.adapter as faceid_adapter
    import revpers_core.faceid.files as faceid_files
    from revpers_core.conditioning import identity_tokens

    # patched where FaceIDAdapter looks them up (revpers_core/faceid/adapter.py)
    monkeypatch.setattr(faceid_adapter, "IDENTITY_READ_BLOCKS", 1)  # the tiny adapter has 4 blocks: 4 groups
    reads = []
    read_ip_tensors = faceid_files._read_ip_tensors
    monkeypatch.setattr(faceid_adapter, "_read_ip_tensors", lambda path, numbers: reads.append(list(numbers)) or
                        read_ip_tensors(path, numbers))

    flat = load_file(str(adapter_path("golden")))
    path = tmp_path / f"ip-adapter-faceid_tiny.{'safetensors' if layout == 'safetensors' else 'bin'}"
    if layout == "safetensors":
        path.write_bytes(adapter_path("golden").read_bytes())
    else:
        torch.save(_nested(flat), path, _use_new_zipfile_serialization=(layout == "zip"))
    assert faceid_files._file_layout(str(path)) == layout
    adapter = load_faceid_adapter(str(path))
    held = faceid_adapter_from_state_dict(flat, "held")
    assert not adapter.identity_weights_held and held.identity_weights_held
    assert all(adapter.processors[n][k].is_meta for n in range(1, 8, 2) for k in ("to_k_ip", "to_v_ip"))
    assert adapter.identity_weights(1)[0].shape == held.identity_weights(1)[0].shape
    with adapter.reading_identity_weights() as weights:
        k, v = weights(2)
        assert torch.equal(k, flat["ip_adapter.5.to_k_ip.weight"]) and torch.equal(v, flat["ip_adapter.5.to_v_ip.weight"])
        gone = weakref.ref(k)
        del k, v
        assert weights(2)[0] is gone()  # the group is kept while its blocks are read
        last = weakref.ref(weights(3)[0])
        if layout == "stream":
            assert gone() is not None  # one group: every block
        else:
            assert gone() is None  # the previous group is let go when the next is read
    assert last() is None  # and the last one on leaving
    e = golden()["ip_embeds_generation"].reshape(2, 512)[1:]
    reads.clear()
    mine, theirs = identity_tokens(adapter, e, 1.0), identity_tokens(held, e, 1.0)
    assert reads == ([[1, 3, 5, 7]] if layout == "stream" else [[1], [3], [5], [7]])
    for block in range(adapter.num_blocks):
        assert all(torch.equal(x, y) for x, y in zip(mine.project(block, "cpu", torch.float32),
                                                     theirs.project(block, "cpu", torch.float32)))
    with open(path, "r+b") as f:  # overwritten in place, the same size: what the adapter holds is its own
        f.write(b"\0" * path.stat().st_size)
    assert all(torch.equal(t, flat[f"image_proj.{k}"]) for k, t in adapter.image_proj.items())
    assert all(torch.equal(t, flat[f"ip_adapter.{n}.{k}.weight"]) for n, p in adapter.processors.items()
               for k, t in p.items() if not t.is_meta)
    path.write_bytes(path.read_bytes() + b"\0")  # and a size that differs, whatever the clock's resolution
    with pytest.raises(ValueError, match=r"'ip-adapter-faceid_tiny.*' changed on disk.*queue the prompt again"):
        identity_tokens(adapter, e, 1.0)


def test_projection_is_the_faceid_mlp():
    """Identity tokens equal diffusers' IPAdapterFaceIDImageProjection (the module the reference runs)
    loaded with the same weights, bit for bit."""
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    adapter = load_faceid_adapter(str(adapter_path("golden")))
    p = adapter.image_proj
    module = IPAdapterFaceIDImageProjection(image_embed_dim=512, cross_attention_dim=64, mult=2, num_tokens=4).eval()
    module.load_state_dict({"ff.net.0.proj.weight": p["proj.0.weight"], "ff.net.0.proj.bias": p["proj.0.bias"],
                            "ff.net.2.weight": p["proj.2.weight"], "ff.net.2.bias": p["proj.2.bias"],
                            "norm.weight": p["norm.weight"], "norm.bias": p["norm.bias"]})
    e = golden()["ip_embeds_generation"].reshape(2, 512)  # [null, identity], as the reference batches them
    with torch.no_grad():
        want = module(e)
    got = adapter.project(e)
    assert got.shape == (2, 4, 64)
    assert torch.equal(got, want)
    assert not torch.allclose(got[0], got[1])  # the null identity has its own (non-zero) tokens
    assert got[0].abs().sum() > 0


def test_lora_layers_are_the_files_own_factors():
    """The LoRA is handed on as the file's low-rank factors (no product formed, no copy): every pair of a
    transformer block, attn1 then attn2, and their bytes are the file's LoRA tensors."""
    adapter = load_faceid_adapter(str(adapter_path("golden")))
    layers = list(adapter.lora_layers(1))
    assert [(a, p) for a, p, _, _ in layers] == [(a, p) for a in ("attn1", "attn2")
                                                 for p in ("to_q", "to_k", "to_v", "to_out")]
    p3 = adapter.processors[3]
    attn2_k = next((up, down) for a, p, up, down in layers if (a, p) == ("attn2", "to_k"))
    assert attn2_k[0] is p3["to_k_lora.up"] and attn2_k[1] is p3["to_k_lora.down"]
    flat = load_file(str(adapter_path("golden")))
    file_lora = sum(t.numel() * t.element_size() for k, t in flat.items() if "_lora." in k)
    assert adapter.lora_bytes() == file_lora > 0
    nolora = load_faceid_adapter(str(adapter_path("golden_nolora")))
    assert nolora.lora_bytes() == 0 and list(nolora.lora_layers(0)) == []


def test_identity_token_sets_are_per_distinct_embedding():
    """Token set 0 is the null embedding's; equal embeddings share a set (bit-identical tokens); a face's
    tokens are what the reference's [null, e] projection gives it, whatever the other faces."""
    adapter = load_faceid_adapter(str(adapter_path("golden")))
    e = golden()["ip_embeds_generation"].reshape(2, 512)[1:]
    other = e.roll(100, -1)
    sets, index = adapter.project_identities(torch.cat([e, other, e]))
    assert index.tolist() == [1, 2, 1] and sets.shape == (3, 4, 64)
    alone = adapter.project(torch.cat([torch.zeros(1, 512), e]))
    assert torch.equal(sets[0], alone[0]) and torch.equal(sets[1], alone[1])
    null_sets, none = adapter.project_identities(None)
    assert none.numel() == 0 and torch.equal(null_sets[0], sets[0])
    with pytest.raises(ValueError, match=r"\[faces, 512\]"):
        adapter.project_identities(torch.zeros(3))


# -- refusing bad files -----------------------------------------------------------------------

class _RunsCode:
    """A pickle payload that, if unpickled by the full unpickler, creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_code_carrying_pickle_is_refused_and_not_run(tmp_path, container):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "ip-adapter-faceid_sdxl.bin"
    payload = {"image_proj": {"proj.0.weight": _RunsCode(str(marker))}, "ip_adapter": {}}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ValueError, match=r"ip-adapter-faceid_sdxl\.bin' was refused.*nothing in it was executed"):
        load_faceid_adapter(str(path))
    assert not marker.exists()
    # the same payload through the full unpickler does run: the test's payload is real
    with open(path, "rb") as f:
        if container == "pickle":
            pickle.load(f)
            assert marker.exists()


def _corrupt_files(tmp_path):
    good_bin = tmp_path / "good.bin"
    torch.save(_nested(load_file(str(adapter_path("golden")))), good_bin)
    data = good_bin.read_bytes()
    (tmp_path / "truncated.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint " * 20)
    st = adapter_path("golden").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(st[: len(st) - 1000])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    return ["truncated.bin", "garbage.bin", "truncated.safetensors", "empty.safetensors"]


def test_corrupt_files_are_clear_errors(tmp_path):
    for name in _corrupt_files(tmp_path):
        with pytest.raises(ValueError, match=rf"'{name}' could not be read.*corrupt or truncated"):
            load_faceid_adapter(str(tmp_path / name))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'nothere\.bin' not found.*models/ipadapter"):
        load_faceid_adapter(str(tmp_path / "nothere.bin"))
    (tmp_path / "adapter.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_faceid_adapter(str(tmp_path / "adapter.onnx"))


def test_wrong_layouts_are_named():
    flat = load_file(str(adapter_path("golden")))
    good = _nested(flat)

    def variant(edit):
        state = {k: dict(v) for k, v in good.items()}
        edit(state)
        return state

    with pytest.raises(ValueError, match="not an IP-Adapter file"):
        faceid_adapter_from_state_dict({"model.weight": torch.zeros(1)}, "x.safetensors")
    plus = variant(lambda s: s["image_proj"].update({"perceiver_resampler.latents": torch.zeros(1, 4, 8)}))
    with pytest.raises(ValueError, match="FaceID Plus"):
        faceid_adapter_from_state_dict(plus, "plus.bin")
    with pytest.raises(ValueError, match="lacks to_k_ip"):
        faceid_adapter_from_state_dict(variant(lambda s: s["ip_adapter"].pop("3.to_k_ip.weight")), "x.bin")
    with pytest.raises(ValueError, match="half of its to_v LoRA"):
        faceid_adapter_from_state_dict(variant(lambda s: s["ip_adapter"].pop("2.to_v_lora.up.weight")), "x.bin")
    with pytest.raises(ValueError, match="unexpected key ip_adapter.1.to_x.weight"):
        faceid_adapter_from_state_dict(variant(lambda s: s["ip_adapter"].update({"1.to_x.weight": torch.zeros(1)})), "x.bin")
    with pytest.raises(ValueError, match="must both be"):
        faceid_adapter_from_state_dict(
            variant(lambda s: s["ip_adapter"].update({"1.to_v_ip.weight": torch.zeros(64, 32)})), "x.bin")


# -- mapping onto ComfyUI's UNets -------------------------------------------------------------

def _meta_unet_sites(pack, config):
    import comfy.model_detection
    import comfy.model_patcher

    model_config = comfy.model_detection.model_config_from_unet_config(dict(config))
    model = model_config.get_model({}, device="meta")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"), size=1)
    return patcher, pack.nodes._unet_sites.attention_sites(patcher)


SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "dtype": torch.float16,
             "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
             "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
             "use_temporal_resblock": False}
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "dtype": torch.float16, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False}


@pytest.fixture(scope="module")
def real_unets(comfy_inprocess):
    """ComfyUI's own SDXL and SD1.5 UNets (meta device: structure only, no memory)."""
    return {"SDXL": _meta_unet_sites(comfy_inprocess, SDXL_UNET), "SD15": _meta_unet_sites(comfy_inprocess, SD15_UNET)}


def test_published_layouts_map_onto_comfyui_unets(real_unets):
    """The processor numbering of the real FaceID files maps onto ComfyUI's SDXL and SD1.5 blocks: same count,
    and the shapes of every processor (inner width, context width, LoRA) match the block it lands on — for
    SD1.5 the widths 320/640/1280 interleave so that any other order would mismatch."""
    for arch, key, blocks in (("sdxl", "SDXL", 70), ("sd15", "SD15", 16)):
        patcher, sites = real_unets[key]
        assert len(sites) == blocks
        adapter = _meta_adapter(arch, f"ip-adapter-faceid_{arch}.bin")
        adapter.check_fits([s.slot for s in sites], key)
    _, sd15 = real_unets["SD15"]
    assert [s.slot.inner_dim for s in sd15] == [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640,
                                                 320, 320, 320, 1280]
    assert sd15[-1].block_name == "middle" and sd15[0].prefix == "diffusion_model.input_blocks.1.1.transformer_blocks.0"


def test_adapter_for_another_architecture_is_refused(real_unets):
    _, sdxl = real_unets["SDXL"]
    _, sd15 = real_unets["SD15"]
    with pytest.raises(AdapterMismatch, match=r"ip-adapter-faceid_sd15\.bin'.*does not fit the model SDXL"):
        _meta_adapter("sd15", "ip-adapter-faceid_sd15.bin").check_fits([s.slot for s in sdxl], "SDXL")
    with pytest.raises(AdapterMismatch, match=r"ip-adapter-faceid_sdxl\.bin'.*does not fit the model SD15"):
        _meta_adapter("sdxl", "ip-adapter-faceid_sdxl.bin").check_fits([s.slot for s in sd15], "SD15")


# -- identity modulation ----------------------------------------------------------------------

def _unit_rows(n, seed=0):
    e = torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=1, keepdim=True)


def test_modulation_defaults_change_nothing():
    e = _unit_rows(3)
    assert torch.equal(modulate_identity(e), e)


def test_modulation_rotation_keeps_magnitude_and_bounds_angle():
    e = _unit_rows(4) * 1.7
    angles = []
    for seed in range(20):
        out = modulate_identity(e, max_angle=30.0, seed=seed)
        assert torch.allclose(out.norm(dim=1), e.norm(dim=1), rtol=1e-6)
        cos = (out * e).sum(1) / (out.norm(dim=1) * e.norm(dim=1))
        angles.append(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))))
    angles = torch.stack(angles)
    assert angles.max() <= 30.0 + 1e-3 and angles.max() > 15.0  # uniform in [0, 30]: some draws are large
    assert torch.equal(modulate_identity(e, 30.0, seed=4), modulate_identity(e, 30.0, seed=4))
    assert not torch.equal(modulate_identity(e, 30.0, seed=4), modulate_identity(e, 30.0, seed=5))


def test_modulation_follows_the_reference_draws():
    """Angle θ ~ U[0, max] then a direction ~ N(0, I) from NumPy's legacy generator seeded with the seed, the
    direction made orthogonal to e; e' = |e|(cos θ ê + sin θ û). Face i of a batch = face i alone."""
    e = _unit_rows(2, seed=3)
    out = modulate_identity(e, max_angle=45.0, seed=7)
    for i in range(2):
        rng = np.random.RandomState(7)
        theta = rng.uniform(0, math.radians(45.0))
        d = rng.randn(512)
        v = e[i].numpy().astype(np.float64)
        u = d - d.dot(v) * v
        u /= np.linalg.norm(u)
        expected = np.cos(theta) * v + np.sin(theta) * u
        assert np.allclose(out[i].numpy(), expected, atol=1e-6)
        assert torch.equal(modulate_identity(e[i:i + 1], 45.0, seed=7)[0], out[i])


def test_modulation_opposite_and_scale():
    e = _unit_rows(2)
    assert torch.equal(modulate_identity(e, opposite=True), -e)
    assert torch.allclose(modulate_identity(e, scale=2.5), 2.5 * e)
    flipped = modulate_identity(e, max_angle=10.0, opposite=True, seed=1)
    assert ((flipped * e).sum(1) < -0.9).all()
    with pytest.raises(ValueError, match="max_angle"):
        modulate_identity(e, max_angle=200.0)
    with pytest.raises(ValueError, match=r"\[faces, dims\]"):
        modulate_identity(torch.zeros(512))


def test_adapter_type_is_a_dataclass_of_plain_tensors():
    adapter = load_faceid_adapter(str(adapter_path("golden")))
    assert isinstance(adapter, FaceIDAdapter)
    assert all(isinstance(v, torch.Tensor) for v in adapter.image_proj.values())
    assert os.path.basename(str(adapter_path("golden"))) == adapter.name
