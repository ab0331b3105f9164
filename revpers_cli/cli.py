"""revpers: anonymize the faces in photos and clips from the command line, through ComfyUI servers.

    revpers anonymize photo.jpg -o anonymized.png            # starts the local ComfyUI, runs, stops it
    revpers anonymize clip.mp4 -o anonymized.mp4             # every frame; fps, frame count and audio kept
    revpers anonymize photos/ -o out/                        # a folder (photos and clips), resumable
    revpers anonymize photos/ -o out/ --server http://a:8188 --server http://b:8188   # items spread over servers
    revpers anonymize --example group -o out.png --standin-weights   # the README's quick start
    revpers models                                           # download the real model files
    revpers audit originals/ anonymized/                     # the audit of a set, offline

`anonymize` runs the shipped API-format workflows ("anonymize every face in a photo", and "... in a
clip" for clips): it sets the knobs below on their nodes (revpers_cli.workflow), then each item goes
through one server as a Job (revpers_cli.job: upload, queue, follow with a progress bar, guaranteed
mode's retries, download, write); many items are handed out over the servers with a journal to
resume from and a manifest of every item and face (revpers_cli.batch). Failures exit non-zero with
the server's own message.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from . import batch, media, servers, shards, standins, workflow
from revpers_core import guidance
from revpers_core.faces import audit as audit_rules
from . import models as model_registry
from .api import ComfyError, ServerGone
from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_MISSING, EXIT_OK, EXIT_SERVER,  # noqa: F401 (exit codes)
                     EXIT_UNANONYMIZED, EXIT_USAGE, CliError)
from .examples import EXAMPLES, example_photo
from .host import default_comfyui_dir
from .photos import photo_has_alpha
from .job import ClipItem, Job, PhotoItem, Settings, describe_gaps
from .progress import NodeProgress, say

REPO = Path(__file__).resolve().parent.parent

# The file names the stand-ins have (revpers_cli.standins), as the workflows' loaders name them.
STANDIN_CHECKPOINT = {arch: Path(path).name for arch, path in standins.CHECKPOINTS.items()}
STANDIN_ADAPTER = {arch: Path(path).name for arch, path in standins.FACEID.items()}
# Small defaults for the installation check (random weights, CPU): options given explicitly win.
STANDIN_DEFAULTS = {"steps": 3, "crop_size": 128}
# How a local server started for the installation check on a CPU (no CUDA) runs the full-size SDXL
# stand-in: UNet weights in bfloat16 and PyTorch's attention (SDPA). Measured with the quick start
# itself (3 faces, 128 px crops, 3 steps) on the 2-core, 24 GiB CI machine, otherwise idle: bf16 57 s
# end to end, server peak 13.9 GiB; float32 53 s, peak 19.5 GiB (the FaceID LoRA patched into the
# float32 UNet keeps both weight copies). Per UNet call float32 is faster (benchmarks/
# bench_standin_dtype.py, machine shared: 10 s vs 30 s at 256 px, batch 2; 1.6 s vs 4.4 s at 64 px):
# ComfyUI does not compute in bf16 on a CPU, it casts every layer's weights to float32 on each call.
# With few steps that hardly shows, and bf16 keeps the server well under 16 GiB. ComfyUI's default
# CPU attention is 2.3x slower than SDPA (30 s vs 13 s per call at 256 px, batch 6).
STANDIN_CPU_SERVER_ARGS = {"bf16": ["--bf16-unet", "--use-pytorch-cross-attention"],
                           "fp32": ["--use-pytorch-cross-attention"]}

BANNER = """\
################################################################################################
#  STAND-IN WEIGHTS: every model in this run has RANDOM values. This checks that the           #
#  installation works end to end. The output is NOT an anonymization and protects nobody.      #
################################################################################################"""


# --- what the job is -----------------------------------------------------------------------------

def _single(a):
    """One photo or clip to one output file (else: items into an output folder)."""
    return bool(a.example) or (len(a.inputs) == 1 and not Path(a.inputs[0]).is_dir())


def _validate_single(p, a):
    out = Path(a.output)
    if out.is_dir():
        p.error(f"-o {out} is a folder; give a file name (or give a folder of photos to fill that folder)")
    kind = "photo" if a.example else media.kind_of(a.inputs[0])
    if a.inputs:
        source = Path(a.inputs[0])
        if not source.is_file():
            p.error(f"the {'clip' if kind == 'clip' else 'photo'} {source} does not exist")
        if kind != "clip":
            _check_photo_readable(p, source)
    suffixes = media.OUTPUT_CLIP_SUFFIXES if kind == "clip" else tuple(media.OUTPUT_PHOTO_FORMATS)
    if out.suffix.lower() not in suffixes:
        p.error(f"-o {out}: the output {'of a clip ' if kind == 'clip' else ''}must end in {', '.join(suffixes)}")
    if out.exists() and not a.overwrite:
        p.error(f"-o {out} already exists; add --overwrite to replace it")
    if kind != "clip" and a.inputs and out.suffix.lower() in (".jpg", ".jpeg"):
        _refuse_dropped_alpha(p, a, out)


def _check_photo_readable(p, photo):
    try:
        from PIL import Image
        with Image.open(photo) as im:
            im.verify()
    except Exception as e:  # PIL raises many kinds here; each means "not a picture it reads"
        p.error(f"{photo} is not an image this tool can read ({e.__class__.__name__}: {e})")


def _refuse_dropped_alpha(p, a, out):
    if not photo_has_alpha(a.inputs[0]):
        return
    if not a.force:
        p.error(f"-o {out}: the photo {a.inputs[0]} has an alpha channel (transparency) and a JPEG cannot hold "
                "one; write .png or .webp to keep it, or add --force to drop it")
    say(f"warning: --force: {out.name} is a JPEG, so the photo's alpha channel (transparency) is dropped")


def _validate_many(p, a):
    if a.example:
        p.error(f"--example {a.example} is one photo: give no other input")
    for given in map(Path, a.inputs):
        if not given.exists():
            p.error(f"{given} does not exist")
    if Path(a.output).is_file():
        p.error(f"-o {a.output} is a file; for several items (or a folder) give the output folder")


def _validate(p, a):
    if a.example and a.inputs and len(a.inputs) == 1:
        p.error(f"give a photo or --example {a.example}, not both")
    if not a.example and not a.inputs:
        p.error("give the photo to anonymize (or --example group for the example photo), a clip, or a folder")
    _validate_single(p, a) if _single(a) else _validate_many(p, a)
    _validate_knobs(p, a)


