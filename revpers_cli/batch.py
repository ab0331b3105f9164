"""Many items in one job: the photos and clips of files and folders, handed out to one or more servers,
a journal that lets a killed job resume, and a manifest of what became of every item and face.

Handing out: one worker per server takes the next item, runs it there to its end (the server's own
queue does the work) and takes the next; nothing else is scheduled. An item whose server stops
answering goes back to the front of the line for another server; that server leaves the job. So
every item is finished exactly once, by one server, or reported as not done.

The journal (`.revpers-journal.json` in the output folder, rewritten atomically after every change)
records per item the input's size and time, a digest of the job's settings, the prompt in flight
(server and prompt id) and the outcome. A job run again with the same settings skips the items
already done and audited; an item that was running when the job was killed is read back from its
server when that server still has it (finished, or still queued), instead of being done again.
"""
import csv
import hashlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import media
from .api import ComfyError, ServerGone
from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVER, EXIT_UNANONYMIZED, EXIT_USAGE,
                     CliError)
from .job import ClipItem, Job, Outcome, PhotoItem
from .progress import ItemProgress, NodeProgress, say

__all__ = ["Entry", "plan_entries", "Journal", "write_manifest", "Runner", "exit_code", "settings_digest"]

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

    def make_item(self, crf):
        if self.kind == "clip":
            return ClipItem(self.source, self.output, self.label, crf)
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


def plan_entries(inputs, output):
    """The entries of a job over `inputs` (files and folders) writing into the folder `output`: a single
    folder's files keep their paths under it; with several inputs, a folder's go under its own name."""
    output = Path(output)
    entries, by_key = [], {}
    for given in map(Path, inputs):
        if given.is_dir():
            base = given if len(inputs) == 1 else given.parent
            pairs = [(f, f.relative_to(base)) for f in _files_under(given, output)]
        else:
            pairs = [(given, Path(given.name))]
        for source, relative in pairs:
            kind = media.kind_of(source)
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
                       "allow_unanonymized": settings.allow_unanonymized}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the journal ---------------------------------------------------------------------------------

class Journal:
    """What the job did so far, per item (see the module's notes); safe to use from several workers."""

    def __init__(self, path, digest):
        self.path, self.digest = Path(path), digest
        self.lock = threading.Lock()
        self.items = {}
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
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps({"version": 1, "items": self.items}, indent=1))
        os.replace(part, self.path)

    def finished_before(self, entry):
        """The recorded outcome when this item was done (or written marked by request) by a run with the
        same settings from the same input, and its outputs are still there; else None."""
        record = self.items.get(entry.key)
        if not record or record.get("status") not in ("done", "unanonymized") or record.get("settings") != self.digest:
            return None
        try:
            if {k: record.get(k) for k in ("source", "size", "mtime_ns")} != self._stamp(entry):
                return None
        except OSError:
            return None
        if not all(Path(p).is_file() for p in record.get("outcome", {}).get("written", [])):
            return None
        return record

    def in_flight(self, entry):
        """The prompt that was queued for this item when an earlier run of the job ended, or None."""
        record = self.items.get(entry.key) or {}
        if record.get("status") != "running" or record.get("settings") != self.digest or not record.get("token"):
            return None
        return {k: record.get(k) for k in ("server", "token", "overrides", "attempts")}

    def begin(self, entry, server):
        with self.lock:
            self.items[entry.key] = {**self._stamp(entry), "settings": self.digest, "status": "running",
                                     "server": server, "token": None, "overrides": {}, "attempts": []}
            self._save()

    def note(self, entry, event, **data):
        """A Job's journal event: "queueing" (token, overrides) or "attempt" (failed_rows, unfixable)."""
        with self.lock:
            record = self.items.setdefault(entry.key, {})
            if event == "queueing":
                record.update(token=data["token"], overrides={str(k): v for k, v in data["overrides"].items()})
            elif event == "attempt":
                record.setdefault("attempts", []).append(data)
            self._save()

    def finish(self, entry, outcome_record):
        with self.lock:
            record = self.items.setdefault(entry.key, {})
            record.update(status=outcome_record["status"], outcome=outcome_record, token=None)
            self._save()


