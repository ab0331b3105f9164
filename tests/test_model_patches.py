"""What the FaceID patches cost, counted on the oracle's tiny SDXL inside ComfyUI: the LoRA is held as the
file's own low-rank factors (bytes counted in the host's patches), the identity attention keeps only the
projected keys and values of its token sets, and a warm re-run of a prompt loads and patches nothing (host
load events and weight patch computations counted). Runs on the host the tests use (COMFYUI_DIR)."""
import logging

import pytest
import torch

import oracle_model as om


def tensors_in(value, seen=None):
    """Every tensor reachable from a patch entry (tuples, lists, dicts, objects holding `weights`)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        if id(value) not in seen:
            seen.add(id(value))
            yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v, seen)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v, seen)
    elif hasattr(value, "weights"):  # a weight adapter (current ComfyUI's LoRA patch)
        yield from tensors_in(value.weights, seen)


def lora_tensors(model, base):
    """The tensors the FaceID LoRA added to ``model`` over ``base``: in its weight patches ("merge") and in
    its LoraForward object patches ("low-rank")."""
    from revpers_core.faceid import LoraForward

    added = [entry for key, entries in model.patches.items() for entry in entries[len(base.patches.get(key, [])):]]
    forwards = [p for p in model.object_patches.values() if isinstance(p, LoraForward)]
    return list(tensors_in([entry[1] for entry in added] + [(f.up, f.down) for f in forwards])), added, forwards


@pytest.mark.parametrize("mode", ["merge", "low-rank"])
def test_the_lora_is_held_as_the_files_low_rank_factors(pack, tiny_sdxl, mode):
    """However the FaceID LoRA goes on the MODEL (ComfyUI's weight patches, merged when it loads the model, or
    added at run time by each projection), the MODEL holds exactly the file's LoRA tensors (the same
    storage, no product up·down formed, no copy): their bytes equal the file's LoRA bytes. Two patched MODELs
    (the inversion's and the identity one) share them."""
    ia = pack.nodes._identity_attention
    adapter, base = tiny_sdxl["adapter"], tiny_sdxl["base"]
    assert ia.lora_mode(base) == "low-rank"  # the CPU: load and offload device are one
    file_ptrs = {t.data_ptr() for p in adapter.processors.values() for k, t in p.items() if "_lora." in k}
    pair = [ia.apply_faceid(base, adapter, e, 1.0, lora=mode) for e in (None, om.identity_embedding())]
    for model in pair:
        held, added, forwards = lora_tensors(model, base)
        assert {t.data_ptr() for t in held} == file_ptrs
        assert sum(t.numel() * t.element_size() for t in held) == adapter.lora_bytes()
        rank = adapter.processors[0]["to_q_lora.down"].shape[0]
        assert all(t.ndim == 2 and min(t.shape) == rank for t in held)  # low-rank factors, not full deltas
        if mode == "merge":
            assert added and not forwards
        else:
            assert forwards and not added and model.patches_uuid == base.patches_uuid  # no weight is patched
    weight_bytes = sum(base.model.state_dict()[k].numel() * 4 for k in pair[0].patches)
    print(f"\n[FaceID LoRA, {mode}] held {adapter.lora_bytes()} bytes (the file's factors) for weights of "
          f"{weight_bytes} bytes")
    assert pair[0].patches_uuid == pair[1].patches_uuid  # ComfyUI sees the same weights


def test_a_float16_lora_is_cast_at_each_call_of_a_float32_run_and_holds_only_the_files_bytes(pack, tiny_sdxl):
    """A float16 file's LoRA added at run time by a model computing in float32 (the CPU): each call casts the
    pair it uses, bit for bit the float16 factors' values, and nothing stays behind: after any number of calls
    the adapter holds the same float16 tensors (the file's bytes, in the same memory), for the projections of
    the image and for the keys and values of the text context alike."""
    import torch.nn.functional as F

    from revpers_core.faceid import LoraForward, load_faceid_adapter

    ia = pack.nodes._identity_attention
    adapter = load_faceid_adapter(str(om.adapter_path("golden")))  # its own copy: this test changes it
    for p in adapter.processors.values():
        for k in [k for k in p if "_lora." in k]:
            p[k] = p[k].half()  # as the real files hold it
    half_bytes = adapter.lora_bytes()
    model = ia.apply_faceid(tiny_sdxl["base"], adapter, om.identity_embedding(), 1.0, lora="low-rank")
    forwards = [p for p in model.object_patches.values() if isinstance(p, LoraForward)]
    held = [(f.up, f.down) for f in forwards]
    image = next(f for f in forwards if not f.reads_context)
    context = next(f for f in forwards if f.reads_context)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, image.down.shape[1], generator=g)
    c = torch.randn(2, 5, context.down.shape[1], generator=g)
    with torch.inference_mode():
        for f, inputs in ((image, x), (context, c)):
            want = f.forward(inputs) + F.linear(F.linear(inputs, f.down.float()), f.up.float())
            for _ in range(2):
                assert torch.equal(f(inputs), want)
    assert all(f.up is up and f.down is down for f, (up, down) in zip(forwards, held))  # nothing widened or replaced
    assert all(t.dtype == torch.float16 for pair in held for t in pair)
    assert adapter.lora_bytes() == half_bytes