def _validate_knobs(p, a):
    """Each knob by its owner's rule (the solver's for steps, skip and seed; alignment's for the crop size),
    so the command line refuses exactly what the server would."""
    from revpers_core.faces import align, recognizers
    from revpers_core import solver
    for option, value, check in (("--steps", a.steps, solver.check_steps), ("--skip", a.skip, solver.check_skip),
                                 ("--seed", a.seed, solver.check_seed), ("--crop-size", a.crop_size,
                                                                          align.check_crop_size)):
        try:
            if value is not None:
                check(value)
        except ValueError as e:
            p.error(f"{option} {value:g}: {e}")
    if a.faces is not None and not re.fullmatch(r"all|largest|[1-9]\d*", a.faces.strip()):
        p.error(f"--faces {a.faces!r}: use all, largest, or a number N (the N largest faces)")
    if a.on_fail == "redact" and a.allow_unanonymized:
        p.error("--on-fail redact covers a face still recognizable with a flat fill; --allow-unanonymized writes "
                "it visible, marked NOT ANONYMIZED: choose one")
    if not 0 <= a.crf <= 51:
        p.error(f"--crf {a.crf}: x264's quality runs from 0 (lossless) to 51")
    for name, value, bounds in (("--arcface-threshold", a.arcface_threshold, recognizers.ARCFACE_BOUNDS),
                                ("--dlib-threshold", a.dlib_threshold, recognizers.DLIB_BOUNDS)):
        if value is not None and not bounds[0] <= value <= bounds[1]:
            p.error(f"{name} {value:g}: must be within {bounds[0]:g} to {bounds[1]:g}, so that the audit cannot "
                    "be switched off by a threshold (leave the audit out of the workflow to run without it)")
    if a.guidance is not None and not guidance.anonymizes(a.guidance):
        if not a.force:
            p.error(f"--guidance {a.guidance:g}: anonymization needs a NEGATIVE guidance: "
                    f"{'; '.join(guidance.why_not_anonymizing(a.guidance))}, so the output shows who they are. "
                    f"{guidance.HOW_TO_ANONYMIZE}, or add --force to run it anyway (to study the method, never to "
                    "anonymize)")
        say(f"warning: --guidance {a.guidance:g} with --force: the faces are NOT pushed away from their "
            "identities; the output does not anonymize anyone")


# --- the settings every item shares --------------------------------------------------------------

def _knob_values(a):
    values = {k: getattr(a, k, None) for k in workflow.KNOBS if k not in ("image", "checkpoint", "adapter",
                                                                            "filename_prefix", "lossless")}
    if a.faces is not None:
        faces = a.faces.strip()
        values["faces"] = {"all": 0, "largest": 1}.get(faces) if faces in ("all", "largest") else int(faces)
    values["leave_other_faces"] = "leave visible (marked)" if a.leave_other_faces else None
    values["allow_unanonymized"] = values["check_fails"] = None
    # the audit's second recognizer is required unless the user says otherwise (--single-recognizer keeps the
    # workflow's choice, "dlib if installed" in the shipped ones); only clips have a tracker's max_gap
    values["second_recognizer"] = None if a.single_recognizer else audit_rules.SECOND_RECOGNIZER[1]
    soft = {"lossless", "second_recognizer", "max_gap"}
    if a.allow_unanonymized:
        # the audit and the crop check each take their own spelling of "report, don't stop"
        values["allow_unanonymized"], values["check_fails"] = "save marked NOT ANONYMIZED", False
        soft |= {"allow_unanonymized", "check_fails"}
    if a.standin_weights:
        for k, v in STANDIN_DEFAULTS.items():
            if values.get(k) is None:
                values[k] = v
                soft.add(k)
        values["checkpoint"] = a.checkpoint or STANDIN_CHECKPOINT[a.standin_arch]
        values["adapter"] = STANDIN_ADAPTER[a.standin_arch]
    else:
        values["checkpoint"] = a.checkpoint
    values["filename_prefix"], values["lossless"] = "revpers-cli", True
    return values, soft


def _graph(path, values, soft, force):
    """The workflow at `path` with the job's knobs; refused when it cannot anonymize (unless --force)."""
    try:
        graph = workflow.apply_knobs(workflow.load_workflow(path), values, soft)
    except workflow.WorkflowError as e:
        raise CliError(str(e), EXIT_USAGE)
    for class_type, what in (("LoadImage", "LoadImage node for the photo"),
                             (workflow.OUTPUT_CLASSES, f"{' or '.join(workflow.OUTPUT_CLASSES)} node")):
        if not workflow.nodes_of(graph, class_type):
            raise CliError(f"the workflow {path} has no {what}", EXIT_USAGE)
    weak = workflow.weak_settings(graph)
    if weak and not force:
        raise CliError(f"the workflow {path} cannot anonymize as set:\n  " + "\n  ".join(weak)
                       + f"\n{guidance.HOW_TO_ANONYMIZE}, or add --force to run it anyway (to study the method, "
                       "never to anonymize)", EXIT_USAGE)
    say(*[f"warning: --force: {w}; the output does not anonymize anyone" for w in weak])
    return graph


def _on_fail(a):
    """What becomes of a face still recognizable after the last retry, per kind of item: --on-fail, or
    the default for the job's shape (revpers_core.faces.audit.ON_FAIL_DEFAULT); "stop" when failed
    images are written marked instead (--allow-unanonymized)."""
    if a.on_fail:
        return {"photo": a.on_fail, "clip": a.on_fail}
    if a.allow_unanonymized:
        return {"photo": "stop", "clip": "stop"}
    shape = "photo" if _single(a) else "folder"
    return {"photo": audit_rules.ON_FAIL_DEFAULT[shape], "clip": audit_rules.ON_FAIL_DEFAULT["clip"]}


def _refuse_standin_names(a, graphs):
    """A real run refuses a stand-in checkpoint by its name (its values are random: nothing would be
    anonymized, and the audit's ArcFace would be random too)."""
    if a.standin_weights:
        return
    for graph in graphs:
        name = workflow.checkpoint_of(graph)
        if name in standins.CHECKPOINT_NAMES:
            raise CliError(f"the workflow loads {name}, a STAND-IN checkpoint with random weights (made by "
                           "--standin-weights to check an installation): NOT a real model, it anonymizes nobody. "
                           "Use a real SDXL checkpoint (`revpers models` downloads "
                           f"{model_registry.DEFAULT_CHECKPOINT}; --checkpoint names your own), or add "
                           "--standin-weights for the installation check",
                           EXIT_MISSING)


