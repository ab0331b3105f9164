"""What the server benchmarks share: a real ComfyUI started as the SDXL headless tests start it (CPU,
full-size SDXL stand-in, UNet in bf16, PyTorch attention), the server process's resident memory read
from /proc, the graphs (the pack's shipped workflows with their test-time settings, and plain core
workflows built from ComfyUI's own nodes on the same checkpoint), and small statistics.

Memory figures are the server process's own: VmRSS (resident now) and VmHWM (the peak since start, or
since `reset_peak`, which writes 5 to /proc/PID/clear_refs, Linux's reset of the high-water mark).
Not a test module: nothing here asserts a figure.
"""
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

SERVER_ARGS = ["--cpu", "--use-pytorch-cross-attention", "--bf16-unet", "--disable-auto-launch"]
CHECKPOINT = "revpers-standin-sdxl.safetensors"
PHOTO_SIZE = (240, 160)
PHOTO_FACES = [((70, 80), 28, 11), ((170, 76), 24, 22)]  # as tests/test_workflows_headless.py
ALIGNED_FACE = [((32, 33), 22, 5)]


def server_args(gpu=False):
    """main.py arguments of a benchmark server: SERVER_ARGS, without --cpu when it is to run on the GPU
    (the UNet stays in bf16 there too: the stand-in's random weights overflow float16)."""
    return [a for a in SERVER_ARGS if not (gpu and a == "--cpu")]


def gib(n_bytes):
    return round(n_bytes / 2 ** 30, 2)


def median(values):
    return statistics.median(values) if values else float("nan")


# --- the server -----------------------------------------------------------------------------------

def ensure_standins(models_dir, log=print):
    """The SDXL stand-in checkpoint, its FaceID adapter and buffalo_l in `models_dir` (generated once)."""
    from revpers_cli import standins

    standins.generate(models_dir, checkpoints=("sdxl",), faceid=True, buffalo=True, seed=0, log=log)


# The SDXL transformer blocks in the IP-Adapter's processor order (input blocks, output blocks, middle
# block; see nodes/_unet_sites.py), as (block list, block index, transformer blocks in it).
SDXL_TRANSFORMERS = ([("input_blocks", i, 2) for i in (4, 5)] + [("input_blocks", i, 10) for i in (7, 8)]
                     + [("output_blocks", i, 10) for i in (0, 1, 2)] + [("output_blocks", i, 2) for i in (3, 4, 5)]
                     + [("middle_block", None, 10)])
FACEID_LORA = "revpers-bench-faceid-lora.safetensors"


def write_faceid_lora(models_dir, log=print):
    """The FaceID stand-in's own LoRA factors as a LoRA file ComfyUI's LoraLoader reads
    (loras/FACEID_LORA, `lora_unet_<weight key>.lora_up/.lora_down` names): the core workflows can then
    carry the same LoRA, merged by ComfyUI's own loader. Written once, from the adapter file."""
    import torch
    from safetensors.torch import save_file

    path = Path(models_dir) / "loras" / FACEID_LORA
    if path.is_file():
        return path
    state = torch.load(Path(models_dir) / "ipadapter" / "ip-adapter-faceid_sdxl.bin", map_location="cpu",
                       weights_only=True)["ip_adapter"]
    blocks = [f"{attr}_{i}_1" if i is not None else f"{attr}_1" for attr, i, depth in SDXL_TRANSFORMERS
              for _ in range(depth)]
    depth_index = [j for _, _, depth in SDXL_TRANSFORMERS for j in range(depth)]
    out = {}
    for b, (block, j) in enumerate(zip(blocks, depth_index)):
        for attn, n in (("attn1", 2 * b), ("attn2", 2 * b + 1)):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                name = f"lora_unet_{block}_transformer_blocks_{j}_{attn}_{proj}{'_0' if proj == 'to_out' else ''}"
                out[f"{name}.lora_up.weight"] = state[f"{n}.{proj}_lora.up.weight"].contiguous()
                out[f"{name}.lora_down.weight"] = state[f"{n}.{proj}_lora.down.weight"].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    log(f"  {path}: the FaceID stand-in's LoRA ({len(out) // 2} layers) for ComfyUI's LoraLoader")
    return path