def test_the_loaded_lora_factors_share_one_block_of_memory():
    """A loaded adapter holds its LoRA factors in one block of memory of its own (not the file's mapping),
    exactly the file's bytes: no holes left in the heap by a few hundred small copies."""
    from revpers_core.faceid import load_faceid_adapter

    adapter = load_faceid_adapter(str(om.adapter_path("golden")))
    factors = [t for p in adapter.processors.values() for k, t in p.items() if "_lora." in k]
    assert factors
    storages = {t.untyped_storage().data_ptr() for t in factors}
    assert len(storages) == 1 and factors[0].untyped_storage().nbytes() == adapter.lora_bytes()
    from safetensors.torch import load_file
    file = load_file(str(om.adapter_path("golden")))
    assert all(torch.equal(t, file[f"ip_adapter.{n}.{k}.weight"]) for n, p in adapter.processors.items()
               for k, t in p.items() if "_lora." in k)


def test_the_loras_products_of_the_text_context_are_formed_once_per_run_bit_for_bit():
    """A cross-attention's key and value projections take the text context, the same at every step: while a
    run keeps them, the LoRA's product of a context is formed at its first call only, for a copy of it too
    (told apart by value) and for a batch repeating its rows (a chunk of faces with one prompt); each call
    gives bit for bit what forming it at that call gives. Another context is formed anew; what is kept is
    bounded (bytes, contexts) and goes when the run ends; projections of the image (queries, self-attention)
    and calls outside a run keep nothing."""
    import torch.nn.functional as F

    from revpers_core import faceid
    from revpers_core.faceid import LoraForward, load_faceid_adapter

    adapter = load_faceid_adapter(str(om.adapter_path("golden")))
    n = next(n for n, p in adapter.processors.items() if n % 2 == 1 and "to_k_lora.up" in p)
    width, dim = adapter.processors[n]["to_k_lora.up"].shape[0], adapter.processors[n]["to_k_lora.down"].shape[1]
    g = torch.Generator().manual_seed(0)
    projection = torch.nn.Linear(dim, width)
    keys = LoraForward(projection.forward, adapter, n, "to_k")
    queries = LoraForward(projection.forward, adapter, n, "to_q")
    assert keys.reads_context and not queries.reads_context
    a, b, c = (torch.randn(1, 7, dim, generator=g) for _ in range(3))
    context, chunk, other = torch.cat([a, b]), torch.cat([a, a, b, b]), torch.cat([c, b])

    def fresh(f, x):  # what the call forms without anything kept
        return f.forward(x) + F.linear(F.linear(x, f.down.float()), f.up.float())

    store = adapter.context_products
    with torch.inference_mode():
        for _ in range(2):  # outside a run: formed at every call, nothing kept
            assert torch.equal(keys(context), fresh(keys, context))
        assert store.formed == 2 and store.nbytes == 0
        with store.kept():
            for x, formed in ((context, 3), (context, 3), (context.clone(), 3), (chunk, 3), (other, 4),
                              (context, 4)):
                assert torch.equal(keys(x), fresh(keys, x)) and store.formed == formed
            assert torch.equal(queries(context), fresh(queries, context)) and store.formed == 4  # not kept
            held = store.nbytes
            assert 0 < held <= faceid.CONTEXT_PRODUCT_BYTES
            for i in range(faceid.CONTEXT_ENTRIES + 2):  # more contexts than a run keeps: the oldest go
                keys(torch.randn(2, 7, dim, generator=g))
            assert len(store._entries) == faceid.CONTEXT_ENTRIES
        assert store.nbytes == 0 and store._last is None  # the run ended: all of it went
        store.max_bytes, formed = 1, store.formed  # a context that does not fit: formed at every call
        with store.kept():
            for _ in range(2):
                assert torch.equal(keys(context), fresh(keys, context))
            assert store.formed == formed + 2 and store.nbytes == 0
            assert store._last[0] is context and store._last[1] is None  # told once per call, not per layer