def _settings(a, kinds):
    values, soft = _knob_values(a)
    paths = {"photo": a.workflow, "clip": a.video_workflow}
    graphs = {}
    for kind in kinds:
        try:
            path = workflow.find_workflow(paths[kind], kind)
        except workflow.WorkflowError as e:
            raise CliError(str(e), EXIT_USAGE)
        graphs[kind] = _graph(path, values, soft, a.force)
    _refuse_standin_names(a, graphs.values())
    return Settings(graphs, None if a.no_retry else a.retry_guidance, a.allow_unanonymized, a.timeout, a.crf, a.quiet,
                    on_fail=_on_fail(a), fail_on_gaps=a.fail_on_gaps, force=a.force, stall=a.server_stall,
                    audio=a.audio)


def _model_entries(settings):
    checkpoints = {workflow.checkpoint_of(g) or model_registry.DEFAULT_CHECKPOINT for g in settings.graphs.values()}
    entries = {}
    for checkpoint in sorted(checkpoints):
        entries.update({e.name: e for e in model_registry.registry(checkpoint)})
    return list(entries.values())


# --- the servers ---------------------------------------------------------------------------------

def _host_args(a):
    args = []
    if not a.gpu and servers.cpu_only():
        args.append("--cpu")
        if a.standin_weights:
            args += STANDIN_CPU_SERVER_ARGS[a.standin_unet]
    return args + shlex.split(a.server_args or "")


def _host_dir(p, a):
    try:
        return default_comfyui_dir(a.comfyui)
    except ValueError as e:
        p.error(str(e))


