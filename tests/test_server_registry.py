"""The pack as the running ComfyUI server presents it: every node registered, under the one root
category, described, with a tooltip on every input."""


def pack_nodes(comfy_inprocess):
    names = set(comfy_inprocess.nodes.BY_ID)
    assert names, "the pack registers no node"
    return names


def test_server_loaded_the_pack_without_import_errors(comfy_server):
    log = comfy_server.log_since(0)
    assert "revpers" in log, "the server log does not mention the pack at all"
    for line in log.splitlines():
        assert not ("IMPORT FAILED" in line and "revpers" in line), line
        assert "Cannot import" not in line or "revpers" not in line, line


def test_every_pack_node_is_registered_with_category_description_and_tooltips(comfy_server, comfy_inprocess):
    expected = pack_nodes(comfy_inprocess)
    CATEGORY = comfy_inprocess.nodes.common.CATEGORY
    info = comfy_server.object_info()
    served = {name for name in info if name.startswith("RevPers")}
    assert served == expected, f"served {sorted(served)} but the pack defines {sorted(expected)}"

    problems = []
    for name in sorted(expected):
        node = info[name]
        if not (node["category"] == CATEGORY or node["category"].startswith(CATEGORY + "/")):
            problems.append(f"{name}: category {node['category']!r} is not under {CATEGORY!r}")
        if len(node.get("description", "").strip()) < 20:
            problems.append(f"{name}: no description")
        if not node["display_name"].endswith("(RevPers)"):
            problems.append(f"{name}: display name {node['display_name']!r} does not end with '(RevPers)'")
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for input_name, spec in inputs.items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if not str(options.get("tooltip", "")).strip():
                problems.append(f"{name}.{input_name}: no tooltip")
    assert not problems, "\n".join(problems)
    print(f"\n{len(expected)} pack nodes served by {comfy_server.url}: {', '.join(sorted(expected))}")
