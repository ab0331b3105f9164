"""RevPersAttributeText on ComfyUI's own CLIP classes (SD1 text encoder with the real CLIP tokenizer and a small
random-weight transformer): text is encoded exactly as CLIPTextEncode does; empty text is the reference's
zero conditioning (cross-attention tensor and pooled output)."""
import json
import os

import pytest
import torch


@pytest.fixture(scope="module")
def clip(comfy_inprocess, tmp_path_factory):
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    # the host's own SD1 text-encoder config (token ids etc. as that ComfyUI expects), shrunk
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        config = json.load(f)
    config.update({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                   "projection_dim": 32})
    path = tmp_path_factory.mktemp("clip") / "tiny_clip_config.json"
    path.write_text(json.dumps(config))

    class TinyClip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, **kwargs):
            super().__init__(device=device, dtype=dtype, clip_model=comfy.sd1_clip.SDClipModel,
                             textmodel_json_config=str(path))

    with torch.inference_mode():
        clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClip))
        g = torch.Generator().manual_seed(0)
        for p in clip.cond_stage_model.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return clip


def test_text_is_encoded_like_clip_text_encode(comfy_inprocess, clip):
    import nodes as comfy_nodes

    with torch.inference_mode():
        (ours,) = comfy_inprocess.nodes.modulation.RevPersAttributeText.execute(clip, "an old man")
        (theirs,) = comfy_nodes.CLIPTextEncode().encode(clip, "an old man")
    assert len(ours) == 1 and torch.equal(ours[0][0], theirs[0][0])
    assert torch.equal(ours[0][1]["pooled_output"], theirs[0][1]["pooled_output"])
    assert ours[0][0].abs().sum() > 0


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_zeros(comfy_inprocess, clip, text):
    import nodes as comfy_nodes

    with torch.inference_mode():
        (ours,) = comfy_inprocess.nodes.modulation.RevPersAttributeText.execute(clip, text)
        (empty,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
    cond, extra = ours[0]
    assert cond.shape == empty[0][0].shape and not cond.any()
    assert extra["pooled_output"].shape == empty[0][1]["pooled_output"].shape and not extra["pooled_output"].any()
    assert empty[0][0].abs().sum() > 0  # the encoding of "" itself is not zero: the zeros are deliberate