# --- the manifest --------------------------------------------------------------------------------

ITEM_COLUMNS = ("input", "output", "kind", "status", "reason", "server", "seconds", "attempts", "frames", "fps",
                "audio", "faces", "audit")
FACE_COLUMNS = ("face", "image", "row", "status_of_face", "recognizer", "measure", "at_place", "threshold",
                "recognized", "verdict", "box", "size", "found_by")


def outcome_record(entry, outcome, server=None):
    """One item's line of the manifest, with its per-face rows (the audit's figures)."""
    rows = (outcome.summary or {}).get("rows", []) if outcome is not None else []
    audit = "" if not outcome or outcome.summary is None else ("passed" if outcome.summary["passed"] else "FAILED")
    return {"input": str(entry.source), "output": str(entry.output), "kind": entry.kind or "",
            "status": outcome.status, "reason": outcome.message, "server": server or "",
            "seconds": round(outcome.seconds, 2), "attempts": outcome.attempts,
            "frames": outcome.details.get("frames", ""), "fps": outcome.details.get("fps", ""),
            "audio": outcome.details.get("audio", ""), "faces": len({(r["image"], r["face"]) for r in rows}),
            "audit": audit, "written": [str(p) for p in outcome.written], "rows": rows}


def write_manifest(path, records):
    """The manifest: JSON (items with their face rows) or CSV (one line per face and recognizer, an item
    without faces on one line), by the file's suffix; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    if path.suffix.lower() == ".csv":
        with open(part, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ITEM_COLUMNS + FACE_COLUMNS)
            writer.writeheader()
            for record in records:
                item = {k: record.get(k, "") for k in ITEM_COLUMNS}
                for row in record.get("rows") or [{}]:
                    face = {k: row.get("status" if k == "status_of_face" else k, "") for k in FACE_COLUMNS}
                    writer.writerow({**item, **face})
    else:
        part.write_text(json.dumps({"version": 1, "items": records}, indent=1))
    os.replace(part, path)


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

class Runner:
    """Runs the entries over the servers (one worker each) and keeps the journal and the manifest."""

    def __init__(self, entries, servers, settings, journal, manifest, workdir, overwrite=False):
        self.entries, self.servers, self.settings = entries, servers, settings
        self.journal, self.manifest, self.workdir, self.overwrite = journal, manifest, Path(workdir), overwrite
        self.records = {}
        self.items = {}  # prepared items (a clip decoded once), kept while an item may go to another server
        self.line = deque()
        self.busy = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.progress = ItemProgress(len(entries), enabled=not settings.quiet)

    # -- the whole job --
    def run(self):
        self.line.extend(e for e in self.entries if self._before(e) is None)
        try:
            self._work_everywhere()
        finally:
            self.progress.close()
            self._left_without_server()
            self._write_manifest()
        return [self.records[e.key] for e in self.entries if e.key in self.records]

    def _before(self, entry):
        """Settle an entry that needs no server: done before, not a photo or clip, or an output that exists."""
        earlier = self.journal.finished_before(entry)
        if earlier is not None:
            record = dict(earlier["outcome"], skipped="already done and audited by an earlier run of this job")
            return self._settle(entry, record, "skipped", f"already done: {entry.label}")
        if entry.kind is None:
            return self._settle(entry, self._failed(entry, "not a photo or clip this tool reads (by its suffix: "
                                                    f"photos {', '.join(media.PHOTO_SUFFIXES)}; clips "
                                                    f"{', '.join(media.CLIP_SUFFIXES)})", status="skipped"), "skipped")
        if entry.output.exists() and not self.overwrite:
            return self._settle(entry, self._failed(entry, f"the output {entry.output} already exists and was not "
                                                    "made by this job with these settings; --overwrite replaces it"),
                                "failed")
        return None

    def _failed(self, entry, reason, code=EXIT_FAILED, status="failed"):
        record = outcome_record(entry, Outcome(status, code, reason))
        record["code"] = code
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
                    with server.client() as client:
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
        if self.manifest is not None:
            write_manifest(self.manifest, [self.records[e.key] for e in self.entries if e.key in self.records])

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
        client = server.client()
        try:
            while True:
                entry = self._next()
                if entry is None:
                    return
                try:
                    self._run_entry(entry, server, client, position)
                except ServerGone as e:
                    server.gone = str(e)
                    others = [s.url for s in self.servers if not s.gone]
                    say(f"the server at {server.url} stopped answering ({e.stage}); {entry.label} "
                        + (f"goes to another server ({', '.join(others)})" if others else "cannot go to another server"))
                    self._done_with(entry, give_back=True)
                    return
                self._done_with(entry)
        finally:
            client.close()

    def _run_entry(self, entry, server, client, position):
        item = self.items.setdefault(entry.key, entry.make_item(self.settings.crf))
        adopt = self._adoptable(entry, server, client)
        if adopt is None:
            self.journal.begin(entry, server.url)
        progress = NodeProgress({}, enabled=not self.settings.quiet, position=position, prefix=f"{entry.label}: ",
                                verbose=False)
        job = Job(item, self.settings, client, progress, lambda event, **d: self.journal.note(entry, event, **d))
        outcome = self._outcome(job, entry, adopt)
        record = outcome_record(entry, outcome, server.url)
        record["code"] = outcome.code
        self.journal.finish(entry, record)
        server.items.append(entry.key)
        self._forget(self.items.pop(entry.key))
        self._settle(entry, record, "failed" if outcome.status == "failed" else "done", self._line(entry, record))
        self._write_manifest()

    def _forget(self, item):
        """Remove what was made to upload the item (a clip's animated WebP can be large)."""
        upload = getattr(item, "upload_file", None)
        if upload is not None and self.workdir in upload.parents:
            upload.unlink(missing_ok=True)

    def _outcome(self, job, entry, adopt):
        try:
            return job.run(self.workdir, adopt)
        except ServerGone:
            raise  # not the item's fault: another server takes it
        except (media.MediaError, CliError, ComfyError) as e:
            if isinstance(e, CliError) and e.code == EXIT_INTERRUPTED:
                self.stop.set()
            return Outcome.failed(str(e), getattr(e, "code", EXIT_FAILED), details=dict(job.item.details),
                                  seconds=time.time() - job.started)

    def _adoptable(self, entry, server, client):
        """The prompt an earlier run left in flight for this entry on this very server, if it still has it."""
        earlier = self.journal.in_flight(entry)
        if not earlier or earlier.get("server") != server.url:
            return None
        prompt_id, state = client.find_prompt(earlier["token"])
        if state not in ("success", "running", "pending"):
            return None
        say(f"{entry.label}: resuming prompt {prompt_id} ({state}) that the earlier run left on {server.url}")
        return {"prompt_id": prompt_id, "attempts": earlier.get("attempts") or [],
                "overrides": {int(k): v for k, v in (earlier.get("overrides") or {}).items()}}

    @staticmethod
    def _line(entry, record):
        if record["status"] == "failed":
            return f"FAILED: {entry.label}: {record['reason']}"
        what = f"{record['frames']} frames, " if record.get("frames") != "" else ""
        audit = f"audit {record['audit']}" if record["audit"] else "no audit in the workflow"
        mark = " (marked NOT ANONYMIZED, by request)" if record["status"] == "unanonymized" else ""
        return (f"{record['status']}: {entry.label} -> {record['output']}{mark} ({what}{record['faces']} face(s), {audit}, "
                f"{record['attempts']} attempt(s), {record['seconds']:.1f} s on {record['server']})")

