// Reverse Personalization: what the pack's nodes report after a run, shown on the node itself.
//
// The Audit, the Anonymity Check and the Anonymized Sampler hand back text in their UI output (the
// audit's per-face report, the sampler's "NOT ANONYMIZING" warning, the per-face guidance used).
// ComfyUI's own front end shows nothing of it; this extension puts it in a read-only text box under
// the node's widgets and paints the node red when the text says the output is not anonymized, so the
// warning reaches the person at the graph, not only the server log. Nothing here is sent back with
// the prompt or changes what runs.
import { app } from "../../scripts/app.js";

const FIELD = "revpers_report";
const ALARM = /RESULT: FAILED|NOT ANONYMIZING|at or above the threshold|LEFT UN-ANONYMIZED/;
const ALARM_COLOURS = { color: "#a02020", bgcolor: "#5a1a1a" };

function reportWidget(node) {
    let widget = node.widgets?.find((w) => w.name === FIELD);
    if (widget) return widget;
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.spellcheck = false;
    area.className = "revpers-report";
    area.style.cssText = "width:100%;min-height:90px;font:11px monospace;white-space:pre-wrap;overflow:auto;"
        + "background:#111;color:#ddd;border:1px solid #444;";
    widget = node.addDOMWidget(FIELD, "revpers_report", area, {
        getValue: () => area.value,
        setValue: (value) => { area.value = value ?? ""; },
        serialize: false, // never part of the prompt
    });
    widget.serialize = false; // nor of the saved workflow
    return widget;
}

function show(node, message) {
    const lines = (message?.text ?? []).filter((t) => typeof t === "string" && t.length);
    if (!lines.length) return;
    const text = lines.join("\n\n");
    const widget = reportWidget(node);
    widget.value = text;
    if (widget.element) widget.element.value = text;
    const verdicts = message?.revpers_audit ?? [];
    const alarm = ALARM.test(text) || verdicts.some((v) => v && v.passed === false);
    if (alarm) {
        if (node.revpersColours === undefined) node.revpersColours = { color: node.color, bgcolor: node.bgcolor };
        Object.assign(node, ALARM_COLOURS);
    } else if (node.revpersColours !== undefined) {
        Object.assign(node, node.revpersColours);
        delete node.revpersColours;
    }
    node.revpersAlarm = alarm;
    node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
}

app.registerExtension({
    name: "revpers.reports",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData?.name?.startsWith("RevPers")) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = onExecuted?.apply(this, arguments);
            show(this, message);
            return result;
        };
    },
});
