"""Model calls counted AT THE MODEL (ComfyUI's model_function_wrapper): every step of the inversion and of
the anonymized sampling is ONE call carrying both branches and every face of the batch. The reference
runs faces one by one, two branches per call: faces × (N inversion + N generation) calls of 2 rows."""
import json
import re

import pytest
import torch

import oracle_model as om
from paths import artifact_dir


class CallCounter:
    def __init__(self):
        self.calls, self.rows, self.chunks = 0, 0, []

    def __call__(self, apply_model, args):
        self.calls += 1
        self.rows += int(args["input"].shape[0])
        self.chunks.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __deepcopy__(self, memo):  # a clone of the patched MODEL (ModelPatcher.clone) counts here too
        return self


@pytest.fixture(scope="module")
def setup(tiny_sdxl):
    x = om.latent("default")["samples"]
    faces = torch.cat([x, x.flip(-1), x.roll(3, -2)])  # three different "faces"
    e = om.identity_embedding()
    embeddings = torch.cat([e, e.roll(100, -1), -e])
    return {"base": tiny_sdxl["base"], "adapter": tiny_sdxl["adapter"], "faces": faces, "embeddings": embeddings}


def counted_run(pack, setup, faces, embeddings, steps, max_rows=0, face_guidance=""):
    node = pack.nodes.identity.RevPersIdentityConditioning
    inv_count, gen_count = CallCounter(), CallCounter()
    with torch.inference_mode():
        inv_model = node.execute(setup["base"], setup["adapter"], 1.0)[0].clone()
        id_model = node.execute(setup["base"], setup["adapter"], 1.0, embeddings)[0].clone()
        inv_model.set_model_unet_function_wrapper(inv_count)
        id_model.set_model_unet_function_wrapper(gen_count)
        pos, neg = om.conditioning("default", "inversion")
        record, _ = pack.nodes.inversion.RevPersInvert.execute(inv_model, {"samples": faces}, pos, neg, -10.0,
                                                               steps, 0.7, 0, max_rows)
        gpos, gneg = om.conditioning("default", "generation")
        out = pack.nodes.sampler.RevPersAnonymizedSampler.execute(id_model, gpos, gneg, record, -10.0, False,
                                                                  1024, face_guidance, max_rows)
        out = out[0]["samples"]
    return inv_count, gen_count, record, out


def test_one_model_call_per_step_for_all_faces_and_both_branches(pack, setup):
    steps, n_faces = 100, 3
    inv, gen, record, out = counted_run(pack, setup, setup["faces"], setup["embeddings"], steps)
    assert record.batch_size == n_faces and out.shape[0] == n_faces
    assert (inv.calls, inv.rows) == (steps, steps * 2 * n_faces)
    assert (gen.calls, gen.rows) == (steps, steps * 2 * n_faces)
    assert all(c == [1, 0] for c in inv.chunks + gen.chunks)  # one uncond and one cond chunk per call
    ref_calls, ref_rows = n_faces * 2 * steps, n_faces * 2 * steps * 2
    print(f"\n[model calls, N={steps}, {n_faces} faces] pack: inversion {inv.calls} calls / {inv.rows} rows, "
          f"sampling {gen.calls} calls / {gen.rows} rows, total {inv.calls + gen.calls} calls of {2 * n_faces} rows | "
          f"reference (face by face): {ref_calls} calls of 2 rows ({ref_rows} rows)")
    (artifact_dir("method") / "model_calls.json").write_text(json.dumps({
        "steps": steps, "faces": n_faces, "inversion_calls": inv.calls, "inversion_rows": inv.rows,
        "sampling_calls": gen.calls, "sampling_rows": gen.rows, "reference_calls": ref_calls,
        "reference_rows": ref_rows}, indent=1))
    assert inv.calls + gen.calls == ref_calls // n_faces


def test_batched_faces_match_faces_run_alone(pack, setup):
    """Face i of a batch gets what it gets alone, bit for bit: the same noise, the same identity tokens, and
    the UNet's per-row layers computed two rows at a time, the shape of one face alone (batched matrix
    products of other row counts round differently: without that, 5e-4 on the noise maps and 1.2e-3 on the
    result, measured here). A face given another face's identity differs by far more."""
    steps = 10
    _, _, batch_record, batch_out = counted_run(pack, setup, setup["faces"], setup["embeddings"], steps)
    for i in range(3):
        _, _, rec, out = counted_run(pack, setup, setup["faces"][i:i + 1], setup["embeddings"][i:i + 1], steps)
        assert torch.equal(rec.x_T[0], batch_record.x_T[i])
        assert torch.equal(rec.noise_maps[:, 0], batch_record.noise_maps[:, i])
        assert torch.equal(out[0], batch_out[i])
    _, _, _, swapped = counted_run(pack, setup, setup["faces"][:1], setup["embeddings"][1:2], steps)
    other_identity = (swapped[0] - batch_out[0]).abs().max().item()
    print(f"\n[batch vs alone, N={steps}] x_T, noise maps and results bit-identical; same face with another "
          f"identity: {other_identity:.3g}")
    assert other_identity > 0.1