def generate_standins(models_dir, arch, comfyui_dir):
    """The stand-ins of `arch` (checkpoint, FaceID adapter, buffalo_l) in `models_dir`, generated once by
    `python -m revpers_cli.standins` in a child process (the SDXL one peaks near 8 GiB, given back when it
    ends), its lines relayed; kept when already there."""
    cmd = [sys.executable, "-m", "revpers_cli.standins", "--models", str(models_dir), f"--{arch}", "--faceid",
           "--buffalo", "--comfyui", str(comfyui_dir)]
    say(f"generating stand-in weights into {models_dir} (once; later runs reuse them)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:  # relayed line by line (works when stderr is not a real file)
        say("  | " + line.rstrip())
    proc.wait()
    if proc.returncode != 0:
        raise CliError(f"generating the stand-in weights failed (exit {proc.returncode}); see above", EXIT_FAILED)


def _local_models(a, comfyui_dir, entries):
    """The models folder for a local server: the stand-ins (generated once), or the user's, checked."""
    models_dir = Path(a.models) if a.models else None
    if a.standin_weights and not a.server:
        models_dir = Path(a.models or os.environ.get("REVPERS_STANDIN_MODELS") or REPO / ".host" / "standin-models")
        generate_standins(models_dir, a.standin_arch, comfyui_dir)
    elif not a.server:
        bases = ([models_dir] if models_dir else []) + [comfyui_dir / "models"]
        missing = model_registry.check(bases, entries, extra_dirs=servers.extra_model_folders(comfyui_dir))
        if missing:
            raise CliError(model_registry.describe_missing(missing), EXIT_MISSING)
    return models_dir


@contextmanager
def _job_servers(a, comfyui_dir, settings, workdir):
    """The checked servers of the job: those given with --server, or a local one started (and stopped) here."""
    entries = _model_entries(settings)
    models_dir = _local_models(a, comfyui_dir, entries)
    started = []
    try:
        if a.server:
            pool = [servers.Server(url if "://" in url else "http://" + url) for url in a.server]
        else:
            started.append(servers.start_local(comfyui_dir, _host_args(a), models_dir, workdir, a.python,
                                               a.startup_timeout))
            pool = started
        pool = servers.check_servers(pool, list(settings.graphs.values()), entries)
        yield _check_second_recognizer(a, pool, settings)
    finally:
        for server in started:
            server.host.stop()


def _recognizers_of(server, probe, stall):
    """(the recognizer names the server's audit has, None) or (None, why it could not tell)."""
    try:
        with server.client(stall=stall) as client:
            result = client.run(probe, timeout=max(stall, 120.0))
    except (ComfyError, OSError, ValueError) as e:  # requests' errors are OSErrors; bad JSON a ValueError
        return None, f"{e.__class__.__name__}: {e}"
    summary = workflow.audit_summary(result, probe)
    if result.status != "success" or summary is None:
        return None, result.message or "its audit gave no verdict data (an older pack?)"
    return summary["recognizers"], None


def _check_second_recognizer(a, pool, settings):
    """The servers whose audit has its independent recognizer (dlib), asked with a tiny prompt before any
    upload. Without it a server is left out of the job, and with none left the job is refused, unless
    --single-recognizer says ArcFace may judge alone (then it is said here and in every report)."""
    probes = [workflow.audit_probe(g) for g in settings.graphs.values() if workflow.nodes_of(g, "RevPersAudit")]
    probe = next((p for p in probes if p is not None), None)
    if probe is None:
        return pool
    usable, lacking = [], []
    for server in pool:
        names, problem = _recognizers_of(server, probe, settings.stall)
        if names is None:
            lacking.append(f"{server.url}: its audit could not be run ({problem})")
        elif any(n != "ArcFace" for n in names):
            usable.append(server)
            continue
        elif a.single_recognizer:
            say(f"warning: --single-recognizer: the audit on {server.url} has no second recognizer (dlib is not "
                "installed there): ArcFace, the recognizer the method optimizes against, judges alone, and every "
                "report and the manifest say so")
            usable.append(server)
            continue
        else:
            lacking.append(f"{server.url}: dlib, the audit's independent recognizer, is not installed there")
        server.gone = lacking[-1]
        if len(pool) > 1:
            say(f"warning: the server at {lacking[-1]}; it is left out of the job")
    if usable:
        return usable
    from revpers_core.faces import recognizers
    raise CliError("the audit cannot judge with a recognizer the method did not optimize against:\n  "
                   + "\n  ".join(lacking) + f"\nInstall it in the server's Python ({recognizers.DLIB_PACKAGES}), "
                   "or run with --single-recognizer to let ArcFace judge alone (said in every report and the "
                   "manifest)", EXIT_MISSING)


# --- anonymize -----------------------------------------------------------------------------------

def run_anonymize(p, a):
    _validate(p, a)
    a.shard_spec = _shard_spec(p, a)
    comfyui_dir = _host_dir(p, a)
    entries = [] if _single(a) else batch.plan_entries(a.inputs, a.output, numbered=a.output_names == "number")
    a.planned_total = len(entries)
    if a.shard_spec:
        shards.refuse_other_splits(_job_files(a)[1], *a.shard_spec)
        entries = shards.split(entries, *a.shard_spec)
        say(f"shard {a.shard_spec[0]}/{a.shard_spec[1]}: {len(entries)} of {a.planned_total} items")
    elif not _single(a):
        shards.refuse_other_splits(_job_files(a)[1])
    settings = _settings(a, sorted(_kinds(a, entries)))
    if a.standin_weights:
        say(BANNER, f"stand-in settings: --steps {a.steps or STANDIN_DEFAULTS['steps']}, --crop-size "
                    f"{a.crop_size or STANDIN_DEFAULTS['crop_size']} (small defaults for a CPU where not given: --steps "
                    f"{STANDIN_DEFAULTS['steps']}, --crop-size {STANDIN_DEFAULTS['crop_size']})")
    workdir = tempfile.mkdtemp(prefix="revpers-cli-")
    try:
        with _job_servers(a, comfyui_dir, settings, workdir) as pool:
            _warn_about_server_copies(pool, settings)
            if _single(a):
                return _run_single(a, settings, pool[0], workdir)
            return _run_many(a, entries, settings, pool, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _shard_spec(p, a):
    """(K, N) of --shard (None without it); a usage error for a bad spec or a job of one item."""
    if a.shard is None:
        if a.shard_count is not None:
            p.error("--shard-count N goes with --shard auto")
        return None
    if _single(a):
        p.error(f"--shard {a.shard}: a job of one photo or clip cannot be split; --shard splits a folder (or "
                "several inputs) written into an output folder")
    try:
        return shards.parse_spec(a.shard, a.shard_count)
    except CliError as e:
        p.error(str(e))


def _job_files(a):
    """(the manifest, the journal's folder) of a job of many items; a shard's manifest named for it."""
    output = Path(a.output)
    manifest = Path(a.manifest) if a.manifest else output / batch.MANIFEST_NAME
    if getattr(a, "shard_spec", None):
        manifest = shards.shard_path(manifest, *a.shard_spec)
    # with outputs named by number the journal (which names the inputs too) goes beside the manifest, so that a
    # manifest written elsewhere leaves nothing in the output folder that says who is who
    return manifest, manifest.parent if a.output_names == "number" else output


def _warn_about_server_copies(pool, settings):
    """Say what a server given by URL keeps of the job: ComfyUI cannot delete a file over its API."""
    remote = [s.url for s in pool if s.host is None]
    if not remote:
        return
    say(f"note: {', '.join(remote)}: this command did not start {'that server' if len(remote) == 1 else 'those'}, "
        "and ComfyUI has no way to delete a file over its API, so each upload (the input's pixels under a random "
        "name, no metadata) and each saved output stay in its input/ and output/ folders; every one is listed "
        "at the end and in the manifest")
    for kind, graph in settings.graphs.items():
        for saver in workflow.metadata_savers(graph):
            say(f"warning: the {kind} workflow's {saver} writes ComfyUI's prompt and workflow (the upload's random "
                "name and every setting) into the file it leaves on the server; the file written here carries only "
                "the pixels")


def _print_left(left):
    """The files a job left on servers given by URL, one line each: server, folder, name, what it is."""
    if not left:
        return
    print(f"left on the server(s) given by --server ({len(left)} file(s); ComfyUI cannot delete them over its API, "
          "remove them on that machine):")
    for record in left:
        print(f"  {record['server']}: {record['folder']}/{record['file']} ({record['what']})")


def _kinds(a, entries):
    """The kinds of item the job holds ("photo", "clip"): the workflows it needs."""
    if a.example:
        return {"photo"}
    if _single(a):
        return {"clip" if media.kind_of(a.inputs[0]) == "clip" else "photo"}
    return {e.kind for e in entries if e.kind} or {"photo"}


def _single_item(a, workdir):
    if a.example:
        photo, lines = example_photo(a.example, a.standin_weights, workdir)
        say(*lines)
        return PhotoItem(photo, a.output)
    source = Path(a.inputs[0])
    if media.kind_of(source) == "clip":
        return ClipItem(source, a.output, crf=a.crf, audio=a.audio)
    return PhotoItem(source, a.output)


def _run_single(a, settings, server, workdir):
    """One photo or clip, told in full: progress per node, the audit's text, the attempts, what was written."""
    item = _single_item(a, workdir)
    try:
        return _run_item(a, settings, server, workdir, item)
    finally:
        _print_left(item.left)


def _run_item(a, settings, server, workdir, item):
    """The item through the server, its checks printed; what went wrong as a CliError with its exit code."""
    try:
        with server.client(stall=settings.stall) as client:
            progress = NodeProgress({}, enabled=not a.quiet)
            outcome = Job(item, settings, client, progress, host=server.host).run(workdir)
    except ServerGone as e:
        raise CliError(servers.server_gone_message(e, server, a.output), EXIT_SERVER)
    except CliError:
        raise
    except Exception as e:  # whatever else raises, the command ends with the reason, never a traceback
        code, reason = batch.item_failure(e)
        if code == EXIT_SERVER:
            raise CliError(f"the server at {server.url} failed: {reason}. Nothing was written to {a.output}.", code)
        raise CliError(f"{item.label}: {reason}; nothing more was written", code)
    _print_checks(outcome, settings)
    if a.manifest:
        entry = batch.Entry(item.source, item.output, Path(item.output).name, item.kind)
        batch.write_manifest(a.manifest, [batch.outcome_record(entry, outcome, server.url)])
    if outcome.status == "failed":
        raise CliError(outcome.message, outcome.code)
    print(f"wrote {', '.join(str(w) for w in outcome.written)} ({outcome.seconds:.1f} s)")
    if a.standin_weights:
        say(BANNER)
    if outcome.status == "unanonymized":
        say("WARNING: the audit FAILED - a face is still recognizable. The output was written only because "
            "--allow-unanonymized asked to save it anyway; the audit marks such photos NOT ANONYMIZED. Exit code 5.")
    return outcome.code


def _print_checks(outcome, settings):
    graph = next(iter(settings.graphs.values()))
    if outcome.texts:
        print("audit:" if workflow.nodes_of(graph, workflow.CHECK_CLASSES[0]) else "anonymity check:")
        for t in outcome.texts:
            print("  " + t.replace("\n", "\n  "))
    elif workflow.nodes_of(graph, workflow.CHECK_CLASSES):
        print("anonymity check: the check node reported nothing")
    else:
        say("WARNING: this workflow has no Audit Anonymized Photos (RevPers) nor Anonymity Check "
            "(RevPers) node: nothing checked that the saved photo is anonymized")
    if outcome.attempt_lines:
        print("guaranteed mode, attempts per face:")
        for line in outcome.attempt_lines:
            print(line)
    summary = outcome.summary or {}
    if summary.get("recognizers") and not summary.get("independent"):
        print(f"WARNING: the audit was judged by {' and '.join(summary['recognizers'])} ALONE (--single-recognizer): "
              "the recognizer the method optimizes against, with no independent judge")
    for r in summary.get("redacted", []):
        print(f"REDACTED: face {r['face']} (image {r['image']}, row {r['row']}): still recognizable by "
              f"{', '.join(r['recognized_by'])} after the last attempt; covered with a flat fill over its face "
              f"region ({r['pixels']} px), and the audit passed again")
    gaps = (outcome.tracks or {}).get("long_gaps", [])
    if gaps:
        print(f"long gaps of the tracker (not interpolated; the audit judged those frames): {describe_gaps(gaps)}")


def _run_many(a, entries, settings, pool, workdir):
    """Many items: handed out over the servers, one line each, a journal to resume from, a manifest."""
    output = Path(a.output)
    output.mkdir(parents=True, exist_ok=True)
    manifest, folder = _job_files(a)
    digest, shard = batch.settings_digest(settings), getattr(a, "shard_spec", None)
    if shard:  # its own journal, with a digest that a resumed shard of another split does not match
        journal = batch.Journal(folder / shards.shard_path(batch.JOURNAL_NAME, *shard).name,
                                shards.journal_digest(digest, *shard))
        header = shards.header(digest, *shard, entries, getattr(a, "planned_total", len(entries)))
    else:
        journal, header = batch.Journal(folder / batch.JOURNAL_NAME, digest), shards.header(digest)
    if a.output_names == "number" and output.resolve() in manifest.resolve().parents:
        say(f"note: --output-names number: the outputs are named 00001, 00002, ...; {manifest} (and the job's journal "
            "beside it) says which input each number is: keep them apart when you share the folder, or write the "
            "manifest elsewhere with --manifest")
    kinds = [e.kind for e in entries]
    say(f"{len(entries)} item(s): {kinds.count('photo')} photo(s), {kinds.count('clip')} clip(s), "
        f"{kinds.count(None)} other file(s); {len(pool)} server(s): {', '.join(s.url for s in pool)}")
    runner = batch.Runner(entries, pool, settings, journal, manifest, workdir, a.overwrite, header)
    started, interrupted = time.time(), False
    try:
        records = runner.run()
    except KeyboardInterrupt:
        records, interrupted = list(runner.records.values()), True
    _print_summary(records, manifest, time.time() - started, pool)
    problems = runner.problems + ([f"the journal could not be written ({journal.broken})"] if journal.broken else [])
    for problem in problems:
        print(f"  WARNING: {problem}")
    if a.standin_weights:
        say(BANNER)
    code = batch.exit_code(records, interrupted)
    return EXIT_FAILED if code == EXIT_OK and runner.problems else code


def _print_summary(records, manifest, seconds, pool):
    count = {s: sum(r["status"] == s for r in records) for s in ("done", "unanonymized", "failed", "skipped")}
    resumed = sum(bool(r.get("skipped")) for r in records)
    print(f"{count['done']} done ({resumed} of them by an earlier run), {count['failed']} failed, "
          f"{count['unanonymized']} written marked NOT ANONYMIZED, {count['skipped']} skipped, in {seconds:.1f} s; "
          f"manifest: {manifest}")
    for server in pool:
        print(f"  {server.url}: {len(server.items)} item(s)" + (f"; left the job: {server.gone.splitlines()[0]}"
                                                               if server.gone else ""))
    for r in records:
        if r["status"] == "failed":
            print(f"  NOT ANONYMIZED: {r['input']}: {r['reason'].splitlines()[0]}")
    _print_left([left for r in records for left in r.get("left_on_server") or []])


# --- audit of a set --------------------------------------------------------------------------------

def _buffalo_folder(models):
    base = Path(models)
    for candidate in (base, base / "buffalo_l", base / "models" / "buffalo_l", base / "insightface" / "models" / "buffalo_l"):
        if candidate.is_dir() and list(candidate.glob("*.onnx")):
            return candidate
    raise CliError(f"--models {models}: no buffalo_l folder (with its .onnx files) there, nor under "
                   "insightface/models/buffalo_l", EXIT_USAGE)


def _validate_audit(p, a):
    from revpers_core.faces import recognizers
    for name, value, bounds in (("--arcface-threshold", a.arcface_threshold, recognizers.ARCFACE_BOUNDS),
                                ("--dlib-threshold", a.dlib_threshold, recognizers.DLIB_BOUNDS)):
        if not bounds[0] <= value <= bounds[1]:
            p.error(f"{name} {value:g}: must be within {bounds[0]:g} to {bounds[1]:g}")
    for opt, suffixes in ((a.report, (".csv", ".json")), (a.chart, (".png",))):
        if opt and Path(opt).suffix.lower() not in suffixes:
            p.error(f"{opt}: must end in {' or '.join(suffixes)}")
    if a.no_dlib and not a.models:
        p.error("--no-dlib leaves no recognizer: give --models with a buffalo_l folder for ArcFace")


def _offline_auditor(a):
    from revpers_core.faces import set_audit
    analyser = None
    if a.models:
        from revpers_core.faces.analysis import load_analyser
        analyser = load_analyser(str(_buffalo_folder(a.models)), provider="CPU", det_size=640)
    try:
        return set_audit.make_offline_auditor(analyser, a.arcface_threshold, a.dlib_threshold, not a.no_dlib)
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e), EXIT_MISSING)


