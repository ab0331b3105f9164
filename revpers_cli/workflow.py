"""The API-format workflows the CLI runs: finding and reading them, setting its knobs on their nodes,
checking them against a server, and reading back what their check nodes said.

A knob is a command-line option that sets a node input. `KNOBS` maps each to the nodes it sets,
found by class_type: every node of that class that has that input as a literal (not a link) gets
the value; a third element means "the node linked to that input, its input of this name". An option
given on the command line must land somewhere, or the workflow cannot take it (an error).
"""
import json
import re
from pathlib import Path

from revpers_core import file_privacy, guarantee, guidance
from . import models as model_registry

__all__ = ["WorkflowError", "SHIPPED", "KNOBS", "OUTPUT_CLASSES", "CHECK_CLASSES", "VERDICTS", "find_workflow",
           "load_workflow", "nodes_of", "apply_knobs", "check_against_server", "weak_settings",
           "with_face_guidance", "with_inputs", "audit_probe", "check_texts", "audit_summary", "check_summary",
           "sampler_summary", "tracks_summary", "missing_verdicts", "guidance_of", "checkpoint_of"]

REPO = Path(__file__).resolve().parent.parent
# The shipped workflow for each kind of item.
SHIPPED = {"photo": "workflows/api/anonymize_photo.json", "clip": "workflows/api/anonymize_video.json"}

_DETECTORS = ("RevPersDetectAlign", "RevPersDetectTrack")
KNOBS = {
    "image": [("LoadImage", "image")],
    "checkpoint": [("CheckpointLoaderSimple", "ckpt_name")],
    "adapter": [("RevPersFaceIDAdapterLoader", "adapter_name")],
    # the reference inverts with the sampler's guidance scale, so one option sets both
    "guidance": [("RevPersAnonymizedSampler", "guidance"), ("RevPersInvert", "guidance")],
    "skip": [("RevPersInvert", "skip")],
    "steps": [("RevPersInvert", "steps")],
    "seed": [("RevPersInvert", "seed")],
    # only the Attribute Text that feeds the sampler: the inversion's own stays empty (zeros)
    "attribute": [("RevPersAnonymizedSampler", "attribute", "text")],
    "faces": [(d, "max_faces") for d in _DETECTORS],  # all -> 0, largest -> 1, N -> the N largest
    # the other faces stay visible (outlined, the photo marked), instead of stopping the run
    "leave_other_faces": [(d, "beyond_max_faces") for d in _DETECTORS],
    "min_face_size": [(d, "min_face_size") for d in _DETECTORS],
    # save photos that fail the audit (marked NOT ANONYMIZED) instead of stopping the run
    "allow_unanonymized": [("RevPersAudit", "on_fail")],
    "check_fails": [("RevPersAnonymityCheck", "fail_if_recognizable")],  # set with --allow-unanonymized
    # "dlib (required)" unless --single-recognizer: the audit's independent judge is not left out by accident
    "second_recognizer": [("RevPersAudit", "second_recognizer")],
    "max_gap": [("RevPersDetectTrack", "max_gap")],
    "arcface_threshold": [("RevPersAudit", "arcface_threshold")],
    "dlib_threshold": [("RevPersAudit", "dlib_threshold")],
    "crop_size": [(d, "crop_size") for d in _DETECTORS],
    "filename_prefix": [("SaveImage", "filename_prefix"), ("SaveAnimatedWEBP", "filename_prefix"),
                        ("RevPersSave", "filename_prefix")],
    # the frames of a clip come back without loss, to be encoded once, by the CLI
    "lossless": [("SaveAnimatedWEBP", "lossless"), ("RevPersSave", "lossless")],
    # whether the pack's Save node writes images the audit failed (the CLI saves none of a failed attempt)
    "if_audit_failed": [("RevPersSave", "if_audit_failed")],
}
OUTPUT_CLASSES = ("SaveImage", "SaveAnimatedWEBP", "RevPersSave")
# ComfyUI's own save nodes write the prompt (which names the uploaded file) and the workflow into every file
# they save on the server, unless the server runs with --disable-metadata; the pack's Save node writes them
# only when its metadata widget asks for it.
METADATA_SAVERS = ("SaveImage", "SaveAnimatedWEBP")
CHECK_CLASSES = ("RevPersAudit", "RevPersAnonymityCheck")
# The nodes that judge, and the key of their UI output that holds their verdict as data: the CLI reads only
# these (a node of these kinds whose data is missing fails the item), never the text they show.
VERDICTS = {"RevPersAudit": "revpers_audit", "RevPersAnonymityCheck": "revpers_check",
            "RevPersAnonymizedSampler": "revpers_sampler", "RevPersDetectTrack": "revpers_tracks"}