class BenchServer:
    """A ComfyUI server for one benchmark (the pack linked into `comfyui`), and a client for it."""

    def __init__(self, comfyui, models_dir, workdir, extra_args=(), env=None, gpu=False):
        from revpers_cli.api import ComfyClient
        from revpers_cli.host import ComfyHost

        workdir = Path(workdir)
        self.host = ComfyHost(comfyui, python=sys.executable, extra_args=server_args(gpu) + list(extra_args),
                              models_dir=models_dir, input_dir=workdir / "input", output_dir=workdir / "output",
                              log_path=workdir / "comfyui.log", startup_timeout=300, env=env)
        self.host.start()
        try:
            self.client = ComfyClient(self.host.url, timeout=60)
        except BaseException:
            self.host.stop()  # no server left running behind a benchmark that failed to start
            raise

    @property
    def pid(self):
        return self.host.process.pid

    def _status(self, field):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def rss(self):
        """Resident memory of the server process now, bytes."""
        return self._status("VmRSS")

    def rss_parts(self):
        """(anonymous, file-backed) resident memory of the server now, bytes: what the process itself holds,
        and the pages of files it maps (the checkpoint's, libraries'), which the kernel may drop and read again."""
        return self._status("RssAnon"), self._status("RssFile")

    def peak(self):
        """The server process's resident high-water mark (since start or the last `reset_peak`), bytes."""
        return self._status("VmHWM")

    def reset_peak(self):
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def upload(self, rgb, stem):
        return self.client.upload_image(png_bytes(rgb), f"{stem}-{uuid.uuid4().hex[:8]}.png")

    def run(self, graph, timeout=3600):
        """Queue a graph, wait for it; returns (RunResult, wall seconds). Raises when it failed. The seconds
        each node took (from one `executing` event to the next, as the client received them) are left in
        `self.node_seconds` as {class_type: seconds}."""
        marks = []
        t0 = time.monotonic()
        result = self.client.run(graph, timeout=timeout,
                                 on_event=lambda kind, data: marks.append((time.monotonic(), kind, data)))
        seconds = time.monotonic() - t0
        if result.status != "success":
            raise RuntimeError(f"the benchmark's prompt failed: {result.message}\n{self.host.log_tail()}")
        self.node_seconds = node_seconds(graph, marks, t0 + seconds)
        return result, seconds

    def log_count(self, text):
        """How often `text` occurs in the server's log so far."""
        return Path(self.host.log_path).read_text(errors="replace").count(text)

    def close(self):
        self.client.close()
        self.host.stop()


class GpuMemory:
    """The card's used memory (nvidia-smi's memory.used, the whole GPU: the server is its only user), read
    every 50 ms by nvidia-smi's own loop in a thread. `now()` is the last reading, `peak()` the highest
    since start or `reset_peak()`; bytes. It sees what the CUDA driver holds: the context and PyTorch's
    caching allocator's reserved blocks, so it is what the card must have free, not what tensors hold."""

    def __init__(self, index=0, period_ms=50):
        import threading

        self._proc = subprocess.Popen(["nvidia-smi", f"--id={index}", "--query-gpu=memory.used",
                                       "--format=csv,noheader,nounits", f"--loop-ms={period_ms}"],
                                      stdout=subprocess.PIPE, text=True)
        self._last = self._high = None
        self._seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._seen.wait(10):
            self.close()  # its loop would run on after this benchmark
            raise RuntimeError("nvidia-smi gave no memory reading within 10 s")

    def _read(self):
        for line in self._proc.stdout:
            try:
                value = int(line.strip()) * 2 ** 20
            except ValueError:
                continue
            self._last = value
            self._high = value if self._high is None else max(self._high, value)
            self._seen.set()

    def settle(self, seconds=0.3):
        """Wait for readings taken after now (the loop's period is far shorter)."""
        time.sleep(seconds)

    def now(self):
        self.settle()
        return self._last

    def peak(self):
        self.settle()
        return self._high

    def reset_peak(self):
        self.settle()
        self._high = self._last

    def close(self):
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def node_seconds(graph, marks, end):
    """{class_type: seconds} from the `executing` events of one prompt (a node runs until the next one
    starts; the last until the prompt's end)."""
    starts = [(t, str(d["node"])) for t, kind, d in marks if kind == "executing" and d.get("node") is not None]
    out = {}
    for (t, node), (t_next, _) in zip(starts, starts[1:] + [(end, None)]):
        kind = graph.get(node, {}).get("class_type", node)
        out[kind] = round(out.get(kind, 0.0) + t_next - t, 2)
    return out