def test_row_budget_takes_faces_in_chunks_with_the_results_of_one_batch(pack, setup):
    """max_rows 2: one face (both branches) per call, each face through all steps in turn; max_rows 4: chunks
    of 2 + 1 faces; 0 (automatic, on this CPU's free memory): one chunk. Every face's x_T, noise maps and
    result are bit-identical in all three, and per-face guidance lands on its face in its chunk."""
    steps = 6
    faces, embeddings = setup["faces"], setup["embeddings"]
    inv, gen, record, out = counted_run(pack, setup, faces, embeddings, steps, max_rows=2)
    assert (inv.calls, inv.rows, gen.calls, gen.rows) == (3 * steps, 3 * steps * 2, 3 * steps, 3 * steps * 2)
    inv4, gen4, record4, out4 = counted_run(pack, setup, faces, embeddings, steps, max_rows=4)
    assert (inv4.calls, inv4.rows, gen4.calls, gen4.rows) == (2 * steps, 3 * steps * 2, 2 * steps, 3 * steps * 2)
    auto_inv, auto_gen, whole_record, whole = counted_run(pack, setup, faces, embeddings, steps)
    assert (auto_inv.calls, auto_gen.calls) == (steps, steps)
    for chunked, rec in ((out, record), (out4, record4)):
        assert torch.equal(rec.x_T, whole_record.x_T) and torch.equal(rec.noise_maps, whole_record.noise_maps)
        assert torch.equal(chunked, whole)
    print(f"\n[row budget, N={steps}] 3 faces in chunks of 1, of 2 + 1 and in one batch: x_T, noise maps and "
          f"results bit-identical")
    _, _, _, stronger = counted_run(pack, setup, faces, embeddings, steps, max_rows=2, face_guidance="1:-14")
    assert torch.equal(stronger[0], out[0]) and torch.equal(stronger[2], out[2])
    assert (stronger[1] - out[1]).abs().max().item() > 0.1
    with pytest.raises(ValueError, match="max_rows 1 is out of range"):
        counted_run(pack, setup, faces, embeddings, steps, max_rows=1)


def test_interrupt_stops_between_steps(pack, setup):
    """Cancel pressed during a step: the run stops before the next model call (ComfyUI's interrupt exception)."""
    import comfy.model_management as mm

    counter = CallCounter()

    def press_cancel(apply_model, args):
        out = counter(apply_model, args)
        mm.interrupt_current_processing(True)
        return out

    try:
        with torch.inference_mode():
            model = pack.nodes.identity.RevPersIdentityConditioning.execute(setup["base"], setup["adapter"], 1.0)[0]
            model = model.clone()
            model.set_model_unet_function_wrapper(press_cancel)
            pos, neg = om.conditioning("default", "inversion")
            with pytest.raises(mm.InterruptProcessingException):
                pack.nodes.inversion.RevPersInvert.execute(model, om.latent("default"), pos, neg, -10.0, 10, 0.7, 0)
    finally:
        mm.interrupt_current_processing(False)
    assert counter.calls == 1


def test_face_guidance_samples_only_the_named_face_again(pack, setup):
    """Guaranteed mode's lever: face_guidance "1:-15" on the same inversion changes face 1 and leaves faces 0
    and 2 bit-identical, still in one model call per step; face 1 then matches a run where every face has
    -15. Bad texts are refused with the reason."""
    steps = 6
    _, _, record, plain = counted_run(pack, setup, setup["faces"], setup["embeddings"], steps)
    node = pack.nodes.identity.RevPersIdentityConditioning
    sampler = pack.nodes.sampler.RevPersAnonymizedSampler
    gpos, gneg = om.conditioning("default", "generation")

    def sample(guidance, face_guidance=""):
        count = CallCounter()
        with torch.inference_mode():
            model = node.execute(setup["base"], setup["adapter"], 1.0, setup["embeddings"])[0].clone()
            model.set_model_unet_function_wrapper(count)
            out = sampler.execute(model, gpos, gneg, record, guidance, False, 1024, face_guidance=face_guidance)
        latent = out[0]["samples"]
        return latent, count, out

    again, _, _ = sample(-10.0)
    assert torch.equal(again, plain)  # the same inversion replayed: deterministic
    retried, count, out = sample(-10.0, "1:-15")
    assert (count.calls, count.rows) == (steps, steps * 2 * 3)
    assert torch.equal(retried[0], plain[0]) and torch.equal(retried[2], plain[2])
    changed = (retried[1] - plain[1]).abs().max().item()
    strong, _, _ = sample(-15.0)
    assert changed > 1e-2 and torch.allclose(retried[1], strong[1], atol=1e-5, rtol=0)
    assert out.ui["text"] == ["per-face guidance: 1:-15 (the other faces: -10)"]
    for text, message in [("3:-12.5", "the sampler has 3 face(s)"), ("1:5", "cannot anonymize"),
                          ("one:-12", "is not ROW:SCALE"), ("0:-12, 0:-15", "names row 0 twice")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            sample(-10.0, text)
    print(f"\n[face_guidance] face 1 at -15 moved by {changed:.3g} (max-abs, latent); faces 0 and 2 bit-identical")
