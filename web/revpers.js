// Reverse Personalization: what the pack's nodes report after a run, shown on the node itself.
//
// The Audit, the Anonymity Check and the Anonymized Sampler hand back text in their UI output (the
// audit's per-face report, the sampler's "NOT ANONYMIZING" warning, the per-face guidance used).
// ComfyUI's own front end shows nothing of it; this extension puts it in a read-only text box under
// the node's widgets and paints the node red when the text says the output is not anonymized, so the
// warning reaches the person at the graph, not only the server log. Nothing here is sent back with
// the prompt or changes what runs.
//
// Hooks: `nodeCreated` hands each of the pack's nodes its own onExecuted (called when a run reports
// on that node, also inside a subgraph), and `onNodeOutputsUpdated` shows the reports again when the
// front end puts back a set of outputs (a workflow tab opened again, a finished job loaded from the
// queue). Both renderers show the result: the text box is a DOM widget, which the LiteGraph canvas
// lays over the node and Vue-rendered nodes ("Nodes 2.0") mount inside it; the colour is the node's
// color/bgcolor, which both read. Nothing depends on the canvas drawing hooks, which Vue-rendered
// nodes do not call. Vue-rendered nodes mount the widgets a node has when it is created, not one
// added after a run, so the nodes that report get their (empty, folded) box at creation.
import { app } from "../../scripts/app.js";

const FIELD = "revpers_report";
const OUR_NODES = "RevPers";
const REPORTING = new Set(["RevPersAudit", "RevPersAnonymityCheck", "RevPersAnonymizedSampler"]);
const ALARM = /RESULT: FAILED|NOT ANONYMIZING|at or above the threshold|LEFT UN-ANONYMIZED/;
const ALARM_COLOURS = { color: "#a02020", bgcolor: "#5a1a1a" };

function kindOf(node) {
    const kind = node?.comfyClass ?? node?.constructor?.comfyClass ?? node?.type;
    return typeof kind === "string" ? kind : "";
}

function isOurs(node) {
    return kindOf(node).startsWith(OUR_NODES);
}

function reportWidget(node) {
    let widget = node.widgets?.find((w) => w.name === FIELD);
    if (widget) return widget;
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.spellcheck = false;
    area.className = "revpers-report";
    area.style.cssText = "width:100%;min-height:90px;font:11px monospace;white-space:pre-wrap;overflow:auto;"
        + "background:#111;color:#ddd;border:1px solid #444;box-sizing:border-box;display:none;";
    widget = node.addDOMWidget(FIELD, "revpers_report", area, {
        getValue: () => area.value,
        setValue: (value) => {
            area.value = value ?? "";
            area.style.display = area.value ? "" : "none"; // folded away until there is a report
        },
        getMinHeight: () => (area.value ? 90 : 0),
        getMaxHeight: () => (area.value ? undefined : 0),
        serialize: false, // never part of the prompt
    });
    widget.serialize = false; // nor of the saved workflow
    return widget;
}

function show(node, output) {
    const lines = (output?.text ?? []).filter((t) => typeof t === "string" && t.length);
    if (!lines.length) return;
    const text = lines.join("\n\n");
    const widget = reportWidget(node);
    widget.value = text;
    if (widget.element && widget.element.value !== text) {
        widget.element.value = text;
        widget.element.style.display = "";
    }
    const verdicts = output?.revpers_audit ?? [];
    const alarm = ALARM.test(text) || verdicts.some((v) => v && v.passed === false);
    if (alarm) {
        if (node.revpersColours === undefined) node.revpersColours = { color: node.color, bgcolor: node.bgcolor };
        Object.assign(node, ALARM_COLOURS);
    } else if (node.revpersColours !== undefined) {
        Object.assign(node, node.revpersColours);
        delete node.revpersColours;
    }
    node.revpersAlarm = alarm;
    // the canvas renderer sizes the node itself; Vue-rendered nodes grow with their content
    if (node.size && node.computeSize) node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas?.(true, true);
}

// The node a key of the front end's node outputs names: a node of the root graph ("12"), a node
// reached through subgraph nodes by its execution id ("7:12"), or a node of a subgraph definition by
// its locator ("<subgraph id>:12").
function nodeFor(key) {
    const root = app.rootGraph ?? app.graph;
    const parts = String(key).split(":");
    const id = parts.pop();
    let graph = root;
    for (const part of parts) {
        graph = graph?.getNodeById?.(part)?.subgraph ?? root?.subgraphs?.get?.(part);
        if (!graph) return null;
    }
    return graph?.getNodeById?.(id) ?? null;
}

app.registerExtension({
    name: "revpers.reports",
    nodeCreated(node) {
        if (!isOurs(node)) return;
        if (REPORTING.has(kindOf(node))) reportWidget(node);
        const onExecuted = node.onExecuted;
        node.onExecuted = function (output) {
            const result = onExecuted?.apply(this, arguments);
            show(this, output);
            return result;
        };
    },
    onNodeOutputsUpdated(outputs) {
        for (const [key, output] of Object.entries(outputs ?? {})) {
            const node = nodeFor(key);
            if (isOurs(node)) show(node, output);
        }
    },
});
