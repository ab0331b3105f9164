"""The ComfyUI servers a job runs on: the local one the CLI starts (and stops), or those given by URL,
each checked before any upload (the pack's node types are there, the model files the workflows name are
in its folders)."""
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import models as model_registry
from . import workflow
from .api import ComfyClient, ComfyError, ServerGone
from .errors import EXIT_MISSING, EXIT_SERVER, CliError
from .progress import say

__all__ = ["Server", "start_local", "check_servers", "cpu_only", "server_gone_message", "extra_model_folders"]


@dataclass
class Server:
    """One server of the job: its URL, the host process when the CLI started it, and its state."""

    url: str
    host: object = None              # revpers_cli.host.ComfyHost when started here
    gone: str = ""                   # why it left the job ("" while usable)
    items: list = field(default_factory=list)  # labels of the items it finished

    def client(self, **options):
        """A ComfyClient for this server (`options`: ComfyClient's, e.g. stall)."""
        return ComfyClient(self.url, **options)


def cpu_only():
    """True when torch sees no CUDA device here (or is not installed)."""
    try:
        import torch
        return not torch.cuda.is_available()
    except ImportError:
        return True


def start_local(comfyui_dir, extra_args, models_dir, workdir, python=None, startup_timeout=300.0):
    """Start the local ComfyUI for the job; a Server (stop it with `server.host.stop()`).

    It keeps nothing of the job: its input and output folders are in `workdir`, its temp folder in the
    host's own temporary folder, and both go when it stops, or, however this command ends (Ctrl-C, an
    error, SIGKILL), when its watchdog has killed it; its database (current ComfyUI records uploads and
    outputs there with --enable-assets) is in memory unless --server-args names one."""
    from .host import ComfyHost, HostError
    extra_args = list(extra_args)
    if not any(a == "--database-url" or a.startswith("--database-url=") for a in extra_args):
        extra_args += ["--database-url", "sqlite:///:memory:"]
    host = ComfyHost(comfyui_dir, python=python, extra_args=extra_args, models_dir=models_dir,
                     input_dir=Path(workdir) / "input", output_dir=Path(workdir) / "output",
                     startup_timeout=startup_timeout, remove_on_exit=[workdir])
    say(f"starting ComfyUI from {comfyui_dir} {' '.join(shlex.quote(a) for a in host.extra_args)} "
        f"(log: {host.log_path or 'temporary'})")
    try:
        host.start()
    except (HostError, FileNotFoundError) as e:
        raise CliError(f"could not start ComfyUI: {e}", EXIT_SERVER)
    say(f"ComfyUI is up at {host.url}")
    return Server(host.url, host)


def _check_one(server, graphs, entries):
    """Raise CliError when the server cannot run the graphs; ServerGone/ComfyError when it does not answer."""
    with server.client() as client:
        info = client.object_info()
    for graph in graphs:
        unknown, missing = workflow.check_against_server(graph, info, entries)
        if unknown:
            raise CliError(f"the server at {server.url} has no node type {', '.join(unknown)}: is the Reverse "
                           "Personalization pack installed in its custom_nodes (and did it load)?", EXIT_SERVER)
        if missing:
            raise CliError(model_registry.describe_missing(missing), EXIT_MISSING)


def check_servers(servers, graphs, entries):
    """The servers that can run the graphs. One that cannot is said and left out; with none left the
    first reason is raised (an unreachable server: exit code 4; model files missing: 3)."""
    usable, first = [], None
    for server in servers:
        try:
            _check_one(server, graphs, entries)
        except (ServerGone, ComfyError, OSError) as e:
            error = CliError(f"cannot reach a ComfyUI server at {server.url}: {e}", EXIT_SERVER)
        except CliError as e:
            error = e
        else:
            usable.append(server)
            continue
        first = first or error
        server.gone = str(error)
        if len(servers) > 1:
            say(f"warning: the server at {server.url} is left out of the job: {error}")
    if not usable:
        raise first
    return usable


def server_gone_message(error, server, output):
    """The message for a server that stopped answering: the client's, then (for the local server this
    command started) how its process ended and its last log lines, and that nothing was written."""
    lines = [str(error)]
    proc = server.host.process if server is not None and server.host is not None else None
    if proc is not None:
        try:
            code = proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            lines.append("The local ComfyUI this command started is still running but does not answer.")
        else:
            how = f"exit code {code}"
            if code < 0:
                try:
                    how = f"killed by signal {signal.Signals(-code).name}"
                except ValueError:
                    how = f"killed by signal {-code}"
            lines.append(f"The local ComfyUI this command started has ended ({how}); its last log lines:")
            lines += ["  | " + line for line in server.host.log_tail(12).splitlines()] or ["  | (empty)"]
    lines.append(f"Nothing was written to {output}.")
    return "\n".join(lines)


# --- the local host's model files ----------------------------------------------------------------

def extra_model_folders(comfyui_dir):
    """Folder lists from the host's own extra_model_paths.yaml: {comfy folder: [dirs]}."""
    path = Path(comfyui_dir) / "extra_model_paths.yaml"
    out = {}
    if not path.is_file():
        return out
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        say(f"warning: {path} could not be read ({error}); only the host's own models folder is used")
        return out
    if not isinstance(config, dict):
        return out
    for section in config.values():
        if not isinstance(section, dict):
            continue
        base = Path(section.get("base_path", "") or "")
        if not base.is_absolute():
            base = path.parent / base
        for folder, value in section.items():
            if folder in ("base_path", "is_default") or not isinstance(value, str):
                continue
            out.setdefault(folder, []).extend(base / line.strip() for line in value.splitlines() if line.strip())
    return out
