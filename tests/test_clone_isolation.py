"""A MODEL the pack patched and the clones made of it share nothing a run changes, on every host.

ComfyUI's ``clone()`` copies ``model_options`` to a depth that differs between releases (a deep copy on
0.3.75, a copy of the lists and dicts only on 0.33), so the objects the pack keeps there (the identity
attention, its tokens) are shared between a model and its clones on some hosts. Here clones of the
inversion's and the identity model are run the way the pack's own runs change models: the faces taken in
chunks (a window per call), per-face guidance, on the clone ComfyUI has loaded (the twin whose options the
run borrows). Checked while the clones run and after: the base model, the inversion's and the identity
model hold exactly what they held (model options, object patches, weight patches, and the state of every
object of the pack inside them, its public attributes; underscored ones are caches of values computed from
those; the FaceID adapter, the loaded file, by identity), and they compute bit for bit what they computed
before.

The one model whose options a run borrows while it lasts is the loaded twin (nodes/_diffusion_runs.py):
its state is checked after the run, not during it."""
import hashlib

import pytest
import torch

import oracle_model as om

STEPS = 4


def _fingerprint(value, depth=0):
    """A comparable picture of ``value``: containers walked, tensors by dtype, shape and bytes, objects of
    the pack by identity and their public attributes, any other object by identity."""
    if depth > 12:
        raise AssertionError("model options nested deeper than expected")
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), _fingerprint(v, depth + 1)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_fingerprint(v, depth + 1) for v in value))
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            return ("meta tensor", str(value.dtype), tuple(value.shape))
        data = value.detach().to("cpu").contiguous()
        digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
        return ("tensor", str(data.dtype), tuple(data.shape), digest)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
        return repr(value)
    kind = type(value)
    if kind.__name__ == "FaceIDAdapter":  # the loaded file, shared by every model it is put on, like the weights
        return (kind.__name__, id(value))
    if "revpers" in kind.__module__ or kind.__module__.startswith("nodes."):
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        return (kind.__name__, id(value), _fingerprint(public, depth + 1))
    return (kind.__name__, id(value))


def state(patcher):
    return _fingerprint({"model_options": patcher.model_options, "object_patches": patcher.object_patches,
                         "patches": patcher.patches, "patches_uuid": str(patcher.patches_uuid)})


def loaded(patcher):
    import comfy.model_management
    return any(m.model is patcher for m in comfy.model_management.current_loaded_models)


@pytest.fixture(scope="module")
def three_faces():
    x = om.latent("default")["samples"]
    e = om.identity_embedding()
    return torch.cat([x, x.flip(-1), x.roll(3, -2)]), torch.cat([e, e.roll(100, -1), -e])


def _runs(pack, inversion, identity, faces, max_rows=0, row_scales=None, on_step=None):
    runs = pack.nodes._diffusion_runs
    pos, neg = om.conditioning("default", "inversion")
    gpos, gneg = om.conditioning("default", "generation")
    record, _ = runs.run_inversion(inversion, faces, pos, neg, -10.0, STEPS, 0.7, 0, on_step=on_step,
                                   max_rows=max_rows)
    out = runs.run_sampling(identity, record, gpos, gneg, -10.0, on_step=on_step, row_scales=row_scales,
                            max_rows=max_rows)
    return record, out


def test_clones_run_in_chunks_with_per_face_guidance_leave_their_sources_as_they_were(pack, tiny_sdxl,
                                                                                       three_faces):
    ia = pack.nodes._identity_attention
    faces, embeddings = three_faces
    with torch.inference_mode():
        base = tiny_sdxl["base"].clone()
        base_state = state(base)
        inversion = ia.apply_faceid(base, tiny_sdxl["adapter"], None, 1.0)
        identity = ia.apply_faceid(base, tiny_sdxl["adapter"], embeddings, 1.0)
        assert state(base) == base_state
        sources = {"base": base, "inversion": inversion, "identity": identity}
        # the sources' own runs first: ComfyUI then has one of them loaded, the twin the clones' runs borrow
        record, out = _runs(pack, inversion, identity, faces)
        before = {name: state(m) for name, m in sources.items()}

        during = []

        def look(done, total):
            during.append({name: state(m) for name, m in sources.items() if not loaded(m)})

        clones = {"inversion": inversion.clone(), "identity": identity.clone()}
        scales = [-10.0, -12.5, -10.0]  # the second face guided harder, as guaranteed mode re-samples it
        chunked_record, chunked_out = _runs(pack, clones["inversion"], clones["identity"], faces, max_rows=2,
                                            row_scales=scales, on_step=look)
        assert chunked_record.batch_size == 3 and chunked_out.shape[0] == 3
        assert len(during) >= 2 * 2 * STEPS  # every step of the two chunks (two faces, then one) of each run
        assert all(during_one[name] == before[name] for during_one in during for name in during_one), \
            "a source model changed while a clone of it was running"
        assert {name: state(m) for name, m in sources.items()} == before, \
            "a source model kept something of a clone's run"

        again_record, again_out = _runs(pack, inversion, identity, faces)
    assert torch.equal(again_record.noise_maps, record.noise_maps) and torch.equal(again_record.x_T, record.x_T)
    assert torch.equal(again_out, out)
    # the clones' runs were runs of the same method: face 0 and 2 (same guidance) came out as in one batch
    assert torch.equal(chunked_out[[0, 2]], out[[0, 2]]) and not torch.equal(chunked_out[1], out[1])


def test_a_clone_patched_again_by_another_node_leaves_the_source_alone(pack, tiny_sdxl, three_faces):
    """What other nodes do to a clone of our MODEL (another attn2 replacement, an object patch, a weight
    patch, a post-CFG function) stays in the clone."""
    ia = pack.nodes._identity_attention
    _, embeddings = three_faces
    with torch.inference_mode():
        identity = ia.apply_faceid(tiny_sdxl["base"], tiny_sdxl["adapter"], embeddings, 1.0)
        before = state(identity)
        other = identity.clone()
        other.set_model_attn2_replace(lambda q, k, v, extra: q, "middle", 0, 0)
        other.add_object_patch("diffusion_model.out.2.forward", torch.nn.Identity())
        key = "diffusion_model.middle_block.1.proj_in.weight"
        other.add_patches({key: (torch.zeros_like(other.model.state_dict()[key]),)}, 0.5)
        other.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
        other.model_options["transformer_options"]["patches_replace"]["attn2"].clear()
    assert state(identity) == before
    assert ia.identity_of(identity) is not None and ia.identity_of(other) is None