# --- pictures -------------------------------------------------------------------------------------

def png_bytes(rgb):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def marker_picture(width, height, faces, seed=0):
    from standin_models import marker_picture as draw

    return draw(width, height, faces, seed=seed)


# --- graphs ---------------------------------------------------------------------------------------

def shipped(name):
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def set_inputs(graph, class_type, **values):
    """Set literal inputs on every node of `class_type` (each must exist already)."""
    ids = [nid for nid, node in graph.items() if node["class_type"] == class_type]
    if not ids:
        raise KeyError(f"the graph has no {class_type}")
    for nid in ids:
        for key, value in values.items():
            if key not in graph[nid]["inputs"]:
                raise KeyError(f"{class_type} [{nid}] has no input {key}")
            graph[nid]["inputs"][key] = value
    return graph


def pack_graph(name, image, steps, seed=0, crop=None):
    """A shipped pack workflow with the stand-in checkpoint, `steps` inversion steps and, for the photo
    workflows, `crop` px crops (what tests/test_workflows_headless.py changes on a CPU)."""
    graph = shipped(name)
    set_inputs(graph, "LoadImage", image=image)
    set_inputs(graph, "CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    set_inputs(graph, "RevPersInvert", steps=steps, seed=seed)
    if crop is not None:
        set_inputs(graph, "RevPersDetectAlign", crop_size=crop)
    return graph


def core_graph(images, steps, seed=0, cfg=2.0, denoise=1.0, prefix="bench/core", lora=None):
    """Plain SDXL img2img from ComfyUI's own nodes: CheckpointLoaderSimple, LoadImage (one per picture,
    joined with ImageBatch), VAEEncode, KSampler (cfg > 1: both branches in every call), VAEDecode,
    SaveImage. `steps` model calls of 2 rows per picture (KSampler runs `steps` steps at any denoise).
    With `lora` (a file in loras/), the model goes through LoraLoaderModelOnly at strength 1 first."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    }
    pixels = None
    for i, name in enumerate(images):
        nid = str(10 + i)
        graph[nid] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if pixels is None:
            pixels = [nid, 0]
        else:
            joined = str(20 + i)
            graph[joined] = {"class_type": "ImageBatch", "inputs": {"image1": pixels, "image2": [nid, 0]}}
            pixels = [joined, 0]
    graph["4"] = {"class_type": "VAEEncode", "inputs": {"pixels": pixels, "vae": ["1", 2]}}
    model = ["1", 0]
    if lora is not None:
        graph["8"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
        model = ["8", 0]
    graph["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": denoise}}
    graph["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}
    return graph


def common_arguments(parser):
    parser.add_argument("--comfyui", default=None,
                        help="the ComfyUI folder whose custom_nodes holds the pack to measure (default: "
                             "the installed host, .host/comfyui-<REVPERS_HOST>)")
    parser.add_argument("--models", default=str(REPO / ".host" / "test-models"),
                        help="models folder with (or to get) the SDXL stand-in, its adapter and buffalo_l")
    parser.add_argument("--workdir", default=None, help="the server's input/output/log folder (default: a new "
                                                        "temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more main.py argument for the server (e.g. --server-arg=--front-end-root=DIR), "
                             "repeatable")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server (e.g. MALLOC_TRIM_THRESHOLD_=...), repeatable")


def parse_server_benchmark(parser, argv):
    """The arguments of a server benchmark (its own plus `common_arguments`), with the stand-ins and the
    FaceID LoRA file in place; also the header line naming this machine and the ComfyUI measured."""
    common_arguments(parser)
    args = parser.parse_args(argv)
    ensure_standins(Path(args.models))
    write_faceid_lora(Path(args.models))
    return args, f"machine: {machine()}; ComfyUI: {host_dir(args.comfyui)}"


def server_env(assignments):
    """os.environ plus NAME=VALUE assignments (None when there are none: the server inherits ours)."""
    if not assignments:
        return None
    env = dict(os.environ)
    for item in assignments:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def host_dir(value):
    from revpers_cli.host import default_comfyui_dir

    return Path(value) if value else default_comfyui_dir()


def machine(gpu=False):
    import platform

    import torch

    used = f"GPU: {torch.cuda.get_device_name(0)}" if gpu else "no GPU used"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {used}")
