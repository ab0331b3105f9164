"""A small client for a ComfyUI server's HTTP and websocket API.

It speaks the API every ComfyUI since 2023 serves (the March 2024 snapshot and current releases):

    POST /prompt            queue an API-format graph           GET /history/{id}   its outputs
    POST /upload/image      put a picture in the input folder   GET /view           fetch a file
    GET  /object_info       the node types                      GET /system_stats   liveness
    GET  /ws?clientId=...   events: status, execution_start, execution_cached, executing, progress,
                            executed, execution_error, execution_interrupted, execution_success

    client = ComfyClient("http://127.0.0.1:8188")
    name = client.upload_image("photo.jpg")
    result = client.run(graph, on_event=print)      # queue, follow the websocket, read the history
    if result.status != "success":
        raise SystemExit(result.message)

Failures come back as exceptions whose text is the server's own readable message: `PromptRejected`
when the server refuses a graph (validation), `ExecutionFailed` when a node raises while running.
A server that stops answering (its process died, the connection was reset or refused) is
`ServerGone`, whichever call noticed it: the websocket, /prompt, /history, /view, /upload.
"""
import json
import mimetypes
import os
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket

__all__ = ["ComfyClient", "ComfyError", "PromptRejected", "ExecutionFailed", "ServerGone", "RunResult"]


class ComfyError(RuntimeError):
    """Anything the server answered with an error."""