def plain_sample(model, seed=0):
    """ComfyUI's own sampler on ``model`` (2 steps of euler, cfg 2, the oracle's latent and conditioning)."""
    import comfy.sample

    pos, neg = om.conditioning("default", "generation")
    x = om.latent("default")["samples"]
    return comfy.sample.sample(model, comfy.sample.prepare_noise(x, seed), 2, 2.0, "euler", "normal", pos, neg, x,
                               denoise=1.0, disable_pbar=True, seed=seed)


def test_both_lora_modes_sample_alike_and_the_base_model_is_left_as_it_was(pack, tiny_sdxl):
    """The LoRA added at run time gives what ComfyUI's merged weights give (to float rounding), through the
    whole aligned-face prompt and through ComfyUI's own sampler; and after either ran, the base MODEL samples
    bit for bit what it sampled before (no LoRA forward is left on it when ComfyUI loads it again)."""
    ia = pack.nodes._identity_attention
    adapter, base, e = tiny_sdxl["adapter"], tiny_sdxl["base"], om.identity_embedding()
    with torch.inference_mode():
        before = plain_sample(base)
        runs = {}
        for mode in ("low-rank", "merge"):
            models = {"inversion": ia.apply_faceid(base, adapter, None, 1.0, lora=mode),
                      "identity": ia.apply_faceid(base, adapter, e, 1.0, lora=mode)}
            runs[mode] = (prompt(pack, models, 0), plain_sample(models["inversion"]))
            assert torch.equal(plain_sample(base), before)
    for (low, merged), what in zip(zip(*runs.values()), ("prompt", "ComfyUI sampler")):
        err = (low - merged).abs().max().item()
        print(f"\n[LoRA modes] {what}: low-rank vs merged max abs {err:.2e}, vs the base "
              f"{(low - before).abs().max().item() if what != 'prompt' else float('nan'):.2e}")
        assert err <= 1e-4 * merged.abs().max().item()  # float32 re-association, amplified by the guidance
    assert (runs["low-rank"][1] - before).abs().max() > 1e-2  # the LoRA is on while sampling