_ALWAYS_SET = ("LoadImage", "SaveImage", "SaveAnimatedWEBP", "RevPersSave")  # inputs set even where the file leaves them out


class WorkflowError(ValueError):
    """A workflow that cannot be used as asked; the message says why."""


def find_workflow(path=None, kind="photo"):
    """The workflow file to run: `path`, or the shipped one for `kind` ("photo" or "clip")."""
    p = Path(path) if path else REPO / SHIPPED[kind]
    if not p.is_file():
        raise WorkflowError(f"the workflow {p} does not exist" + ("" if path else "; give one with --workflow FILE"))
    return p


def load_workflow(path):
    try:
        graph = json.loads(Path(path).read_text())
    except ValueError as e:
        raise WorkflowError(f"the workflow {path} is not valid JSON: {e}")
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise WorkflowError(f"{path} is a UI-format workflow (for dragging into ComfyUI); give the API-format "
                            "one (File > Export (API) in ComfyUI, or workflows/api/ in this repository)")
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise WorkflowError(f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return graph


def nodes_of(graph, class_type):
    """Ids of the nodes of one class_type (or of any of a tuple of them)."""
    wanted = (class_type,) if isinstance(class_type, str) else tuple(class_type)
    return [nid for nid, node in graph.items() if node.get("class_type") in wanted]


def _set_knob(graph, knob, value):
    """Set one knob on every node that takes it; how many inputs were set."""
    placed = 0
    for class_type, input_name, *through in KNOBS[knob]:
        for nid in nodes_of(graph, class_type):
            inputs, name = graph[nid].setdefault("inputs", {}), input_name
            if through:
                link = inputs.get(name)
                if not (isinstance(link, list) and str(link[0]) in graph):
                    continue
                inputs, name = graph[str(link[0])].setdefault("inputs", {}), through[0]
            if isinstance(inputs.get(name), list):
                continue  # wired to another node: not a knob here
            if name in inputs or class_type in _ALWAYS_SET:
                inputs[name] = value
                placed += 1
    return placed


def apply_knobs(graph, values, soft=()):
    """A copy of `graph` with every knob in `values` (None = keep the workflow's) set on its nodes.
    Raises WorkflowError naming the knobs the workflow has no place for (except those in `soft`:
    defaults of ours that apply only where the workflow has the input)."""
    graph = json.loads(json.dumps(graph))
    unplaced = []
    for knob, value in values.items():
        if value is not None and not _set_knob(graph, knob, value) and knob not in soft:
            where = " or ".join(f"{k[0]}.{k[1]}" for k in KNOBS[knob])
            unplaced.append(f"--{knob.replace('_', '-')} (the workflow has no {where})")
    if unplaced:
        raise WorkflowError("this workflow cannot take these options: " + "; ".join(unplaced))
    return graph


def checkpoint_of(graph):
    """The checkpoint file the workflow loads (the first literal one), or None."""
    names = [graph[n]["inputs"].get("ckpt_name") for n in nodes_of(graph, "CheckpointLoaderSimple")]
    return next((c for c in names if isinstance(c, str)), None)


def guidance_of(graph):
    """The Anonymized Sampler's guidance when every sampler of the graph has the same literal one, else None."""
    values = {graph[n]["inputs"].get("guidance") for n in nodes_of(graph, "RevPersAnonymizedSampler")}
    if len(values) != 1:
        return None
    value = next(iter(values))
    return float(value) if isinstance(value, (int, float)) else None


def combo_choices(spec):
    """The choices of a combo input as /object_info describes it, or None for any other input: the list
    itself for a V1 node (`[[choices], {...}]`), the "options" of a V3 node's `["COMBO", {"options": ...}]`."""
    if not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("options")
    return None


def check_against_server(graph, object_info, entries):
    """Before any work: every node type exists on the server, and every file-choice input names a
    file the server has. Returns (unknown node types, [MissingFile])."""
    unknown = sorted({n["class_type"] for n in graph.values() if n["class_type"] not in object_info})
    by_name = {e.name: e for e in entries}
    missing = []
    for node in graph.values():
        spec = object_info.get(node["class_type"])
        if spec is None or node["class_type"] == "LoadImage":
            continue
        declared = {**spec.get("input", {}).get("required", {}), **spec.get("input", {}).get("optional", {})}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) or name not in declared:
                continue
            choices = combo_choices(declared[name])
            if not (isinstance(choices, list) and isinstance(value, str) and value not in choices):
                continue
            e = by_name.get(value)
            if e is not None:
                missing.append(model_registry.MissingFile(e.name, f"the server's {e.folder}/ folder", e.source.url,
                                                          e.role))
            elif re.search(r"\.(safetensors|bin|ckpt|pt|pth|onnx)$", value):
                missing.append(model_registry.MissingFile(
                    value, f"the server's folder for {node['class_type']}.{name}", "(not a file this pack knows)"))
    return unknown, missing


