"""Many items in one job: the photos and clips of files and folders, handed out to one or more servers,
a journal that lets a killed job resume, and a manifest of what became of every item and face.

Handing out: one worker per server takes the next item, runs it there to its end (the server's own
queue does the work) and takes the next; nothing else is scheduled. An item whose server fails it (it
stops answering, stalls, or answers what is not its API: see `server_fault`) goes back to the front of
the line for another server; that server leaves the job. Anything else that goes wrong with an item,
whatever raises and wherever (a photo PIL refuses as a decompression bomb, a disk that is full, an output
that cannot be written), ends that item as failed with the reason, and the worker takes the next: a
worker always hands its item back or settles it before anything else, so no worker waits for a dead
one. So every item is finished exactly once, by one server, or reported as not done with its reason.

The journal (`.revpers-journal.json` in the output folder) and the manifest are written under a lock,
atomically and durably (revpers_cli.durable). The journal records per item the input's size and time,
a digest of the job's settings, the prompt in flight (server and prompt id) and the outcome, with the
sha256 of every output taken when it was written after its audit. A job run again with the same
settings skips the items already done and audited whose outputs still have those bytes (an output
changed since is reported, not trusted); an item that was running when the job was killed is read back
from its server when that server still has it (finished, or still queued), instead of being done again.
"""
import csv
import hashlib
import io
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import requests
import websocket

from . import durable, media
from .api import ComfyError, ServerGone
from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVER, EXIT_UNANONYMIZED, EXIT_USAGE,
                     CliError)
from .job import ClipItem, Job, Outcome, PhotoItem, describe_gaps
from .progress import ItemProgress, NodeProgress, say

__all__ = ["Entry", "plan_entries", "Journal", "write_manifest", "Runner", "exit_code", "settings_digest",
           "server_fault"]

JOURNAL_NAME = ".revpers-journal.json"
MANIFEST_NAME = "manifest.json"


@dataclass
class Entry:
    """One input of the job and where its output goes: `label` is the input's path as given (under its
    folder), `key` the output's path under the output folder (the journal's key)."""

    source: Path
    output: Path
    key: str
    kind: str = None  # "photo", "clip", or None (neither, by its suffix)
    label: str = ""

    def make_item(self, crf, audio=media.AUDIO_DEFAULT):
        if self.kind == "clip":
            return ClipItem(self.source, self.output, self.label, crf, audio)
        return PhotoItem(self.source, self.output, self.label)


def output_name(relative, kind):
    """The output's relative path: the input's, with a suffix the output can be written in."""
    suffix = relative.suffix.lower()
    if kind == "clip":
        return relative if suffix in media.OUTPUT_CLIP_SUFFIXES else relative.with_suffix(".mp4")
    return relative if suffix in media.OUTPUT_PHOTO_FORMATS else relative.with_suffix(".png")


def _files_under(folder, output):
    """Every file under `folder` (subfolders included, hidden ones and the output folder left out), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != output.resolve())
        found += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return found


def numbered_name(number, relative, kind):
    """The output's name when outputs are named by number: 00001.png, 00002.mp4, ... (the suffix the output
    is written in), straight in the output folder: neither the input's name nor its folders show."""
    return Path(f"{number:05d}{output_name(relative, kind).suffix}")


def plan_entries(inputs, output, numbered=False):
    """The entries of a job over `inputs` (files and folders) writing into the folder `output`: a single
    folder's files keep their paths under it; with several inputs, a folder's go under its own name.
    `numbered`: each photo and clip is written as its number in that order instead (numbered_name); only
    the manifest says which input became which number."""
    output = Path(output)
    entries, by_key = [], {}
    number = 0
    for given in map(Path, inputs):
        if given.is_dir():
            base = given if len(inputs) == 1 else given.parent
            pairs = [(f, f.relative_to(base)) for f in _files_under(given, output)]
        else:
            pairs = [(given, Path(given.name))]
        for source, relative in pairs:
            kind = media.kind_of(source)
            if kind and numbered:
                number += 1
                key = numbered_name(number, relative, kind).as_posix()
            else:
                key = (output_name(relative, kind) if kind else relative).as_posix()
            if key in by_key:
                raise CliError(f"{source} and {by_key[key]} would both be written to {output / key}; give them "
                               "separately or rename one", EXIT_USAGE)
            by_key[key] = source
            entries.append(Entry(source, output / key, key, kind, relative.as_posix()))
    return entries


