"""Two wings on one core: the nodes (ComfyUI's wing) and the command line (revpers_cli) both import the
method and the face side (revpers_core); the core imports neither wing nor ComfyUI, and neither wing
imports the other. Read from the sources' import statements, lazy ones inside functions included."""
import ast

from paths import REPO

WINGS = {"nodes": REPO / "nodes", "revpers_cli": REPO / "revpers_cli"}
CORE = REPO / "revpers_core"
COMFY = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}


def imported(path):
    """Top-level names of every module a file imports (relative imports resolved to their package)."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(REPO).parts[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else node.module.split(".")[0])
    return found


def imports_of(folder):
    return {p.relative_to(REPO).as_posix(): imported(p) for p in folder.rglob("*.py")}


def test_the_core_imports_neither_wing_nor_comfyui():
    bad = {f: sorted(names & (set(WINGS) | COMFY)) for f, names in imports_of(CORE).items()
           if names & (set(WINGS) | COMFY)}
    assert bad == {}


def test_each_wing_stands_on_the_core_and_never_on_the_other():
    for wing, folder in WINGS.items():
        other = (set(WINGS) - {wing}).pop()
        found = imports_of(folder)
        assert any("revpers_core" in names for names in found.values()), f"{wing} does not use the core"
        bad = {f: other for f, names in found.items() if other in names}
        assert bad == {}, f"{wing} imports {other}"


def test_the_command_line_never_imports_comfyui():
    bad = {f: sorted(names & (COMFY - {"nodes"})) for f, names in imports_of(WINGS["revpers_cli"]).items()
           if names & (COMFY - {"nodes"})}
    # the stand-ins' check loads a file through ComfyUI's own loader on purpose, in a child process
    assert set(bad) <= {"revpers_cli/standins/verify.py"}, bad


# --- one owner per rule ---------------------------------------------------------------------------------

def code_files():
    for folder in (CORE, *WINGS.values()):
        yield from folder.rglob("*.py")


def test_the_guidance_default_bounds_and_sign_are_written_once():
    """revpers_core/guidance.py owns the scale's default (the paper's -10), the widgets' bounds, the retries
    and the rule that a scale anonymizes only below 0: no other code file writes them as numbers, and
    nothing compares a guidance with 0 by itself."""
    owner = CORE / "guidance.py"
    literal = __import__("re").compile(r"(?<![\w.])-(10|30|12\.5|15)(\.0)?(?![\w.])|guidance\w*\s*[<>]=?\s*0\b")
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in code_files() if p != owner
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "guidance" in line.lower() and literal.search(line)]
    assert found == []


def test_the_command_line_reads_no_verdict_from_report_text():
    """The CLI decides from the nodes' verdicts as data; none of the phrases the reports show people is in
    its code."""
    phrases = ("RESULT: FAILED", "RESULT: PASSED", "at or above the threshold", "NOT ANONYMIZING", "LEFT UN-ANONYMIZED",
               "STILL RECOGNIZABLE")
    found = [f"{p.relative_to(REPO)}: {phrase}" for p in WINGS["revpers_cli"].rglob("*.py") for phrase in phrases
             if phrase in p.read_text()]
    assert found == []