class LoadEvents(logging.Handler):
    """The host's own record of model loads: its "Requested to load" log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.loads = []

    def emit(self, record):
        if record.getMessage().startswith("Requested to load"):
            self.loads.append(record.getMessage())


@pytest.fixture
def host_events(monkeypatch):
    """Counts the host's load events and its weight patch computations (ModelPatcher.patch_weight_to_device,
    called through) while a test runs."""
    import comfy.model_patcher

    events = LoadEvents()
    root = logging.getLogger()
    level = root.level
    root.addHandler(events)
    root.setLevel(logging.INFO)
    events.patched = []
    original = comfy.model_patcher.ModelPatcher.patch_weight_to_device

    def counting(patcher, key, *args, **kwargs):
        if key in patcher.patches:  # the host calls it for every weight and returns at once for unpatched ones
            events.patched.append(key)
        return original(patcher, key, *args, **kwargs)

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "patch_weight_to_device", counting)
    try:
        yield events
    finally:
        root.removeHandler(events)
        root.setLevel(level)


def prompt(pack, models, seed):
    """What one prompt of the aligned-face workflow runs after its cached nodes: Invert, then the sampler."""
    pos, neg = om.conditioning("default", "inversion")
    record, _ = pack.nodes.inversion.RevPersInvert.execute(models["inversion"], om.latent("default"), pos, neg,
                                                           -10.0, 3, 0.7, seed)
    gpos, gneg = om.conditioning("default", "generation")
    out = pack.nodes.sampler.RevPersAnonymizedSampler.execute(models["identity"], gpos, gneg, record, -10.0, False,
                                                              1024)
    return out[0]["samples"]


def test_one_unet_for_both_runs_and_a_warm_rerun_loads_and_patches_nothing(pack, tiny_sdxl, host_events):
    """The inversion's model and the identity model are two clones (two node outputs); the sampler runs on the
    UNet the inversion loaded and patched, and a re-run of the prompt (a new seed: ComfyUI's cache keeps the
    patched MODELs) makes no load event and no weight patch computation at all."""
    models = {"inversion": tiny_sdxl["inversion"], "identity": tiny_sdxl["identity"]}
    with torch.inference_mode():
        first = prompt(pack, models, 0)
        first_loads, first_patched = len(host_events.loads), len(host_events.patched)
        assert first_loads <= 1 and first_patched in (0, len(models["inversion"].patches))
        again = prompt(pack, models, 0)
        rerun = prompt(pack, models, 1)
    assert torch.equal(first, again) and not torch.equal(first, rerun)
    assert len(host_events.loads) == first_loads and len(host_events.patched) == first_patched
    print(f"\n[loads] first prompt: {first_loads} load event(s), {first_patched} weights patched; two re-runs: none")


def test_a_run_forms_the_loras_products_of_its_text_context_once(pack, tiny_sdxl):
    """Through the aligned-face prompt (the inversion, then the anonymized sampler, each one call per step with
    both branches), the LoRA's products of the text context are formed once per run and projection, not at
    every call; the result is bit for bit what forming them at every call gives, and nothing is kept once
    the prompt is done."""
    from revpers_core import faceid

    models = {"inversion": tiny_sdxl["inversion"], "identity": tiny_sdxl["identity"]}
    adapter = tiny_sdxl["adapter"]
    store, projections = adapter.context_products, len(adapter.context_widths())
    calls = []
    with torch.inference_mode():
        for max_bytes in (faceid.CONTEXT_PRODUCT_BYTES, 0):  # kept; then too little room: formed at every call
            store.max_bytes, before = max_bytes, store.formed
            try:
                calls.append((prompt(pack, models, 0), store.formed - before))
            finally:
                store.max_bytes = faceid.CONTEXT_PRODUCT_BYTES
            assert store.nbytes == 0
    (kept, formed), (every, formed_every) = calls
    print(f"\n[context products] {projections} projections take the text context: formed {formed} times in a "
          f"prompt while kept, {formed_every} times formed at every call")
    assert torch.equal(kept, every)
    assert formed == 2 * projections  # two runs, one context each
    assert formed_every > formed and formed_every % projections == 0


def test_identity_attention_keeps_only_projected_keys_and_values(pack, tiny_sdxl):
    """After a run the identity attention holds K and V of each token set (null + one per distinct face) per
    layer, nothing per call and no copy of the adapter's weights; the same tensors serve every call."""
    adapter, node, e = tiny_sdxl["adapter"], tiny_sdxl["node"], om.identity_embedding()
    with torch.inference_mode():
        model = node.execute(tiny_sdxl["base"], adapter, 1.0, torch.cat([e, e, -e]))[0]
        tokens = pack.nodes._identity_attention.identity_of(model)
        x = om.latent("default")["samples"]
        inv_model = tiny_sdxl["inversion"]
        pos, neg = om.conditioning("default", "inversion")
        record, _ = pack.nodes.inversion.RevPersInvert.execute(inv_model, {"samples": torch.cat([x, x, x])}, pos,
                                                               neg, -10.0, 2, 0.7, 0)
        gpos, gneg = om.conditioning("default", "generation")
        pack.nodes.sampler.RevPersAnonymizedSampler.execute(model, gpos, gneg, record, -10.0, False, 1024)
    sets = 3  # the null set, e, -e (faces 0 and 1 share e)
    inner = sum(adapter.identity_weights(b)[0].shape[0] for b in range(adapter.num_blocks))
    per_set = 2 * adapter.num_tokens * inner * 4  # K and V, float32
    assert tokens.token_sets.shape[0] == sets and tokens.held_bytes() == sets * per_set
    first = tokens.keys_values(0, [False, True], 3, "cpu", torch.float32)
    assert tokens.keys_values(0, [False, True], 3, "cpu", torch.float32)[0] is first[0]
    assert torch.equal(first[0][3], first[0][4]) and not torch.equal(first[0][3], first[0][5])  # e, e, -e