def weak_settings(graph):
    """What in the graph cannot anonymize (guidance 0 or more, identity scale 0), one line each."""
    weak = []
    for nid in nodes_of(graph, "RevPersAnonymizedSampler"):
        g = graph[nid]["inputs"].get("guidance")
        if isinstance(g, (int, float)):
            weak += [f"node {nid} (Anonymized Sampler): {why}" for why in guidance.why_not_anonymizing(g)]
    for nid in nodes_of(graph, "RevPersIdentityConditioning"):
        scale = graph[nid]["inputs"].get("ip_adapter_scale")
        if isinstance(scale, (int, float)):
            weak += [f"node {nid} (Identity Conditioning): {why}"
                     for why in guidance.why_not_anonymizing(guidance.DEFAULT, scale)]
    return weak


def with_face_guidance(graph, overrides):
    """The graph with the Anonymized Sampler's per-face guidance set (guaranteed mode's retries)."""
    if not overrides:
        return graph
    graph = json.loads(json.dumps(graph))
    for nid in nodes_of(graph, "RevPersAnonymizedSampler"):
        graph[nid]["inputs"]["face_guidance"] = guarantee.format_face_guidance(overrides)
    return graph


def audit_probe(graph):
    """A tiny graph that asks a server which recognizers its audit has: the workflow's own Face Analysis
    Loader, an empty 64x64 picture audited against itself with dlib if installed (no face, so it passes);
    its verdict data names the recognizers. None when the workflow has no audit fed by a loader of literal
    settings."""
    for nid in nodes_of(graph, "RevPersAudit"):
        link = graph[nid]["inputs"].get("analysis")
        loader = graph.get(str(link[0])) if isinstance(link, list) else None
        if loader is None or any(isinstance(v, list) for v in loader.get("inputs", {}).values()):
            continue
        audit = {k: v for k, v in graph[nid]["inputs"].items() if not isinstance(v, list)}
        audit.update(analysis=["1", 0], original=["2", 0], anonymized=["2", 0],
                     second_recognizer="dlib if installed", on_fail="stop the run")
        return {"1": json.loads(json.dumps(loader)),
                "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                "3": {"class_type": "RevPersAudit", "inputs": audit}}
    return None


def with_inputs(graph, class_type, **inputs):
    """The graph with `inputs` set on every node of `class_type`: the audit's on_fail (one of
    revpers_core.faces.audit.ON_FAIL), the Save node's if_audit_failed (revpers_core.file_privacy) or format."""
    graph = json.loads(json.dumps(graph))
    for nid in nodes_of(graph, class_type):
        graph[nid]["inputs"].update(inputs)
    return graph


def metadata_savers(graph):
    """The save nodes of the graph that write the prompt and workflow into the files they leave on the
    server: "node N (class)" each."""
    found = [f"node {nid} ({graph[nid]['class_type']})" for nid in nodes_of(graph, METADATA_SAVERS)]
    found += [f"node {nid} (RevPersSave, metadata on)" for nid in nodes_of(graph, "RevPersSave")
              if graph[nid]["inputs"].get("metadata") not in (None, file_privacy.NO_METADATA)]
    return found


def server_files(result):
    """Every file the run's nodes report having saved on the server (any node's ui "images", "gifs",
    "audio" or "latents"), as (folder type, subfolder/file name), in node order."""
    found = []
    for nid in sorted(result.outputs, key=lambda n: (len(str(n)), str(n))):
        for key in ("images", "gifs", "audio", "latents"):
            for record in (result.outputs[nid] or {}).get(key, []) or []:
                if isinstance(record, dict) and record.get("filename"):
                    sub = record.get("subfolder") or ""
                    found.append((record.get("type", "output"), f"{sub}/{record['filename']}" if sub else
                                  record["filename"]))
    return found


def check_texts(result, graph):
    """What the check nodes said in their UI output, for people to read, and the sampler's warnings (from
    its data)."""
    texts = []
    for nid in nodes_of(graph, CHECK_CLASSES):
        value = (result.outputs.get(nid) or {}).get("text", [])
        texts += [t for t in (value if isinstance(value, list) else [value]) if isinstance(t, str)]
    for verdict in _verdicts(result, graph, "RevPersAnonymizedSampler"):
        texts += [w for w in verdict.get("warnings", []) if isinstance(w, str)]
    return texts


def _verdicts(result, graph, class_type):
    """The verdict data of every node of `class_type` in the result, in node order."""
    key = VERDICTS[class_type]
    return [item for nid in nodes_of(graph, class_type)
            for item in (result.outputs.get(nid) or {}).get(key, []) if isinstance(item, dict)]


def missing_verdicts(result, graph):
    """The nodes that judge (VERDICTS) but gave no verdict data in `result`: "node N (class)" each."""
    missing = []
    for class_type, key in VERDICTS.items():
        for nid in nodes_of(graph, class_type):
            items = (result.outputs.get(nid) or {}).get(key)
            if not (isinstance(items, list) and items and all(isinstance(i, dict) for i in items)):
                missing.append(f"node {nid} ({class_type})")
    return missing


def audit_summary(result, graph):
    """The audit nodes' verdicts as data (merged over their outputs), or None without one."""
    summaries = _verdicts(result, graph, "RevPersAudit")
    if not summaries:
        return None
    return {"passed": all(x.get("passed") is True for x in summaries),
            "recognized": any(x.get("recognized", not x.get("passed")) for x in summaries),
            "failed_rows": sorted({r for x in summaries for r in x.get("failed_rows", [])}),
            "unfixable": [u for x in summaries for u in x.get("unfixable", [])],
            "left": sum(int(x.get("left", 0)) for x in summaries),
            "rows": [r for x in summaries for r in x.get("rows", [])],
            "recognizers": sorted({n for x in summaries for n in x.get("recognizers", [])}),
            "independent": all(x.get("independent") is True for x in summaries),
            "redacted": [r for x in summaries for r in x.get("redacted", [])]}


def check_summary(result, graph):
    """The Anonymity Check nodes' verdicts as data (merged), or None without one."""
    checks = _verdicts(result, graph, "RevPersAnonymityCheck")
    if not checks:
        return None
    return {"passed": all(x.get("passed") is True for x in checks),
            "faces": [f for x in checks for f in x.get("faces", [])]}


def sampler_summary(result, graph):
    """The Anonymized Samplers' verdicts as data (merged), or None without one."""
    samplers = _verdicts(result, graph, "RevPersAnonymizedSampler")
    if not samplers:
        return None
    return {"anonymizing": all(x.get("anonymizing") is True for x in samplers),
            "warnings": [w for x in samplers for w in x.get("warnings", [])]}


def tracks_summary(result, graph):
    """What Detect and Track did, as data (merged), or None without one: the long gaps per track and frame
    range, the faces interpolated, the frames without a face."""
    found = _verdicts(result, graph, "RevPersDetectTrack")
    if not found:
        return None
    return {"long_gaps": [g for x in found for g in x.get("long_gaps", [])],
            "interpolated": [f for x in found for f in x.get("interpolated", [])],
            "unchanged_frames": sorted({f for x in found for f in x.get("unchanged_frames", [])})}
