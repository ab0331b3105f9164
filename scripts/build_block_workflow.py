#!/usr/bin/env python
"""Build workflows/anonymize_photo_block.json: the photo workflow with its stages inside one subgraph
node, "Anonymize Faces", for front ends that have subgraphs (ComfyUI's current front end).

The flat workflows/anonymize_photo.json is the source. The real web UI of the local host (headless
Chromium) loads it and, with the front end's own "convert to subgraph", folds every stage into one
node; only the checkpoint loader, the photo, the save node and the note stay outside. The block then
takes the photo, the checkpoint's model, CLIP and VAE, the guidance (one knob for the inversion and
the sampler, which must agree), the attribute text and the inversion's seed, and gives the photo, the
audit's report (for Save Anonymized Images, which saves only what the audit passed or marked) and the
report as text. The three knobs are inputs of the subgraph, which front ends show as widgets on
the node; no inner widget is promoted (`proxyWidgets`), which front ends since mid-2026 turn into
links when a workflow loads.
Its inner nodes keep their ids, so the prompt the front end queues for the block is the flat API
workflow, node for node, with the block's id as a path prefix (the browser test checks that); ComfyUI
caches on that prompt, so a guidance-only change still re-runs only the sampler onward.

    .venv/bin/python scripts/build_block_workflow.py     # needs the default host (ComfyUI 0.3.75)
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from paths import HOST  # noqa: E402
from revpers_cli.host import ComfyHost  # noqa: E402
from webui import fit_view, has_subgraphs, load_ui_workflow, web_ui  # noqa: E402

SOURCE = REPO / "workflows" / "anonymize_photo.json"
TARGET = REPO / "workflows" / "anonymize_photo_block.json"
BLOCK_NAME = "Anonymize Faces"
OUTSIDE = [1, 10, 31, 32]  # checkpoint loader, photo, save, note
NOTE = """\
Anonymize every face in a photo, with the stages inside one node.

Anonymize Faces holds the whole method: Detect and Align, ArcFace Embedding, the two Identity \
Conditioning branches, Invert, Attribute Text, Anonymized Sampler, VAE Decode, Paste Back and the \
Audit. Give it the photo and the checkpoint; set guidance (how far from the person's identity, \
negative: -10 is the paper's), attribute text ("an old man"; empty for none) and the seed of the \
inversion's noise. It gives the \
anonymized photo, which the audit has checked (a face still recognizable stops the run, so nothing \
is saved), the audit's verdict for the save node, and the audit's report as text. Save Anonymized \
Images writes the photo with nothing in the file but its pixels (no prompt, no workflow, no EXIF). Open it (the icon at its top right) to see and change \
every stage; what it queues is exactly anonymize_photo.json, so a change re-runs only the stages \
it touches.

Needs a front end with subgraphs (tested: 1.32.9 with ComfyUI 0.3.75, 1.49.6 with ComfyUI 0.33); \
on older front ends use anonymize_photo.json.

Models: models/checkpoints/sd_xl_base_1.0.safetensors (any SDXL checkpoint), \
models/ipadapter/ip-adapter-faceid_sdxl.bin, models/insightface/models/buffalo_l/*.onnx; for the \
audit's second recognizer: pip install dlib-bin face-recognition-models."""

FOLD = """([outside, name, note]) => {
    const keep = new Set(outside);
    const items = new Set(app.graph._nodes.filter(n => !keep.has(n.id)));
    const {subgraph: g, node} = app.graph.convertToSubgraph(items);
    g.name = name;
    node.title = name;
    const inner = (id) => g.getNodeById(id);
    const slot = (n, input) => n.inputs.find(i => i.name === input);
    // the boundary links found by the conversion: the photo, model, CLIP and VAE in; the photo and the
    // audit's report (whose verdict the save node reads) out
    if (g.inputs.length !== 4 || g.outputs.length !== 2)
        throw new Error(`unexpected boundary: ${g.inputs.length} inputs, ${g.outputs.length} outputs`);
    g.renameInput(g.inputs.find(i => i.type === 'IMAGE'), 'photo');
    g.renameOutput(g.outputs.find(o => o.type === 'IMAGE'), 'photo');
    g.renameOutput(g.outputs.find(o => o.type === 'REVPERS_AUDIT_REPORT'), 'audit');
    // one guidance for both runs: the sampler must walk back the inversion's schedule
    const guidance = g.addInput('guidance', 'FLOAT');
    guidance.connect(slot(inner(25), 'guidance'), inner(25));
    guidance.connect(slot(inner(26), 'guidance'), inner(26));
    const attribute = g.addInput('attribute text', 'STRING');
    attribute.connect(slot(inner(27), 'text'), inner(27));
    const seed = g.addInput('seed', 'INT');
    seed.connect(slot(inner(25), 'seed'), inner(25));
    const report = g.addOutput('report', 'STRING');
    report.connect(inner(30).outputs.find(o => o.name === 'text'), inner(30));
    // The three inputs above show on the node as widgets because they are inputs of the subgraph, linked
    // to widgets inside: no promoted inner widget (front ends since mid-2026 turn such promotions into
    // links when a workflow loads).
    delete node.properties.proxyWidgets;
    node.setSize(node.computeSize());

    // outside: loaders on the left, the block, then the save node; the note below
    const [ckpt, photo, save, text] = outside.map(id => app.graph.getNodeById(id));
    ckpt.pos = [40, 40];
    photo.pos = [40, ckpt.pos[1] + ckpt.size[1] + 70];
    node.pos = [ckpt.pos[0] + Math.max(ckpt.size[0], photo.size[0]) + 80, 40];
    node.size[0] = Math.max(node.size[0], 360);
    save.pos = [node.pos[0] + node.size[0] + 80, 40];
    save.size = [Math.max(save.size[0], 420), Math.max(save.size[1], 420)];
    text.widgets[0].value = note;
    text.pos = [40, Math.max(photo.pos[1] + photo.size[1], save.pos[1] + save.size[1]) + 80];
    text.size = [Math.max(760, save.pos[0] + save.size[0] - 40), 300];
    app.graph.setDirtyCanvas(true, true);
    return JSON.parse(JSON.stringify(app.graph.serialize()));
}"""


def main():
    with ComfyHost(HOST, extra_args=["--cpu", "--disable-auto-launch"]) as host, web_ui(host.url) as page:
        if not has_subgraphs(page):
            sys.exit(f"the front end of {HOST} has no subgraphs: build with ComfyUI 0.3.75 "
                     "(bash scripts/install_host.sh)")
        load_ui_workflow(page, json.loads(SOURCE.read_text()))
        ui = page.evaluate(FOLD, [OUTSIDE, BLOCK_NAME, NOTE])
        TARGET.write_text(json.dumps(ui, indent=1) + "\n")
        # the thumbnail for ComfyUI's template browser, as for the flat workflows: the file as a
        # user opens it (loaded again, so the text boxes are drawn)
        load_ui_workflow(page, ui)
        fit_view(page)
        page.wait_for_timeout(500)
        thumb = TARGET.with_suffix(".jpg")
        page.screenshot(path=str(thumb), type="jpeg", quality=80)
        inner = ui["definitions"]["subgraphs"][0]["nodes"]
        print(f"{SOURCE.relative_to(REPO)} -> {TARGET.relative_to(REPO)}: {len(ui['nodes'])} nodes outside, "
              f"{len(inner)} inside {BLOCK_NAME!r}; {thumb.relative_to(REPO)}")


if __name__ == "__main__":
    main()
