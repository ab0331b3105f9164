"""What the Comfy Registry and ComfyUI-Manager read from the repository: pyproject.toml's metadata, the
requirements the node pack installs, what the published archive leaves out, and the source checks
the Registry's scanner cares about."""
import fnmatch
import shutil
import subprocess
import sys
import tomllib

import pytest
from PIL import Image

from paths import REPO
from revpers_core.environment import ONNXRUNTIME_DISTRIBUTIONS
from revpers_cli.host import DEFAULT_HOST

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# the values the Registry's own parser accepts (ComfyUI's comfy_config/config_parser.py)
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}


def requirement_lines(path):
    return [line.split("#")[0].strip() for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]


def _name(requirement):
    for i, c in enumerate(requirement):
        if c in "<>=!~;[ ":
            return requirement[:i].lower()
    return requirement.lower()


def test_requirements_txt_is_the_node_packs_dependency_list():
    assert requirement_lines(REPO / "requirements.txt") == PYPROJECT["project"]["dependencies"]


def test_no_onnx_runtime_build_is_forced_on_the_user():
    """Neither file names an ONNX Runtime: a venv holding onnxruntime-gpu must keep it (the CPU package
    would overwrite its files); the extras `cpu` and `gpu` name one each."""
    names = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not names & set(ONNXRUNTIME_DISTRIBUTIONS)
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["cpu"]] == ["onnxruntime"]
    assert [_name(r) for r in extras["gpu"]] == ["onnxruntime-gpu"]


def _requires(name):
    """The distributions ``name`` (installed) asks for, extras and environment-marked ones left out."""
    from importlib import metadata

    try:
        found = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None
    return [_name(r) for r in found if ";" not in r]


def test_nothing_the_node_pack_installs_pulls_in_an_onnx_runtime():
    """Followed through the installed packages' own requirements: no dependency of the node pack asks
    for onnxruntime (insightface's releases do, which is why the pack runs its models itself)."""
    seen, todo = set(), [_name(r) for r in PYPROJECT["project"]["dependencies"] if _name(r) != "torch"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        asked = _requires(name)
        assert asked is not None, f"{name} is not installed here"
        assert not set(asked) & set(ONNXRUNTIME_DISTRIBUTIONS), f"{name} asks for {asked}"
        todo += asked


def test_the_command_lines_dependencies_are_an_extra_not_the_node_packs():
    cli = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["cli"]}
    assert {"requests", "websocket-client", "tqdm", "av"} <= cli
    assert not cli & {_name(r) for r in PYPROJECT["project"]["dependencies"]}


def test_registry_metadata():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"] == f">={DEFAULT_HOST}"
    prefix = "https://raw.githubusercontent.com/revpers/reverse-personalization/main/"
    assert comfy["Icon"].startswith(prefix)
    icon = REPO / comfy["Icon"][len(prefix):]
    with Image.open(icon) as picture:
        assert picture.format == "PNG" and picture.size[0] == picture.size[1] >= 256
    urls = PYPROJECT["project"]["urls"]
    assert {"Homepage", "Repository", "Documentation", "Issues"} <= set(urls)
    classifiers = PYPROJECT["project"]["classifiers"]
    systems = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    assert systems and all(s.startswith(REGISTRY_OS_PREFIXES) for s in systems)
    assert accelerators and set(accelerators) <= REGISTRY_ACCELERATORS


def _ignored(path, patterns):
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.rstrip("/") in parts[:-1]:
                return True
        elif fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(parts[-1], pattern):
            return True
    return False


def test_the_published_archive_holds_the_node_pack_only():
    """.comfyignore (gitignore syntax) keeps tests, benchmarks, scripts, docs, CI and the command line out of the archive;
    what ComfyUI loads (the entry point, nodes, the method, the web extension, the workflows) stays."""
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    shipped = [p for p in tracked if not _ignored(p, patterns)]
    for folder in ("tests/", "benchmarks/", "scripts/", ".ci/", "docs/", "revpers_cli/"):
        assert not [p for p in shipped if p.startswith(folder)], f"{folder} would ship"
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md",
                   "web/revpers.js", "workflows/anonymize_photo.json", "workflows/api/anonymize_photo.json"):
        assert needed in shipped, f"{needed} would be left out"
    assert any(p.startswith("nodes/") for p in shipped) and any(p.startswith("revpers_core/") for p in shipped)


def test_no_exec_eval_or_statements_joined_by_semicolons():
    """ruff's S102 (exec), S307 (eval) and E702 (several statements on one line) find nothing."""
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (it is in the test extra)")
    run = subprocess.run([ruff, "check", "--no-cache", "--select", "S102,S307,E702", "--exclude",
                          ".venv,.host,artifacts", str(REPO)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_registry_parses_the_pyproject_as_published():
    """ComfyUI's own parser of pyproject.toml (comfy_config) on the host, where it has one."""
    from paths import HOST

    if not (HOST / "comfy_config" / "config_parser.py").is_file():
        pytest.skip("this ComfyUI carries no comfy_config parser")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from comfy_config import config_parser; "
            "c = config_parser.extract_node_configuration(sys.argv[2]); p = c.project; "
            "print(json.dumps([p.supported_os, p.supported_accelerators, p.supported_comfyui_version, "
            "p.urls.issues, c.tool_comfy.icon]))")
    run = subprocess.run([sys.executable, "-c", code, str(HOST), str(REPO)], capture_output=True, text=True)
    if run.returncode and "No module named 'pydantic" in run.stderr:
        pytest.skip("this environment has no pydantic-settings (ComfyUI's parser needs it)")
    assert run.returncode == 0, run.stderr[-2000:]
    import json
    systems, accelerators, comfyui, issues, icon = json.loads(run.stdout)
    assert systems == ["OS Independent"] and accelerators == ["GPU :: NVIDIA CUDA"]
    assert comfyui == f">={DEFAULT_HOST}" and issues.endswith("/issues") and icon.endswith("docs/icon.png")
