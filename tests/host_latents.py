"""Run the reference case of the parity test (the oracle's tiny SDXL and FaceID adapter, inverted and
sampled through the pack's node classes) inside the ComfyUI named by COMFYUI_DIR and save what came
out: x_T, the noise maps and the final latent. Run as a child process by test_hosts_agree.py, once
per host, so the same code meets each host's own model classes.

    COMFYUI_DIR=/path/to/ComfyUI python tests/host_latents.py out.safetensors
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(out_path):
    import safetensors.torch
    import torch

    import oracle_model as om
    from inprocess import load_comfy_and_pack
    from test_parity_oracle import run_reference_case

    pack = load_comfy_and_pack()
    with torch.inference_mode():
        model = om.tiny_sdxl()
        record, x_T, final = run_reference_case(pack, model, "golden", om.CASES[0])
    safetensors.torch.save_file({"x_T": x_T.contiguous(), "noise_maps": record.noise_maps.contiguous(),
                                 "final": final.contiguous()}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