def settings_digest(settings):
    """A digest of everything that decides an item's output: the workflows with the job's knobs, guaranteed
    mode, whether failed images are written, the clip encoding."""
    text = json.dumps({"graphs": settings.graphs, "retries": settings.retries, "crf": settings.crf,
                       "audio": settings.audio,
                       "allow_unanonymized": settings.allow_unanonymized, "on_fail": settings.on_fail,
                       "fail_on_gaps": settings.fail_on_gaps, "force": settings.force}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the journal ---------------------------------------------------------------------------------

class Journal:
    """What the job did so far, per item (see the module's notes); safe to use from several workers."""

    def __init__(self, path, digest):
        self.path, self.digest = Path(path), digest
        self.lock = threading.Lock()
        self.items = {}
        self.broken = ""  # why the journal could not be written (the job goes on; it cannot be resumed exactly)
        if self.path.is_file():
            try:
                self.items = json.loads(self.path.read_text()).get("items", {})
            except (OSError, ValueError) as e:
                say(f"warning: the journal {self.path} cannot be read ({e}); the job starts over")

    @staticmethod
    def _stamp(entry):
        stat = entry.source.stat()
        return {"source": str(entry.source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _save(self):
        """Write the journal (the caller holds the lock). A journal that cannot be written (a full disk) is
        said once; the job goes on."""
        try:
            durable.write_text(self.path, json.dumps({"version": 1, "items": self.items}, indent=1))
        except OSError as e:
            if not self.broken:
                self.broken = f"{e.__class__.__name__}: {e}"
                say(f"warning: the journal {self.path} cannot be written ({self.broken}); the job goes on, but a "
                    "later run cannot resume it exactly")

    def finished_before(self, entry):
        """(record, None) when this item was done (or written marked by request) by a run with the same
        settings from the same input and its outputs still have the bytes recorded when they were written
        after the audit; (None, why) when an output's bytes changed since; (None, None) otherwise."""
        record = self.items.get(entry.key)
        if not record or record.get("status") not in ("done", "unanonymized") or record.get("settings") != self.digest:
            return None, None
        try:
            if {k: record.get(k) for k in ("source", "size", "mtime_ns")} != self._stamp(entry):
                return None, None
        except OSError:
            return None, None
        outcome = record.get("outcome", {})
        digests = outcome.get("sha256") or {}
        for path in outcome.get("written", []):
            if not Path(path).is_file() or path not in digests:
                return None, None
            try:
                now = durable.sha256(path)
            except OSError:
                return None, None
            if now != digests[path]:
                return None, (f"the output {path} changed after it was audited (its sha256 is {now[:16]}..., "
                              f"{digests[path][:16]}... was recorded when it was written): it is not trusted. "
                              "Delete it, or give --overwrite to anonymize the item again")
        return record, None

    def in_flight(self, entry):
        """The prompt that was queued for this item when an earlier run of the job ended, or None."""
        record = self.items.get(entry.key) or {}
        if record.get("status") != "running" or record.get("settings") != self.digest or not record.get("token"):
            return None
        return {k: record.get(k) for k in ("server", "token", "overrides", "attempts", "redact")}

    def begin(self, entry, server):
        with self.lock:
            left = (self.items.get(entry.key) or {}).get("left_on_server", [])  # an earlier run's, still there
            self.items[entry.key] = {**self._stamp(entry), "settings": self.digest, "status": "running",
                                     "server": server, "token": None, "overrides": {}, "attempts": [],
                                     "left_on_server": left}
            self._save()

    def left_of(self, entry):
        """The files this item left on servers given by URL, over every run of the job (Job._left)."""
        with self.lock:
            return list((self.items.get(entry.key) or {}).get("left_on_server", []))

    def note(self, entry, event, **data):
        """A Job's journal event: "queueing" (token, overrides) or "attempt" (failed_rows, unfixable)."""
        with self.lock:
            record = self.items.setdefault(entry.key, {})
            if event == "queueing":
                record.update(token=data["token"], overrides={str(k): v for k, v in data["overrides"].items()},
                              redact=bool(data.get("redact")))
            elif event == "attempt":
                record.setdefault("attempts", []).append(data)
            elif event == "left":
                left = record.setdefault("left_on_server", [])
                if data not in left:
                    left.append(data)
            self._save()

    def finish(self, entry, outcome_record):
        with self.lock:
            record = self.items.setdefault(entry.key, {})
            record.update(status=outcome_record["status"], outcome=outcome_record, token=None)
            self._save()


# --- the manifest --------------------------------------------------------------------------------

ITEM_COLUMNS = ("input", "output", "kind", "status", "reason", "server", "seconds", "attempts", "frames", "fps",
                "audio", "audio_output", "faces", "audit", "recognizers", "single_recognizer", "redacted", "long_gaps",
                "left_on_server")
FACE_COLUMNS = ("face", "image", "row", "status_of_face", "recognizer", "measure", "at_place", "threshold",
                "recognized", "verdict", "box", "size", "found_by")


def outcome_record(entry, outcome, server=None):
    """One item's line of the manifest, with its per-face rows (the audit's figures), the recognizers that
    judged (single_recognizer: only ArcFace, the one the method optimizes against), the faces covered by
    the flat fill (redacted), the tracker's long gaps per track and frame range, what became of a clip's
    audio (audio_output: kept, dropped or none) and the files left on servers given by URL (left_on_server:
    server, folder, file, what). It names the input and the output (it is the operator's record of which
    became which) and nothing read from inside the input's file."""
    summary = (outcome.summary if outcome is not None else None) or {}
    rows = summary.get("rows", [])
    audit = "" if not outcome or outcome.summary is None else ("passed" if outcome.summary["passed"] else "FAILED")
    if audit == "passed" and summary.get("redacted"):
        audit = f"passed after redacting {len(summary['redacted'])} face(s)"
    recognizers = summary.get("recognizers") or []
    return {"input": str(entry.source), "output": str(entry.output), "kind": entry.kind or "",
            "status": outcome.status, "reason": outcome.message, "server": server or "",
            "seconds": round(outcome.seconds, 2), "attempts": outcome.attempts,
            "frames": outcome.details.get("frames", ""), "fps": outcome.details.get("fps", ""),
            "audio": outcome.details.get("audio", ""), "audio_output": outcome.details.get("audio_output", ""),
            "faces": len({(r["image"], r["face"]) for r in rows}),
            "audit": audit, "recognizers": "+".join(recognizers),
            "single_recognizer": bool(recognizers) and not summary.get("independent", False),
            "redacted": summary.get("redacted", []), "long_gaps": (outcome.tracks or {}).get("long_gaps", []),
            "written": [str(p) for p in outcome.written], "sha256": {}, "left_on_server": list(outcome.left),
            "rows": rows}


_MANIFEST_LOCK = threading.Lock()


def _csv_cell(value):
    if isinstance(value, list) and value and isinstance(value[0], dict) and "first_frame" in value[0]:
        return describe_gaps(value)
    if isinstance(value, list) and value and isinstance(value[0], dict) and "folder" in value[0]:
        return "; ".join(f"{v['server']} {v['folder']}/{v['file']}" for v in value)
    if isinstance(value, list):
        return "; ".join(f"face {v['face']} (image {v['image']}, row {v['row']})" if isinstance(v, dict) else str(v)
                         for v in value)
    return value


def write_manifest(path, records, header=None):
    """The manifest: JSON (items with their face rows, after the `header` fields: the settings digest, a
    shard's spec) or CSV (one line per face and recognizer, an item without faces on one line), by the
    file's suffix; written under a lock, atomically and durably."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=ITEM_COLUMNS + FACE_COLUMNS)
        writer.writeheader()
        for record in records:
            item = {k: _csv_cell(record.get(k, "")) for k in ITEM_COLUMNS}
            for row in record.get("rows") or [{}]:
                face = {k: row.get("status" if k == "status_of_face" else k, "") for k in FACE_COLUMNS}
                writer.writerow({**item, **face})
        data = text.getvalue()
    else:
        data = json.dumps({"version": 1, **(header or {}), "items": records}, indent=1)
    with _MANIFEST_LOCK:
        durable.write_text(path, data)


def exit_code(records, interrupted=False):
    """The job's exit code: 130 interrupted; 4 an item was left for want of a server; 1 an item failed;
    5 an item was written marked NOT ANONYMIZED by request; else 0."""
    codes = {r.get("code", EXIT_FAILED) for r in records if r["status"] == "failed"}
    if interrupted or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    if EXIT_SERVER in codes:
        return EXIT_SERVER
    if codes:
        return EXIT_FAILED
    if any(r["status"] == "unanonymized" for r in records):
        return EXIT_UNANONYMIZED
    return EXIT_OK


# --- handing items out ---------------------------------------------------------------------------

def server_fault(error):
    """Why `error` is the fault of the server the item ran on, not of the item (the item then goes to
    another server and that server leaves the job), or None: it stopped answering or stalled
    (ServerGone, a request that timed out), or answered what is not its API (malformed JSON, a broken
    websocket frame)."""
    if isinstance(error, ServerGone):
        return str(error)
    if isinstance(error, requests.exceptions.Timeout):
        return f"it did not answer in time ({error.__class__.__name__}: {error})"
    if isinstance(error, (requests.exceptions.JSONDecodeError, json.JSONDecodeError)):
        return f"it answered what is not JSON ({error.__class__.__name__}: {error})"
    if isinstance(error, (requests.exceptions.RequestException, websocket.WebSocketException)):
        return f"talking to it failed ({error.__class__.__name__}: {error})"
    return None


def item_failure(error):
    """What raised while an item ran, as (exit code, reason): the one mapping, for one item and many. A
    server's fault (server_fault) is EXIT_SERVER; an error that carries its code (CliError) keeps it; a clip
    or photo that cannot be used (MediaError), an error the server answered (ComfyError: a rejected prompt, a
    node that raised) and anything else fail the item (EXIT_FAILED) with their reason."""
    fault = server_fault(error)
    if fault is not None:
        return EXIT_SERVER, fault
    if isinstance(error, CliError):
        return error.code, str(error)
    if isinstance(error, ComfyError):
        return EXIT_FAILED, f"the server answered with an error: {error}"
    if isinstance(error, media.MediaError):
        return EXIT_FAILED, str(error)
    return EXIT_FAILED, _reason(error)


def _reason(error):
    """An unexpected error as a one-paragraph reason for the manifest."""
    if isinstance(error, OSError) and getattr(error, "filename", None):
        return f"{error.__class__.__name__}: {error.strerror or error} ({error.filename})"
    return f"{error.__class__.__name__}: {error}"


class Runner:
    """Runs the entries over the servers (one worker each) and keeps the journal and the manifest."""

    def __init__(self, entries, servers, settings, journal, manifest, workdir, overwrite=False, header=None):
        self.entries, self.servers, self.settings, self.header = entries, servers, settings, header
        self.journal, self.manifest, self.workdir, self.overwrite = journal, manifest, Path(workdir), overwrite
        self.records = {}
        self.items = {}  # prepared items (a clip decoded once), kept while an item may go to another server
        self.line = deque()
        self.busy = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.problems = []  # what went wrong with the job's own files (the manifest), said at the end
        self.progress = ItemProgress(len(entries), enabled=not settings.quiet)

    # -- the whole job --
    def run(self):
        for entry in self.entries:
            try:
                settled = self._before(entry)
            except Exception as e:  # an input that cannot even be looked at (stat, hash): the item's own failure
                settled = self._settle(entry, self._failed(entry, f"cannot be read: {_reason(e)}"), "failed")
            if settled is None:
                self.line.append(entry)
        try:
            self._work_everywhere()
        finally:
            self.progress.close()
            self._left_without_server()
            self._write_manifest()
        return [self.records[e.key] for e in self.entries if e.key in self.records]

    def _before(self, entry):
        """Settle an entry that needs no server: done before, not a photo or clip, or an output that exists."""
        earlier, changed = self.journal.finished_before(entry)
        if earlier is not None:
            record = dict(earlier["outcome"], skipped="already done and audited by an earlier run of this job")
            return self._settle(entry, record, "skipped", f"already done: {entry.label}")
        if entry.kind is None:
            return self._settle(entry, self._failed(entry, "not a photo or clip this tool reads (by its suffix: "
                                                    f"photos {', '.join(media.PHOTO_SUFFIXES)}; clips "
                                                    f"{', '.join(media.CLIP_SUFFIXES)})", status="skipped"), "skipped")
        if changed and not self.overwrite:
            return self._settle(entry, self._failed(entry, changed), "failed")
        if entry.output.exists() and not self.overwrite:
            return self._settle(entry, self._failed(entry, f"the output {entry.output} already exists and was not "
                                                    "made by this job with these settings; --overwrite replaces it"),
                                "failed")
        return None

    def _failed(self, entry, reason, code=EXIT_FAILED, status="failed", server=None, details=None):
        record = outcome_record(entry, Outcome(status, code, reason, details=dict(details or {})), server)
        record["code"] = code
        record["left_on_server"] = self.journal.left_of(entry)
        return record

    def _settle(self, entry, record, counted, line=None):
        self.records[entry.key] = record
        self.progress.count(counted)
        if line or record.get("reason"):
            say(line or f"{record['status'].upper()}: {entry.label}: {record['reason']}")
        return record

    def _work_everywhere(self):
        """One worker per server: in this thread when there is one server, else one thread each. A Ctrl-C
        interrupts every server's prompt and waits for the workers to settle their items."""
        live = [s for s in self.servers if not s.gone]
        threads = [threading.Thread(target=self._worker, args=(s, i + 1), daemon=True, name=f"revpers-{i}")
                   for i, s in enumerate(live)] if len(live) > 1 else []
        try:
            if not threads:
                self._worker(live[0], 1)
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            self._interrupt_servers()
            for t in threads:
                t.join(30)
            raise

    def _interrupt_servers(self):
        for server in self.servers:
            if not server.gone:
                try:
                    with server.client(stall=self.settings.stall) as client:
                        client.interrupt()
                except (ComfyError, OSError):
                    pass

    def _left_without_server(self):
        reasons = "; ".join(f"{s.url}: {s.gone.splitlines()[0]}" for s in self.servers if s.gone)
        while self.line:
            entry = self.line.popleft()
            code, why = (EXIT_INTERRUPTED, "the job was interrupted before this item") if self.stop.is_set() else \
                (EXIT_SERVER, f"no server left to run it ({reasons})")
            self._settle(entry, self._failed(entry, why, code), "failed")

    def _write_manifest(self):
        if self.manifest is None:
            return
        try:
            write_manifest(self.manifest, [self.records[e.key] for e in self.entries if e.key in self.records],
                           self.header)
        except OSError as e:
            problem = f"the manifest {self.manifest} cannot be written ({_reason(e)})"
            if problem not in self.problems:
                self.problems.append(problem)
                say(f"warning: {problem}")

    # -- one server's worker --
    def _next(self):
        with self.cond:
            while not self.line and self.busy and not self.stop.is_set():
                self.cond.wait(0.5)
            if not self.line or self.stop.is_set():
                return None
            self.busy += 1
            return self.line.popleft()

    def _done_with(self, entry, give_back=False):
        with self.cond:
            self.busy -= 1
            if give_back:
                self.line.appendleft(entry)
            self.cond.notify_all()

    def _worker(self, server, position):
        """Take items until none is left; each is settled (done or failed with its reason) or, when the
        server is at fault, handed back for another server, whatever happens, before the next is taken."""
        client = None
        try:
            client = server.client(stall=self.settings.stall)
            while True:
                entry = self._next()
                if entry is None:
                    return
                give_back = True
                try:
                    give_back = self._take(entry, server, client, position)
                finally:
                    self._done_with(entry, give_back)
                if give_back:
                    return
        except Exception as e:  # this worker cannot go on (its client, its server): the others take over
            if not server.gone:
                server.gone = f"its worker stopped: {_reason(e)}"
        finally:
            if client is not None:
                client.close()

    def _take(self, entry, server, client, position):
        """Run one entry on this server; True when it goes back to the line for another server."""
        try:
            self._run_entry(entry, server, client, position)
            return False
        except Exception as e:
            fault = server_fault(e)
            if fault is not None and not self.stop.is_set():
                server.gone = fault
                others = [s.url for s in self.servers if not s.gone]
                say(f"the server at {server.url} failed ({fault.splitlines()[0]}); {entry.label} "
                    + (f"goes to another server ({', '.join(others)})" if others else "cannot go to another server"))
                return True
            self._settle_failure(entry, server, e)
            return False

    def _settle_failure(self, entry, server, error):
        """An item that failed with an error of no known kind: reported with its reason, never lost."""
        item = self.items.pop(entry.key, None)
        details = dict(getattr(item, "details", {}) or {})
        code, reason = item_failure(error)
        record = self._failed(entry, reason, code, server=server.url, details=details)
        try:
            self.journal.finish(entry, record)
            self._forget(item)
        except Exception as e:
            say(f"warning: {entry.label}: cleaning up after the failure failed too ({_reason(e)})")
        self._settle(entry, record, "failed", f"FAILED: {entry.label}: {reason}")
        self._write_manifest()

    def _run_entry(self, entry, server, client, position):
        item = self.items.setdefault(entry.key, entry.make_item(self.settings.crf, self.settings.audio))
        adopt = self._adoptable(entry, server, client)
        if adopt is None:
            self.journal.begin(entry, server.url)
        progress = NodeProgress({}, enabled=not self.settings.quiet, position=position, prefix=f"{entry.label}: ",
                                verbose=False)
        job = Job(item, self.settings, client, progress, lambda event, **d: self.journal.note(entry, event, **d),
                  host=server.host)
        outcome = self._outcome(job, entry, adopt)
        record = outcome_record(entry, outcome, server.url)
        record["code"] = outcome.code
        record["left_on_server"] = self.journal.left_of(entry)
        record["sha256"] = self._make_durable(outcome.written)
        self.journal.finish(entry, record)
        server.items.append(entry.key)
        self._forget(self.items.pop(entry.key))
        self._settle(entry, record, "failed" if outcome.status == "failed" else "done", self._line(entry, record))
        self._write_manifest()

    @staticmethod
    def _make_durable(written):
        """{path: sha256} of the outputs just written, each put on the disk first."""
        digests = {}
        for path in written:
            durable.sync(path)
            digests[str(path)] = durable.sha256(path)
        return digests

    def _forget(self, item):
        """Remove what was made to upload the item (a clip's animated WebP can be large)."""
        upload = getattr(item, "upload_file", None)
        if upload is not None and self.workdir in upload.parents:
            upload.unlink(missing_ok=True)

    def _outcome(self, job, entry, adopt):
        try:
            return job.run(self.workdir, adopt)
        except (media.MediaError, CliError, ComfyError) as e:
            if isinstance(e, ServerGone):
                raise  # not the item's fault: another server takes it
            code, reason = item_failure(e)
            if code == EXIT_INTERRUPTED:
                self.stop.set()
            return Outcome.failed(reason, code, details=dict(job.item.details), seconds=time.time() - job.started)

    def _adoptable(self, entry, server, client):
        """The prompt an earlier run left in flight for this entry on this very server, if it still has it."""
        earlier = self.journal.in_flight(entry)
        if not earlier or earlier.get("server") != server.url:
            return None
        prompt_id, state = client.find_prompt(earlier["token"])
        if state not in ("success", "running", "pending"):
            return None
        say(f"{entry.label}: resuming prompt {prompt_id} ({state}) that the earlier run left on {server.url}")
        return {"prompt_id": prompt_id, "attempts": earlier.get("attempts") or [], "redact": earlier.get("redact"),
                "overrides": {int(k): v for k, v in (earlier.get("overrides") or {}).items()}}

    @staticmethod
    def _line(entry, record):
        if record["status"] == "failed":
            return f"FAILED: {entry.label}: {record['reason']}"
        what = f"{record['frames']} frames, " if record.get("frames") != "" else ""
        if record.get("audio_output") in ("kept", "dropped"):
            what += f"audio {record['audio_output'].upper() if record['audio_output'] == 'kept' else 'dropped'}, "
        audit = f"audit {record['audit']}" if record["audit"] else "no audit in the workflow"
        if record.get("single_recognizer"):
            audit += " by ArcFace ALONE (--single-recognizer)"
        mark = " (marked NOT ANONYMIZED, by request)" if record["status"] == "unanonymized" else ""
        lines = [f"{record['status']}: {entry.label} -> {record['output']}{mark} ({what}{record['faces']} face(s), "
                 f"{audit}, {record['attempts']} attempt(s), {record['seconds']:.1f} s on {record['server']})"]
        lines += [f"  REDACTED: face {r['face']} (image {r['image']}, row {r['row']}): still recognizable by "
                  f"{', '.join(r['recognized_by'])} after the last attempt; covered with a flat fill"
                  for r in record.get("redacted") or []]
        if record.get("long_gaps"):
            lines.append(f"  long gaps: {describe_gaps(record['long_gaps'])}")
        return "\n".join(lines)