def _read_for_audit(path):
    from .photos import read_rgb_float
    try:
        return read_rgb_float(path)
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: cannot be read as a photo ({e})", EXIT_FAILED)


def run_audit(p, a):
    from tqdm import tqdm
    from revpers_core.faces import set_audit

    _validate_audit(p, a)
    try:
        pairs, unmatched = set_audit.photo_pairs(Path(a.originals), Path(a.anonymized))
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE)
    if not pairs:
        raise CliError(f"no photo of {a.anonymized} has a namesake in {a.originals}: the two folders are matched "
                       "by file name (the suffix may differ)", EXIT_USAGE)
    auditor = _offline_auditor(a)
    t0 = time.time()
    with tqdm(total=len(pairs), desc="reading photo pairs", unit="pair", file=sys.stderr, disable=a.quiet) as bar:
        try:
            result = set_audit.audit_set(auditor, pairs, _read_for_audit, lambda done, total: bar.update(done - bar.n))
        except ValueError as e:
            raise CliError(str(e), EXIT_USAGE)
    result.unmatched = unmatched
    print(result.text())
    faces = max(len(result.report.faces), 1)
    print(f"({len(pairs)} pairs, {len(result.report.faces)} faces in {time.time() - t0:.1f} s, "
          f"{(time.time() - t0) / faces:.2f} s per face)")
    for path, write in ((a.report, set_audit.write_rows), (a.chart, set_audit.draw_chart)):
        if path:
            write(result, Path(path))
            print(f"wrote {path}")
    return EXIT_OK if result.report.passed else EXIT_FAILED


