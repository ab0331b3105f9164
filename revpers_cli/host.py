"""Start, wait for and stop a ComfyUI server process (headless, on 127.0.0.1).

    with ComfyHost("path/to/ComfyUI", models_dir="models", extra_args=["--cpu"]) as host:
        client = ComfyClient(host.url)
        ...

The server gets a port the OS picked, its own input/output/temp folders when given, and every model
folder of `models_dir` (checkpoints/, ipadapter/, insightface/, ...) through an
`--extra-model-paths-config` file with that base path, beside the host's own models folder. Its
stdout and stderr go to `log_path` (a temporary file if not given); a start that fails or times out
raises `HostError` with the tail of that log.

The server never outlives the process that started it, even one killed with SIGKILL (no cleanup of
ours runs then):

- on Linux the server process asks the kernel for SIGKILL when its parent dies
  (`prctl(PR_SET_PDEATHSIG)`, set between fork and exec). The kernel sends it when the *thread*
  that forked exits, so the fork is done on a thread that lives as long as the process: the main
  thread (when Python's main thread ends, the interpreter is shutting down anyway), or else one
  long-lived daemon thread of this module that does every fork requested from other threads;
- the server runs in its own session and process group (a Ctrl-C in the terminal reaches only us,
  and we stop the server in order), so its own children would not get a terminal's signals, nor the
  death signal (it is not inherited). A small watchdog process (Python, in its own session)
  holds the read end of a pipe whose only writer is this process: when this process ends, however
  it ends, the kernel closes that end, the watchdog reads end-of-file and SIGKILLs the server's
  whole process group. `stop()` closes the pipe too, after the server has stopped, so no child the
  server left behind survives it. This part works on any POSIX system (macOS has no PDEATHSIG).
  A child forked from this process without exec (multiprocessing's "fork" start method) inherits
  the writing end, which then delays the watchdog until that child ends too.

Nor do its files: once the server's process group is gone, the watchdog removes the host's own
temporary folder (temp folder, model paths, default log) and the folders given as `remove_on_exit`
(the command line gives the folder that holds the job's input and output folders), so a job's uploads
and outputs are gone however this process ended, SIGKILL included. `stop()` does the same in order.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

__all__ = ["ComfyHost", "HostError", "free_port", "MODEL_FOLDERS", "DEFAULT_HOST", "default_comfyui_dir"]

# The ComfyUI that scripts/install_host.sh installs under .host/comfyui-<version> (the pack's floor).
DEFAULT_HOST = "0.3.75"
_CHECKOUT = Path(__file__).resolve().parent.parent

# Model folders mapped from `models_dir` (ComfyUI's folder names, plus the two the pack registers).
MODEL_FOLDERS = ("checkpoints", "vae", "loras", "clip", "clip_vision", "unet", "controlnet",
                 "embeddings", "upscale_models", "ipadapter", "insightface")


def default_comfyui_dir(value=None):
    """The ComfyUI folder to use: `value`, else $COMFYUI_DIR, else the checkout's
    .host/comfyui-0.3.75 that scripts/install_host.sh installs."""
    if value or os.environ.get("COMFYUI_DIR"):
        return Path(value or os.environ["COMFYUI_DIR"])
    return _CHECKOUT / ".host" / f"comfyui-{DEFAULT_HOST}"


class HostError(RuntimeError):
    """The ComfyUI process did not come up (or died); the message carries its log tail."""


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on right now, chosen by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- a server that dies with us ------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _death_signal_setter():
    """A function for the child (between fork and exec) that asks Linux to SIGKILL it when its
    parent dies, and kills it at once if the parent is already gone; None where there is no prctl.
    Everything (libc lookup, the parent's pid) is prepared here, in the parent: the child only calls."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    kill, getppid, getpid, sigkill = os.kill, os.getppid, os.getpid, int(signal.SIGKILL)

    def set_death_signal():
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:  # the parent died between fork and prctl: nobody would kill us later
            kill(getpid(), sigkill)

    return set_death_signal


class _Forker:
    """One daemon thread that lives as long as the process and runs the Popen calls asked for from
    other threads, so that a server's death signal is tied to a thread that does not end first."""

    _lock = threading.Lock()
    _thread = None
    _jobs = None

    @classmethod
    def run(cls, fn):
        if threading.current_thread() is threading.main_thread():
            return fn()
        import queue
        with cls._lock:
            if cls._thread is None or not cls._thread.is_alive():
                cls._jobs = queue.SimpleQueue()
                cls._thread = threading.Thread(target=cls._serve, args=(cls._jobs,),
                                               name="revpers-host-forker", daemon=True)
                cls._thread.start()
            jobs = cls._jobs
        done, box = threading.Event(), {}
        jobs.put((fn, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    @staticmethod
    def _serve(jobs):
        while True:
            fn, box, done = jobs.get()
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e
            finally:
                done.set()


# The watchdog: reads its stdin (the pipe) to end-of-file, then SIGKILLs the server's process group, waits
# (up to 30 s) until no process of it is left, and removes the folders named after the group id; the host's
# own folder (the first) is kept when the pipe said "K" (a start that failed keeps its log for the user).
_WATCHDOG = """\
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
keep = False
while True:
    try:
        data = os.read(0, 4096)
    except InterruptedError:
        continue
    except OSError:
        break
    if not data:
        break
    keep = keep or b"K" in data
group = int(sys.argv[1])
try:
    os.killpg(group, signal.SIGKILL)
except OSError:
    pass
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.killpg(group, 0)
    except OSError:
        break
    time.sleep(0.05)
for i, folder in enumerate(sys.argv[2:]):
    if folder and not (keep and i == 0):
        shutil.rmtree(folder, ignore_errors=True)
"""


def _yaml_quote(text):
    return "'" + str(text).replace("'", "''") + "'"


class ComfyHost:
    """A ComfyUI server run as a child process of this one.

    comfyui_dir   the ComfyUI folder (holds main.py)
    python        the interpreter to run it with (default: this one)
    port          TCP port (default: a free one from the OS)
    extra_args    more main.py arguments, e.g. ["--cpu", "--use-pytorch-cross-attention"]
    models_dir    a models base folder to add (its checkpoints/, ipadapter/, ...)
    input_dir, output_dir   the server's input and output folders (default: the host's own)
    log_path      where the server's output goes (default: a temporary file, kept)
    remove_on_exit  folders removed once the server is gone (by stop(), or by the watchdog however this
                  process ends): where a job's private files are, e.g. those holding input_dir and output_dir
    """

    def __init__(self, comfyui_dir, python=None, port=None, extra_args=(), models_dir=None,
                 input_dir=None, output_dir=None, log_path=None, listen="127.0.0.1",
                 startup_timeout=180.0, env=None, remove_on_exit=()):
        self.comfyui_dir = Path(comfyui_dir).resolve()
        if not (self.comfyui_dir / "main.py").is_file():
            raise FileNotFoundError(
                f"no ComfyUI at {self.comfyui_dir} (main.py is missing). Give the folder of a ComfyUI "
                "checkout (--comfyui DIR or the COMFYUI_DIR environment variable), or run "
                "scripts/install_host.sh to install one under .host/.")
        self.python = python or sys.executable
        self.port = port
        self.listen = listen
        self.extra_args = list(extra_args)
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.input_dir = Path(input_dir).resolve() if input_dir else None
        self.output_dir = Path(output_dir).resolve() if output_dir else None
        self.log_path = Path(log_path) if log_path else None
        self._default_log = log_path is None
        self.startup_timeout = startup_timeout
        self.env = env
        self.remove_on_exit = [Path(p).resolve() for p in remove_on_exit]
        self.process = None
        self._workdir = None
        self._log_file = None
        self._watchdog = None
        self._watchdog_pipe = None

    @property
    def url(self):
        return f"http://{self.listen}:{self.port}"

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def command(self):
        """The command line that starts the server (call after the port and work folder are set)."""
        cmd = [self.python, "-u", str(self.comfyui_dir / "main.py"), "--listen", self.listen,
               "--port", str(self.port)]
        if self.models_dir is not None:
            cmd += ["--extra-model-paths-config", str(self._write_model_paths())]
        if self.input_dir is not None:
            cmd += ["--input-directory", str(self.input_dir)]
        if self.output_dir is not None:
            cmd += ["--output-directory", str(self.output_dir)]
        if "--temp-directory" not in self.extra_args and self._workdir is not None:
            cmd += ["--temp-directory", str(self._workdir)]
        return cmd + self.extra_args

    def _write_model_paths(self):
        if self._workdir is None:
            self._workdir = str(Path(tempfile.mkdtemp(prefix="revpers-host-")).resolve())
        path = Path(self._workdir) / "extra_model_paths.yaml"
        lines = ["revpers_models:", f"    base_path: {_yaml_quote(self.models_dir)}"]
        lines += [f"    {name}: {name}" for name in MODEL_FOLDERS]
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self):
        """Start the server and wait until it answers /system_stats; returns self."""
        if self.running:
            return self
        if self._workdir is None:
            self._workdir = str(Path(tempfile.mkdtemp(prefix="revpers-host-")).resolve())
        for d in (self.input_dir, self.output_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.listen)
        if self._default_log:
            self.log_path = Path(self._workdir) / "comfyui.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # whatever the server's libraries put in the temporary folder (torch's compile cache, session files)
        # goes into the host's own folder, and with it when the server is gone
        private_tmp = Path(self._workdir) / "tmp"
        private_tmp.mkdir(exist_ok=True)
        env.update(TMPDIR=str(private_tmp), TEMP=str(private_tmp), TMP=str(private_tmp))
        self._log_file = open(self.log_path, "ab")
        cmd, log_file = self.command(), self._log_file
        posix = os.name == "posix"
        death_signal = _death_signal_setter()
        self.process = _Forker.run(lambda: subprocess.Popen(
            cmd, cwd=str(self.comfyui_dir), env=env, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT,
            # its own process group: a Ctrl-C in the terminal reaches us, and we stop it in order
            start_new_session=posix,
            # dies with us, even when we are SIGKILLed (see the module's notes)
            preexec_fn=death_signal))
        try:
            if posix:
                self._start_watchdog(self.process.pid)
            self._wait_ready()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _start_watchdog(self, group):
        """The process that SIGKILLs the server's process group `group` once this process has ended
        (or stop() closed the pipe): the pipe's writing end stays here, never inherited by a child
        that execs (Python opens pipes non-inheritable)."""
        read_end, write_end = os.pipe()
        try:
            folders = [str(self._workdir or "")] + [str(p) for p in self.remove_on_exit]
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(group), *folders], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def _stop_watchdog(self, timeout=35.0, keep_workdir=False):
        """Close the pipe: the watchdog kills what is left of the server's process group, removes the folders
        (the host's own unless `keep_workdir`) and exits."""
        pipe, self._watchdog_pipe = self._watchdog_pipe, None
        watchdog, self._watchdog = self._watchdog, None
        if pipe is not None:
            if keep_workdir:
                try:
                    os.write(pipe, b"K")
                except OSError:
                    pass
            os.close(pipe)
        if watchdog is not None:
            try:
                watchdog.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise HostError(f"ComfyUI exited with code {code} while starting "
                                f"(log: {self.log_path}):\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise HostError(f"ComfyUI did not answer on {self.url} within {self.startup_timeout:.0f} s "
                                f"(log: {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, lines=40):
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout=15.0, keep_log=False):
        """Stop the server (SIGINT, then kill after `timeout` s) and remove its temporary folder,
        where the default log lives unless `keep_log` (kept when a start fails, for the message's
        sake), and the `remove_on_exit` folders. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                # ComfyUI handles KeyboardInterrupt by cleaning its temp folder and exiting
                proc.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        log_inside = (self._workdir is not None and self.log_path is not None
                      and Path(self._workdir) in Path(self.log_path).resolve().parents)
        # the watchdog kills any child the server left behind in its process group, then removes the folders
        self._stop_watchdog(keep_workdir=keep_log and log_inside)
        for folder in self.remove_on_exit:
            shutil.rmtree(folder, ignore_errors=True)
        if self._workdir is not None:
            if not (keep_log and log_inside):
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