def test_the_patches_wrap_the_models_own_forwards_whatever_clone_is_loaded(pack, tiny_sdxl):
    """The run-time LoRA and the row pairing wrap the forward the input MODEL itself runs for each layer: its
    own object patch there (another node's, kept under ours), else the layer's own. What a different clone
    has put on the live model at that moment (another extension's patch, loaded by ComfyUI) is not taken."""
    import comfy.utils

    from revpers_core.faceid import LoraForward
    from revpers_core.row_budget import RowPairs

    ia = pack.nodes._identity_attention
    adapter, base, e = tiny_sdxl["adapter"], tiny_sdxl["base"], om.identity_embedding()
    ours = ia.apply_faceid(base, adapter, e, 1.0, lora="low-rank")
    lora_key = next(k for k, p in ours.object_patches.items() if isinstance(p, LoraForward))
    row_key = next(k for k, p in ours.object_patches.items() if isinstance(p, RowPairs))

    def other_extension(x, *args, **kwargs):  # another node's object patch on those layers
        return x.new_zeros(())

    foreign = base.clone()
    for key in (lora_key, row_key):
        foreign.add_object_patch(key, other_extension)
    foreign.patch_model()  # ComfyUI has that clone loaded: the live layers run other_extension
    try:
        assert comfy.utils.get_attr(base.model, lora_key) is other_extension
        while_loaded = ia.apply_faceid(base, adapter, e, 1.0, lora="low-rank")
    finally:
        foreign.unpatch_model()
    for key in (lora_key, row_key):
        inner = while_loaded.object_patches[key].forward
        assert inner is not other_extension and inner == ours.object_patches[key].forward
        assert inner.__self__ is comfy.utils.get_attr(base.model, key[:-len(".forward")])  # the layer's own
    assert while_loaded.object_patches[lora_key] == ours.object_patches[lora_key]  # so one loaded UNet serves both

    stacked = ia.apply_faceid(foreign, adapter, e, 1.0, lora="low-rank")  # the input MODEL's own patches
    assert all(stacked.object_patches[key].forward is other_extension for key in (lora_key, row_key))
