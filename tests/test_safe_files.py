"""Files that must not be trusted by accident: stand-ins never replace a real model nor pass for one, and a
pickled FaceID adapter is only read on a torch that enforces weights_only (CVE-2025-32434). No server."""
import json
from pathlib import Path

import pytest
import torch

from revpers_cli import cli, models, standins
from revpers_cli.standins import store
from revpers_core import faceid


# --- stand-ins never replace a real file -----------------------------------------------------------

def test_the_generator_refuses_to_write_over_files_that_are_not_stand_ins(tmp_path):
    real = {
        tmp_path / standins.FACEID["sd15"]: b"PK real adapter bytes",
        tmp_path / standins.BUFFALO_DIR / "w600k_r50.onnx": b"real recognizer",
        tmp_path / standins.CHECKPOINTS["sd15"]: b"someone's own checkpoint under that name",
    }
    for path, data in real.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for make in (lambda: standins.generate_faceid(tmp_path, "sd15", log=lambda s: None),
                 lambda: standins.generate_buffalo(tmp_path, log=lambda s: None),
                 lambda: standins.generate_checkpoint(tmp_path, "sd15", log=lambda s: None)):
        with pytest.raises(standins.NotAStandin, match="is not a stand-in .* may be a real model"):
            make()
    assert all(path.read_bytes() == data for path, data in real.items())  # untouched
    assert not list(tmp_path.rglob("*.standin.json"))
    # from the command line the message is said and the exit code is not 0
    from revpers_cli.standins.__main__ import main
    with pytest.raises(SystemExit, match="not generating the SD15 stand-in checkpoint over .* is not a stand-in"):
        main(["--models", str(tmp_path), "--sd15", "--faceid"])


def test_what_marks_a_stand_in_and_that_a_stand_in_may_be_made_again(tmp_path):
    adapter = standins.generate_faceid(tmp_path, "sd15", log=lambda s: None)
    folder = standins.generate_buffalo(tmp_path, log=lambda s: None)
    assert store.standin_evidence(adapter) == "its marker ip-adapter-faceid_sd15.bin.standin.json"
    assert store.standin_evidence(folder / "det_10g.onnx") == "the folder's stand-in stamp buffalo_l.standin.json"
    (folder / "buffalo_l.standin.json").unlink()  # the stamp lost: the files still say what they are
    assert store.standin_evidence(folder / "det_10g.onnx") == "its ONNX producer name (revpers-standin)"
    # a checkpoint's safetensors header says so, with or without its marker
    ckpt = tmp_path / "checkpoints" / "mine.safetensors"
    ckpt.parent.mkdir()
    header = json.dumps({"__metadata__": {"revpers_standin": "sd15"}}).encode()
    ckpt.write_bytes(len(header).to_bytes(8, "little") + header)
    assert store.standin_evidence(ckpt) == "its safetensors header (revpers_standin: sd15)"
    plain = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    ckpt.write_bytes(len(plain).to_bytes(8, "little") + plain)
    assert store.standin_evidence(ckpt) is None
    # a stand-in (by any of these) may be generated again over itself
    adapter.write_bytes(b"damaged")
    standins.generate_faceid(tmp_path, "sd15", log=lambda s: None)
    assert adapter.stat().st_size == standins.SIZES["faceid-sd15"]
    standins.generate_buffalo(tmp_path, log=lambda s: None)
    assert (folder / "buffalo_l.standin.json").is_file()


def test_a_real_run_refuses_stand_in_files_by_name(tmp_path, capsys):
    """The local model check names each stand-in among the real files' names and how to get the real one;
    a workflow naming a stand-in checkpoint is refused before any server is asked."""
    folder = standins.generate_buffalo(tmp_path / "models", log=lambda s: None)
    adapter = tmp_path / "models" / "ipadapter" / "ip-adapter-faceid_sdxl.bin"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"PK")
    store.write_marker(adapter, "faceid-sdxl", 0)
    missing = {m.name: m for m in models.check(tmp_path / "models")}
    for name in ("ip-adapter-faceid_sdxl.bin", "det_10g.onnx", "w600k_r50.onnx"):
        assert "a STAND-IN with random weights" in missing[name].reason and "NOT the real model" in missing[name].reason
    text = models.describe_missing(list(missing.values()))
    assert "revpers models" in text and models.REGISTRY[1].source.url in text
    assert str(folder) in text

    photo = tmp_path / "p.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(photo)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": cli.STANDIN_CHECKPOINT["sd15"]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}))
    code = cli.main(["anonymize", str(photo), "-o", str(tmp_path / "o.png"), "--workflow", str(wf),
                     "--server", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_MISSING
    assert "revpers-standin-sd15.safetensors, a STAND-IN checkpoint with random weights" in err
    assert "`revpers models` downloads sd_xl_base_1.0.safetensors" in err and "cannot reach" not in err


# --- pickled adapters only on a torch that enforces weights_only ------------------------------------

def test_the_torch_versions_that_may_read_a_pickled_adapter():
    for version in ("2.6.0", "2.6.0+cu124", "2.14.1+cu130", "3.0.0a0"):
        assert faceid.pickle_loading_refusal("a.bin", version) is None
    for version in ("2.1.0", "2.5.1+cpu", "1.13.1", "not a version"):
        message = faceid.pickle_loading_refusal("a.bin", version)
        assert f"torch {version} does not enforce weights_only safely (CVE-2025-32434" in message
        assert "Upgrade torch to 2.6 or later" in message and ".safetensors conversion" in message


def test_a_bin_adapter_is_refused_on_old_torch_and_its_safetensors_conversion_loads(tmp_path, monkeypatch):
    """The loader itself on a torch that reports 2.5.1: the .bin is refused before it is opened; the same
    weights as .safetensors load (safetensors never runs code)."""
    from safetensors.torch import save_file

    path = standins.generate_faceid(tmp_path, "sd15", log=lambda s: None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    flat = {f"{section}.{k}": v.contiguous() for section in ("image_proj", "ip_adapter")
            for k, v in state[section].items()}
    converted = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    save_file(flat, str(converted))
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ValueError, match=r"torch 2\.5\.1 does not enforce weights_only safely") as e:
        faceid.load_faceid_adapter(str(path))
    assert "ip-adapter-faceid_sd15.bin" in str(e.value)
    adapter = faceid.load_faceid_adapter(str(converted))
    assert adapter.has_lora and adapter.num_tokens == 4
    monkeypatch.undo()
    assert faceid.load_faceid_adapter(str(path)).describe().split("' ")[1] == adapter.describe().split("' ")[1]
    assert Path(path).is_file()