# --- models --------------------------------------------------------------------------------------

def run_models(p, a):
    comfyui_dir = _host_dir(p, a)
    models_dir = Path(a.models or os.environ.get("REVPERS_MODELS") or comfyui_dir / "models")
    entries = model_registry.registry(a.checkpoint)
    if a.only:
        known = {e.name for e in entries} | {e.source.name for e in entries}
        bad = sorted(set(a.only) - known)
        if bad:
            p.error(f"--only {' '.join(bad)}: unknown; choose from {', '.join(sorted(known))}")
        entries = [e for e in entries if e.name in a.only or e.source.name in a.only]
    if a.check:
        missing = model_registry.check(models_dir, entries, verify=True)
        if missing:
            print(model_registry.describe_missing(missing), file=sys.stderr)
            return EXIT_MISSING
        print(f"all {len(entries)} model files are in {models_dir} and match their published sha256")
        return EXIT_OK
    base = a.source_base or os.environ.get("REVPERS_MODEL_SOURCE") or None
    try:
        installed = model_registry.download(models_dir, entries=entries, base_url=base,
                                            progress=not a.quiet, log=say)
    except model_registry.DownloadError as e:
        raise CliError(str(e), EXIT_FAILED)
    if not installed:
        print(f"nothing to download: every model file is already in {models_dir}")
    else:
        print(f"installed {len(installed)} file(s) into {models_dir}")
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------------