class PromptRejected(ComfyError):
    """POST /prompt refused the graph (HTTP 400): a missing node type, a bad input value, a missing
    model file name... `status` is the HTTP status, `body` the decoded JSON answer (or its text)."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        super().__init__(describe_rejection(body, status))


class ExecutionFailed(ComfyError):
    """A node raised while the graph ran; `data` is the server's execution_error (or
    execution_interrupted) message: node_id, node_type, exception_type, exception_message, traceback."""

    def __init__(self, data, result=None):
        self.data = data
        self.result = result
        super().__init__(describe_execution_error(data))


class ServerGone(ComfyError):
    """The server stopped answering while we talked to it: its process ended, or the connection
    was refused, reset or closed. `url` is the server, `stage` what we were doing ("following prompt
    ...", "queueing the prompt", ...), `cause` the low-level exception (also the __cause__), `lost`
    whether a job was under way (queued, running, or its result not yet fetched)."""

    def __init__(self, url, stage, cause=None, lost=True):
        self.url = url
        self.stage = stage
        self.cause = cause
        self.lost = lost
        detail = _one_line(f"{cause.__class__.__name__}: {cause}" if cause is not None else "no answer")
        if lost:
            text = (f"the ComfyUI server at {url} stopped answering during the run ({stage}; {detail}), "
                    "so the job was lost: its result cannot be fetched. Check that the server is running "
                    "(its log says why it stopped: out of memory, killed, crashed), then run again.")
        else:
            text = f"the ComfyUI server at {url} does not answer ({stage}; {detail}): is it running?"
        super().__init__(text)


def _one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# What a server that is gone looks like from here: refused/reset/closed connections, a body cut
# short, a websocket closed under us.
_GONE = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
         websocket.WebSocketConnectionClosedException, ConnectionError, BrokenPipeError)


def describe_rejection(body, status=400):
    """The server's validation answer as lines a person can read."""
    if not isinstance(body, dict):
        return f"the server refused the prompt (HTTP {status}): {body}"
    lines = []
    error = body.get("error")
    if isinstance(error, dict):
        head = error.get("message") or error.get("type") or "invalid prompt"
        details = error.get("details")
        lines.append(f"{head}: {details}" if details else head)
    elif error:
        lines.append(str(error))
    node_errors = body.get("node_errors") or {}
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type", "?")
        for e in entry.get("errors", []):
            text = e.get("message") or e.get("type") or "error"
            if e.get("details"):
                text += f": {e['details']}"
            lines.append(f"  node {node_id} ({class_type}): {text}")
    return "\n".join(lines) if lines else f"the server refused the prompt (HTTP {status})"


def describe_execution_error(data):
    """One line naming the node and the exception, then the exception's own message."""
    node = f"{data.get('node_type', '?')} (node {data.get('node_id', '?')})"
    if "exception_message" not in data:
        return f"{node}: the run was interrupted"
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message", "")).strip()
    return f"{node} failed with {kind}:\n{message}"


@dataclass
class RunResult:
    """What one queued prompt did: `status` is "success" or "error"; `events` the websocket messages
    that concerned it, in order, as (type, data); `error` the execution_error/_interrupted data or
    None; `outputs` the history's outputs per node id (each node's `ui` dict); `history` the whole
    history entry."""

    prompt_id: str
    status: str
    events: list = field(default_factory=list)
    error: dict = None
    outputs: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

    @property
    def message(self):
        return describe_execution_error(self.error) if self.error else ""

    def images(self, node_id=None):
        """Every image record ({filename, subfolder, type}) in the outputs, or in one node's."""
        found = []
        for nid, ui in self.outputs.items():
            if node_id is None or str(nid) == str(node_id):
                found.extend(ui.get("images", []))
        return found


class ComfyClient:
    """One client id, one websocket (opened on first use, before the first prompt is queued, so no
    event of that prompt is missed), plain HTTP for everything else."""

    def __init__(self, url, client_id=None, timeout=30.0, stall=None):
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.client_id = client_id or uuid.uuid4().hex
        # stall: seconds a server may stay silent (no event, no answer) while a prompt runs before it counts
        # as stopped (ServerGone); one request waits at most that long too
        self.stall = float(stall) if stall else 300.0
        self.timeout = min(timeout, self.stall)
        self.session = requests.Session()
        self._ws = None

    # --- HTTP -------------------------------------------------------------------------------------

    def _http(self, method, path, stage, lost=False, **kwargs):
        """One HTTP request; a server that is gone raises ServerGone (a slow one still times out).
        `lost`: the request is part of a run (a job would be lost)."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self.session.request(method, self.url + path, **kwargs)
        except requests.exceptions.Timeout:
            raise
        except _GONE as e:
            raise ServerGone(self.url, stage or f"{method} {path}", e, lost=lost) from e

    def _get(self, path, stage=None, lost=False, **params):
        r = self._http("GET", path, stage, lost, params=params or None)
        if r.status_code != 200:
            raise ComfyError(f"GET {path} answered HTTP {r.status_code}: {r.text[:500]}")
        return r

    def system_stats(self):
        return self._get("/system_stats").json()

    def object_info(self, node_class=None):
        """All node types (or one) with their inputs, as the server describes them."""
        return self._get(f"/object_info/{node_class}" if node_class else "/object_info").json()

    def upload_image(self, image, name=None, subfolder="", type="input", overwrite=True):
        """Upload a picture (a path, or bytes with `name`) to the server's input folder. Returns the
        name to give LoadImage (with the subfolder prefix when one is used)."""
        if isinstance(image, (bytes, bytearray)):
            if not name:
                raise ValueError("upload_image: give a file name when uploading bytes")
            data = bytes(image)
        else:
            path = os.fspath(image)
            with open(path, "rb") as f:
                data = f.read()
            name = name or os.path.basename(path)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        form = {"type": type, "overwrite": "true" if overwrite else "false"}
        if subfolder:
            form["subfolder"] = subfolder
        r = self._http("POST", "/upload/image", f"uploading {name}", files={"image": (name, data, content_type)},
                       data=form, timeout=max(self.timeout, 120))
        if r.status_code != 200:
            raise ComfyError(f"uploading {name} failed: HTTP {r.status_code} {r.text[:300]}")
        answer = r.json()
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    def queue(self, prompt, extra_data=None, front=False):
        """POST an API-format graph; returns its prompt id. Raises PromptRejected with the server's
        validation messages when it refuses the graph. Opens the websocket first."""
        self.connect()
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        if front:
            payload["front"] = True
        r = self._http("POST", "/prompt", "queueing the prompt", True, json=payload)
        if r.status_code != 200:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise PromptRejected(r.status_code, body)
        return r.json()["prompt_id"]

    def history(self, prompt_id=None):
        """The server's history: one prompt's entry (None while it has none), or all of it."""
        if prompt_id is None:
            return self._get("/history", "reading the history").json()
        return self._get(f"/history/{prompt_id}", f"reading the history of prompt {prompt_id}",
                         True).json().get(prompt_id)

    def find_prompt(self, token):
        """(prompt id, state) of the prompt queued with `extra_data={"revpers_token": token}`, state being
        "success" or "error" (finished, in the history), "running" or "pending" (in its queue); (None, None)
        when the server does not know it (never queued, or restarted since). The token is the client's own,
        so a prompt can be found again by a client that died before it learned the prompt's id."""
        def token_of(job):
            extra = job[3] if len(job) > 3 and isinstance(job[3], dict) else {}
            return extra.get("revpers_token")

        for prompt_id, entry in self.history().items():
            if token_of(entry.get("prompt", [])) == token:
                status = entry.get("status", {}).get("status_str")
                return prompt_id, status if status in ("success", "error") else "success"
        queue = self._get("/queue", "reading the queue").json()
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for job in queue.get(key, []):
                if token_of(job) == token:
                    return job[1], state
        return None, None

    def view(self, filename, subfolder="", type="output"):
        """The bytes of a file in the server's output/input/temp folder."""
        r = self._http("GET", "/view", f"downloading {filename}", True, params={
            "filename": filename, "subfolder": subfolder, "type": type}, timeout=max(self.timeout, 120))
        if r.status_code != 200:
            raise ComfyError(f"/view {type}/{subfolder}/{filename} answered HTTP {r.status_code}")
        return r.content

    def interrupt(self):
        self._http("POST", "/interrupt", "interrupting the run", True)

    # --- websocket --------------------------------------------------------------------------------

    def connect(self):
        if self._ws is None:
            ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
            try:
                self._ws = websocket.create_connection(f"{ws_url}/ws?clientId={self.client_id}",
                                                       timeout=self.timeout)
            except (ConnectionError, websocket.WebSocketConnectionClosedException) as e:
                raise ServerGone(self.url, "opening the websocket", e, lost=False) from e
        return self._ws

    def close(self):
        """Close the websocket and the HTTP session; never raises (the server may be gone)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except (websocket.WebSocketException, OSError):
                pass
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def follow(self, prompt_id, on_event=None, timeout=600.0, poll=1.0):
        """Read the websocket until the prompt finishes; returns its RunResult.

        `on_event(type, data)` sees every JSON event that concerns this prompt (binary preview frames
        are skipped). The end is `executing` with node None, `execution_success`, `execution_error` or
        `execution_interrupted` for this prompt; if the socket stays quiet the history is polled, so a
        missed event cannot hang the client. Raises TimeoutError after `timeout` seconds, and
        ServerGone when the server stops answering (the socket closes or the history is unreachable), or
        stalls: a busy server may be slow to answer the history, but one that sends no event and answers
        nothing for `self.stall` seconds is taken for stopped.
        """
        ws = self.connect()
        deadline = time.monotonic() + timeout
        heard = time.monotonic()
        events, error, finished = [], None, False
        while not finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            try:
                ws.settimeout(min(poll, left))
                raw = ws.recv()
                heard = time.monotonic()
            except websocket.WebSocketTimeoutException:
                try:
                    entry = self.history(prompt_id)
                    heard = time.monotonic()
                except requests.exceptions.Timeout as e:
                    if time.monotonic() - heard >= self.stall:
                        raise ServerGone(self.url, f"following prompt {prompt_id}: no event and no answer for "
                                         f"{self.stall:.0f} s", e) from e
                    continue
                if entry and entry.get("status", {}).get("completed") is not None:
                    if entry.get("status", {}).get("status_str") in ("success", "error"):
                        finished = True
                continue
            except (websocket.WebSocketException, OSError) as e:
                # closed (the server's process ended), reset, or a broken frame: the run is lost
                self._drop_ws()
                raise ServerGone(self.url, f"following prompt {prompt_id} on the websocket", e) from e
            if not isinstance(raw, str):
                continue  # a binary preview frame
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if isinstance(data, dict) and data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind in ("status", "crystools.monitor"):
                continue
            events.append((kind, data))
            if on_event is not None:
                on_event(kind, data)
            if kind in ("execution_error", "execution_interrupted"):
                error = data
                finished = True
            elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                finished = True
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                finished = True
        return self._result(prompt_id, events, error, deadline)

    def _drop_ws(self):
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.shutdown()  # no closing handshake: the other end is gone
            except (websocket.WebSocketException, OSError):
                pass

    def _result(self, prompt_id, events, error, deadline):
        entry = None
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                break
            time.sleep(0.1)
        entry = entry or {}
        status = entry.get("status", {})
        if error is None and status.get("status_str") == "error":
            for kind, data in status.get("messages", []):
                if kind in ("execution_error", "execution_interrupted"):
                    error = data
        ok = error is None and status.get("status_str", "success") == "success"
        return RunResult(prompt_id=prompt_id, status="success" if ok else "error", events=events,
                         error=error, outputs=entry.get("outputs", {}), history=entry)

    def run(self, prompt, on_event=None, timeout=600.0, extra_data=None):
        """Queue a graph and follow it to its end (see `follow`)."""
        prompt_id = self.queue(prompt, extra_data=extra_data)
        return self.follow(prompt_id, on_event=on_event, timeout=timeout)