def _guidance_list(text):
    """"G1,G2" -> (G1, G2), each a guidance that anonymizes ("" or "none" -> no retries)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give negative numbers separated by commas, e.g. {guidance.RETRIES_TEXT}")
    try:
        for v in values:
            guidance.check_face_guidance(v, "a retry guidance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return values


def _add_item_options(an):
    g = an.add_argument_group("what to anonymize, and where the result goes")
    g.add_argument("inputs", nargs="*", metavar="INPUT", help="a photo (png, jpg, webp...), a clip (mp4, mov, mkv, "
                   "webm, avi...), or a folder of them (subfolders included); several may be given")
    g.add_argument("--example", choices=sorted(EXAMPLES), help="anonymize an example photo instead: 'group' is "
                   "the group photo that ships with InsightFace (with --standin-weights, marker faces the "
                   "stand-in detector can see are drawn over its six faces)")
    g.add_argument("-o", "--output", required=True, help="where to write: the anonymized photo (.png/.jpg/.webp) "
                   "or clip (.mp4/.mov/.mkv); for a folder or several inputs, the output folder")
    g.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (default: an "
                   "existing output is not touched, and the item is reported)")
    g.add_argument("--manifest", help="where to write the manifest, .json or .csv: per item and face, the audit's "
                   f"figures (for several items the default is {batch.MANIFEST_NAME} in the output folder; for one, "
                   "none unless asked)")
    g.add_argument("--output-names", choices=("input", "number"), default="input",
                   help="for several items: name each output after its input (default: the same paths under the "
                   "output folder), or by number (00001.png, 00002.mp4, ... in the order of the inputs, all in the "
                   "output folder): then neither the names nor the folders of the inputs show, and only the "
                   "manifest (and the job's journal beside it) says which input became which number")
    g.add_argument("--audio", choices=media.AUDIO_CHOICES, default=media.AUDIO_DEFAULT,
                   help="a clip's audio: drop it (default) or keep it (copied as it is). Voices are NOT anonymized: "
                   "a voice identifies a person as a face does, so keeping it is your explicit choice")
    g.add_argument("--crf", type=int, default=media.CRF_DEFAULT, help="quality of the encoded clips: x264's constant "
                   f"rate factor, 0 (lossless) to 51 (default {media.CRF_DEFAULT}, visually lossless)")
    g.add_argument("--workflow", help="API-format workflow for photos (default: the shipped anonymize_photo)")
    g.add_argument("--video-workflow", help="API-format workflow for clips (default: the shipped anonymize_video)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_method_options(an):
    from revpers_core import solver
    from revpers_core.faces import align
    g = an.add_argument_group("the method (left out: the workflow's values, the paper's defaults)")
    g.add_argument("--guidance", type=float, help="identity guidance scale; negative pushes away (default "
                   f"{guidance.DEFAULT:g}); 0 or more does not anonymize and is refused without --force")
    g.add_argument("--force", action="store_true", help="run even when a setting defeats the purpose: --guidance "
                   "0 or more (the faces keep or gain their identity), or a .jpg output for a photo with an alpha "
                   "channel (the alpha is dropped)")
    g.add_argument("--skip", type=float, help="fraction of the diffusion skipped by the inversion "
                   f"({solver.SKIP_MIN:g} to {solver.SKIP_MAX:g}; default {solver.DEFAULT_SKIP:g})")
    g.add_argument("--steps", type=int, help=f"inversion/sampling steps ({solver.MIN_STEPS} to {solver.MAX_STEPS}; "
                   f"default {solver.DEFAULT_STEPS})")
    g.add_argument("--seed", type=int, help="seed of the inversion noise (default 0)")
    g.add_argument("--attribute", help="attribute text for the new face, e.g. 'an old man' (default none)")
    g.add_argument("--faces", help="which faces: all, largest, or N for the N largest (default all)")
    g.add_argument("--leave-other-faces", action="store_true", help="with --faces N: leave the faces beyond "
                   "the N largest exactly as they are (outlined, the photo marked and each reported) instead of "
                   "stopping with an error")
    g.add_argument("--min-face-size", type=int, dest="min_face_size", help="faces smaller than this (px) are "
                   "covered with a flat fill instead of anonymized by the model (default 0: every face goes to "
                   "the model)")
    g.add_argument("--crop-size", type=int, dest="crop_size", help="aligned face crop size in px (a multiple of 8 "
                   f"from {align.MIN_CROP_SIZE} to {align.MAX_CROP_SIZE}; default 1024)")
    g.add_argument("--checkpoint", help=f"SDXL checkpoint file name in models/checkpoints "
                   f"(default {model_registry.DEFAULT_CHECKPOINT})")


def _add_audit_options(an):
    from revpers_core.faces import recognizers
    g = an.add_argument_group("the audit and guaranteed mode")
    g.add_argument("--allow-unanonymized", action="store_true", help="write the photo even when the audit finds "
                   "a face still recognizable; it is then marked NOT ANONYMIZED (default: fail, write nothing)")
    g.add_argument("--arcface-threshold", type=float, help="the audit's ArcFace cosine similarity at or above which a "
                   f"face counts as still recognizable ({recognizers.ARCFACE_BOUNDS[0]:g} to "
                   f"{recognizers.ARCFACE_BOUNDS[1]:g}; default {recognizers.ARCFACE_DEFAULT:g}; lower is stricter)")
    g.add_argument("--dlib-threshold", type=float, help="the audit's dlib descriptor distance at or below which a "
                   f"face counts as still recognizable ({recognizers.DLIB_BOUNDS[0]:g} to "
                   f"{recognizers.DLIB_BOUNDS[1]:g}; default {recognizers.DLIB_DEFAULT:g}; higher is stricter)")
    g.add_argument("--retry-guidance", type=_guidance_list, default=guidance.RETRIES, metavar="G1,G2,...",
                   help="guaranteed mode: faces that fail the audit are sampled again, only those, with these "
                   "stronger guidances in turn (default " + ",".join(f"{g:g}" for g in guidance.RETRIES)
                   + "); the other faces stay bit-identical. After the last, the run fails naming the faces")
    g.add_argument("--no-retry", action="store_true", help="no guaranteed mode: a face that fails the audit "
                   "fails the run at once")
    g.add_argument("--on-fail", choices=sorted(audit_rules.ON_FAIL_WORDS), help="a face still recognizable after "
                   "the last retry: stop (fail closed: the item fails, nothing is written) or redact (cover it "
                   "with the flat fill small faces get, over its whole face region, audit again, and report it as "
                   "redacted). Default: stop for one photo (you are looking at it and can run it again with "
                   "other settings); redact for a folder and for a clip (one stubborn face would otherwise lose "
                   "photo 9,000 of a dataset or a whole clip for frame 1,000)")
    g.add_argument("--single-recognizer", action="store_true", help="run even where the audit's second, "
                   "independent recognizer (dlib) is not installed: ArcFace, the recognizer the method optimizes "
                   "against, then judges alone, and every report and the manifest say so (default: refuse)")
    g.add_argument("--max-gap", type=int, dest="max_gap", help="clips: frames a tracked face may go undetected "
                   "and still be anonymized at its interpolated place (default 8); a longer gap is reported per "
                   "track and frame range")
    g.add_argument("--fail-on-gaps", action="store_true", help="clips: fail the item when the tracker lost a "
                   "person for longer than --max-gap frames (default: report the gaps, the audit judges the frames)")


def _add_server_options(an):
    g = an.add_argument_group("servers")
    g.add_argument("--server", action="append", help="URL of a running ComfyUI with the pack (default: start the "
                   "local one); give it several times to spread the items over several servers")
    g.add_argument("--comfyui", help="ComfyUI folder to start (default: $COMFYUI_DIR, or "
                   ".host/comfyui-$REVPERS_HOST, default 0.3.75)")
    g.add_argument("--models", help="an extra models folder (checkpoints/, ipadapter/, insightface/...) for "
                   "the local server; with --standin-weights, where the stand-ins go")
    g.add_argument("--standin-weights", action="store_true", help="installation check: generate random "
                   "stand-in weights and run the same graph on them (output is NOT an anonymization); with "
                   "--server, the stand-ins are already in that server's models folders. "
                   f"Defaults then: --steps {STANDIN_DEFAULTS['steps']}, --crop-size {STANDIN_DEFAULTS['crop_size']}"
                   ", and on a CPU a local server with the UNet in bf16 and PyTorch attention (see --standin-unet)")
    g.add_argument("--standin-unet", choices=sorted(STANDIN_CPU_SERVER_ARGS), default="bf16",
                   help="with --standin-weights on a CPU: UNet weights in bf16 (default; the server peaks at ~14 GiB "
                   "for the SDXL stand-in) or fp32 (~20 GiB; faster per step at large sizes)")
    g.add_argument("--standin-arch", choices=("sdxl", "sd15"), default="sdxl",
                   help="architecture of the stand-ins (default sdxl, what the job uses)")
    g.add_argument("--gpu", action="store_true", help="do not pass --cpu to the local server even without CUDA")
    g.add_argument("--server-args", help="more arguments for the local server, e.g. '--bf16-unet'")
    g.add_argument("--python", help="Python to run the local server with (default: this one)")
    g.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to wait for the run of an item")
    g.add_argument("--server-stall", type=float, default=300.0, metavar="SECONDS", help="a server that sends "
                   "nothing and answers nothing for this long counts as stalled: it leaves the job and its item "
                   "goes to another server (default 300)")
    g.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")


def _anonymize_parser(sub):
    an = sub.add_parser("anonymize", help="anonymize every face in photos and clips",
                        description="Anonymize every face in a photo, a clip or a folder of them with the shipped "
                        "workflows. Options left out keep the workflow's values (the paper's defaults, shown below). "
                        "Several items (a folder, or several inputs) go into the folder -o names: one server for the "
                        "whole job (or several --server), one line per item, a manifest of every item and face, and a "
                        "journal so that the same command run again skips what is done. A bad item is reported and "
                        "the others go on; the exit code is not 0 when any item was not anonymized.")
    for add in (_add_item_options, _add_method_options, _add_audit_options, _add_server_options, _add_shard_options):
        add(an)
    return an


def _add_shard_options(an):
    g = an.add_argument_group("splitting a folder job over independent processes (a job array)")
    g.add_argument("--shard", metavar="K/N", help="run only shard K of N of the folder's items (1 <= K <= N), each "
                   "item in one shard by a hash of its path (adding files moves no other item); each shard has its "
                   "own servers, journal and manifest (manifest.shard-K-of-N.json), so N shards may write into one "
                   "output folder; `revpers merge-manifests` joins their manifests. `auto`: K and N from a Slurm "
                   "job array ($SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes Indexed Job "
                   "($JOB_COMPLETION_INDEX, with --shard-count). See docs/scaling.md")
    g.add_argument("--shard-count", type=int, metavar="N", help="with --shard auto and $JOB_COMPLETION_INDEX: "
                   "the number of shards (the Indexed Job's completions)")


def _merge_parser(sub):
    me = sub.add_parser("merge-manifests", help="join the manifests of a job's shards (--shard K/N) into one",
                        description="Join the manifests the shards of one job wrote (anonymize --shard K/N) into "
                        "one manifest in the job's format. Checks they are of one job (the same N and settings), "
                        "says which shards are missing and, per shard, how many of its planned items; an item in "
                        "two manifests is an error. Exit code 0 when every shard and item is there and none "
                        "failed, not 0 otherwise.")
    me.add_argument("manifests", nargs="+", metavar="FOLDER_OR_MANIFEST", help="the output folder (its "
                    "*.shard-K-of-N.json, or .csv, manifests) or the shards' manifest files")
    me.add_argument("-o", "--output", help="the merged manifest, .json or .csv (default: manifest.json, or .csv, "
                    "beside the shards' manifests)")
    return me


def _models_parser(sub):
    mo = sub.add_parser("models", help="download (or check) the real model files",
                        description="Download the model files the job needs from their public sources, "
                        "with progress and sha256 verification; --check only verifies.")
    mo.add_argument("--models", help="models base folder (default: $REVPERS_MODELS, or the ComfyUI's models/)")
    mo.add_argument("--comfyui", help="ComfyUI folder whose models/ to use (default: $COMFYUI_DIR, or "
                    ".host/comfyui-$REVPERS_HOST, default 0.3.75)")
    mo.add_argument("--check", action="store_true", help="only check: list what is missing, verify sha256")
    mo.add_argument("--only", nargs="+", metavar="NAME", help="only these files (or buffalo_l.zip)")
    mo.add_argument("--checkpoint", help="your own SDXL checkpoint instead of the SDXL base (checked, not downloaded)")
    mo.add_argument("--source-base", help="fetch <URL>/<file name> instead of the public sources (a mirror); "
                    "also $REVPERS_MODEL_SOURCE")
    mo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return mo


def _audit_parser(sub):
    from revpers_core.faces import recognizers
    au = sub.add_parser("audit", help="audit a folder of anonymized photos against their originals, offline",
                        description="The audit of the saved images over a whole set: the photos of ANONYMIZED "
                        "matched to those of ORIGINALS by file name; every original face against what is at its "
                        "place and against every face of the set, by dlib (and ArcFace with --models). Prints the "
                        "re-identification figures; writes one row per face and recognizer (--report .csv/.json) "
                        "and a chart (--chart .png). Exit code 0 when no face is recognizable, 1 otherwise.")
    au.add_argument("originals", help="folder of the original photos")
    au.add_argument("anonymized", help="folder of the anonymized photos (same file names)")
    au.add_argument("--report", help="write the per-face rows here (.csv or .json)")
    au.add_argument("--chart", help="write a PNG chart of the measures here")
    au.add_argument("--models", help="a models folder holding insightface/models/buffalo_l (or the buffalo_l folder "
                    "itself): adds ArcFace and its detector; without it dlib alone judges")
    au.add_argument("--no-dlib", action="store_true", help="leave dlib out (then --models is needed)")
    au.add_argument("--arcface-threshold", type=float, default=recognizers.ARCFACE_DEFAULT,
                    help=f"same person at or above this cosine similarity (default {recognizers.ARCFACE_DEFAULT:g})")
    au.add_argument("--dlib-threshold", type=float, default=recognizers.DLIB_DEFAULT,
                    help=f"same person at or below this distance (default {recognizers.DLIB_DEFAULT:g})")
    au.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return au


def build_parser():
    p = argparse.ArgumentParser(prog="revpers", description="Reverse Personalization: face anonymization "
                                "by negative identity guidance, run through ComfyUI.",
                                epilog="exit codes: 0 done, 1 the run failed (for many items: any item not "
                                "anonymized), 2 bad arguments, 3 model files missing, 4 no usable server (or it "
                                "stopped during the run; nothing is written), 5 written although the audit failed "
                                "(--allow-unanonymized), 130 interrupted")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p.commands = {"anonymize": _anonymize_parser(sub), "models": _models_parser(sub), "audit": _audit_parser(sub),
                  "merge-manifests": _merge_parser(sub)}
    return p


def attach_option_values(argv, options=("--server-args",)):
    """``--server-args --bf16-unet`` → ``--server-args=--bf16-unet``: argparse takes a lone value that
    starts with '-' for another option and stops with "expected one argument"."""
    out, args = [], iter(argv)
    for arg in args:
        if arg in options:
            value = next(args, None)
            if value is not None:
                out.append(f"{arg}={value}")
                continue
        out.append(arg)
    return out


def main(argv=None):
    p = build_parser()
    a = p.parse_args(attach_option_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        if a.command == "anonymize":
            return run_anonymize(p.commands["anonymize"], a)
        if a.command == "audit":
            return run_audit(p.commands["audit"], a)
        if a.command == "merge-manifests":
            return shards.run_merge(a.manifests, a.output)
        return run_models(p.commands["models"], a)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
