"""One item, a photo or a clip, through one ComfyUI server: the job's steps, each a short function.

    outcome = Job(item, settings, client).run()

`Item.prepare` reads the file on this side (a clip is decoded here, so a bad one fails before the
server sees it); `upload` sends it; `graph` sets its name on the workflow; `attempts` queues the graph
and follows it, and in guaranteed mode queues it again with stronger guidance for the faces the
audit still recognizes, then (with on_fail "redact") once more with the audit told to cover the faces
still recognizable; `verdict` reads what the checks said, from their verdict data only (a node that
judges but gave none fails the item); `fetch` downloads the saved pictures
and `Item.save` writes the output (a photo in the format its name asks, a clip encoded with its
audio). A failure is a `CliError` with a message and an exit code; a server that stops answering is
`ServerGone`, left to the caller (another server may take the item).
"""
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import media, workflow
from revpers_core import file_privacy, guarantee, guidance
from revpers_core.faces import audit as audit_rules
from .api import PromptRejected, ServerGone
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNANONYMIZED, CliError
from .progress import NodeProgress, say

__all__ = ["Settings", "Outcome", "PhotoItem", "ClipItem", "Job"]


@dataclass
class Settings:
    """What every item of a job shares: the workflow of each kind with the job's knobs set, guaranteed
    mode's retry guidances (None = off), whether failed images are written marked, what happens to a face
    still recognizable after the last retry (on_fail per kind: "stop" or "redact"), whether a tracker's
    long gap fails the item, whether settings that cannot anonymize were forced, and limits (`stall`: how
    long a server may answer nothing before it counts as stalled)."""

    graphs: dict
    retries: tuple = None
    allow_unanonymized: bool = False
    timeout: float = 24 * 3600.0
    crf: int = media.CRF_DEFAULT
    quiet: bool = False
    audio: str = media.AUDIO_DEFAULT  # a clip's audio: "drop" or "keep" (voices are not anonymized)
    on_fail: dict = field(default_factory=dict)
    fail_on_gaps: bool = False
    force: bool = False
    stall: float = 300.0


@dataclass
class Outcome:
    """What became of one item."""

    status: str                      # "done", "unanonymized" (written marked, by request) or "failed"
    code: int = EXIT_OK
    message: str = ""
    written: list = field(default_factory=list)
    summary: dict = None             # the audit's verdicts (workflow.audit_summary)
    tracks: dict = None              # what Detect and Track did (workflow.tracks_summary): long gaps...
    texts: list = field(default_factory=list)
    attempt_lines: list = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # clip: frames, fps, audio
    left: list = field(default_factory=list)     # files left on a server given by URL (Job._left)

    @classmethod
    def failed(cls, message, code=EXIT_FAILED, **kw):
        return cls("failed", code, message, **kw)


class PhotoItem:
    """A photo in, a photo out (several when the workflow saves several pictures)."""

    kind = "photo"

    def __init__(self, source, output, label=None):
        self.source, self.output = Path(source), Path(output)
        self.label = label or self.source.name
        self.upload_file, self.alpha, self.details = None, None, {}
        self.left = []  # files this item left on servers given by URL, on every server it went to

    def prepare(self, workdir):
        self.upload_file, self.alpha = media.photo_for_upload(self.source, workdir, say)

    def save(self, pictures):
        written = []
        for i, data in enumerate(pictures):
            target = self.output if i == 0 else self.output.with_name(f"{self.output.stem}_{i}{self.output.suffix}")
            media.save_picture(data, target, self.alpha, say)
            written.append(target)
        return written


class ClipItem:
    """A clip in (decoded with PyAV), its frames through the video workflow, the clip out with its audio."""

    kind = "clip"

    def __init__(self, source, output, label=None, crf=media.CRF_DEFAULT, audio=media.AUDIO_DEFAULT):
        self.source, self.output = Path(source), Path(output)
        self.label = label or self.source.name
        self.crf, self.audio = crf, audio
        self.clip = self.upload_file = None
        self.details = {}
        self.left = []

    def prepare(self, workdir):
        self.clip = media.read_clip(self.source)
        self.upload_file = media.clip_for_upload(self.clip, workdir)
        self.details = {"frames": len(self.clip.frames), "fps": str(self.clip.rate),
                        "size": "x".join(map(str, self.clip.size)), "audio": ", ".join(self.clip.audio) or "none",
                        "audio_output": media.audio_choice(self.clip, self.audio)}
        say(media.audio_line(self.clip, self.audio, self.label))

    def save(self, pictures):
        if len(pictures) != 1:
            raise media.MediaError(f"the video workflow saved {len(pictures)} pictures for {self.label}; it must save "
                                   "the clip as one file of every frame (Save Anonymized Images; the command line "
                                   "sets its format to animated png)")
        media.write_clip(self.clip, media.frames_of(pictures[0]), self.output, self.crf, say,
                         audio=self.audio == "keep")
        self.clip = None  # the frames are not needed any more
        return [self.output]


class Job:
    """One item through one server. `journal(event, **data)`, when given, hears "queueing" (the token a
    prompt is queued under, the attempt's overrides) and "attempt" (an audit's failed rows), so that an
    interrupted job can be resumed."""

    def __init__(self, item, settings, client, progress=None, journal=None, host=None):
        self.item, self.settings, self.client = item, settings, client
        self.progress = progress or NodeProgress({}, enabled=False)
        self.journal = journal or (lambda event, **data: None)
        self.host = host
        self.started = time.time()
        self.outputs = {}  # every node's UI output seen in this item's prompts, by node id

    def run(self, workdir, adopt=None):
        """The item's Outcome. `adopt`: a prompt of an earlier, interrupted run of this item on this server
        ({"prompt_id", "overrides", "attempts"}), followed or read back instead of being queued again."""
        if self.item.upload_file is None:
            self.item.prepare(workdir)
        graph = self.graph(self.upload())
        result, summary, plan = self.attempts(graph, adopt)
        outcome = self.verdict(result, graph, summary, plan)
        outcome.details.update(self.item.details)
        if outcome.status != "failed":
            outcome.written = self.item.save(self.fetch(result, graph))
        outcome.seconds = time.time() - self.started
        outcome.left = list(self.item.left)
        return outcome

    def upload(self):
        """Send the prepared file under a random name: nothing of the input's name reaches the server."""
        name = f"revpers-{uuid.uuid4().hex}{self.item.upload_file.suffix}"
        uploaded = self.client.upload_image(self.item.upload_file, name=name)
        self._left("input", uploaded, "the input as uploaded: its pixels, NOT anonymized (no metadata)")
        return uploaded

    def _left(self, folder, file, what):
        """Note a file this item leaves on a server given by URL (ComfyUI has no API to delete one); a server
        this command started keeps nothing: its folders go when it stops."""
        if self.host is not None:
            return
        record = {"server": self.client.url, "folder": folder, "file": file, "what": what}
        if all((r["server"], r["folder"], r["file"]) != (record["server"], folder, file) for r in self.item.left):
            self.item.left.append(record)
            self.journal("left", **record)

    def _note_files(self, result):
        for folder, file in workflow.server_files(result):
            self._left(folder, file, "the anonymized output" if folder == "output" else f"saved in {folder}/")

    @property
    def on_fail(self):
        """"stop" or "redact": what becomes of a face still recognizable after the last retry."""
        return self.settings.on_fail.get(self.item.kind, "stop")

    def graph(self, name):
        graph = workflow.apply_knobs(self.settings.graphs[self.item.kind], {"image": name})
        # a Save node saves nothing of a failed audit on the server (fetch releases it when asked to write it)
        graph = workflow.with_inputs(graph, "RevPersSave", if_audit_failed=file_privacy.SAVE_NOTHING)
        if self.item.kind == "clip":
            # as many pages as frames, exactly
            graph = workflow.with_inputs(graph, "RevPersSave", format="animated png (every frame)")
        if workflow.nodes_of(graph, "RevPersAudit"):
            if self.settings.retries is not None:
                # the audit hands its verdicts back instead of stopping: the CLI decides what is written
                graph = workflow.with_inputs(graph, "RevPersAudit", on_fail=audit_rules.MARK)
            elif self.on_fail == "redact" and not self.settings.allow_unanonymized:
                graph = workflow.with_inputs(graph, "RevPersAudit", on_fail=audit_rules.REDACT)
        self.progress.graph = graph
        return graph

    def _plan(self, graph, adopt):
        base = workflow.guidance_of(graph)
        if (self.settings.retries is None or not workflow.nodes_of(graph, "RevPersAudit") or base is None
                or not guidance.anonymizes(base)):
            return None
        try:
            plan = guarantee.Plan(base, tuple(g for g in self.settings.retries if g < base))
        except ValueError as e:
            raise CliError(f"--retry-guidance: {e}", 2)
        plan.start()
        for record in (adopt or {}).get("attempts", []):  # attempts an interrupted run had finished
            plan.next(record["failed_rows"], record.get("unfixable", ()))
        return plan

    @staticmethod
    def _redacts(graph):
        audits = workflow.nodes_of(graph, "RevPersAudit")
        return bool(audits) and all(graph[n]["inputs"].get("on_fail") == audit_rules.REDACT for n in audits)

    def attempts(self, graph, adopt=None):
        """Run the graph; in guaranteed mode again, only the failing faces sampled harder, until the audit
        passes or the strongest guidance was tried; then, when faces are still recognizable and on_fail is
        "redact", once more with the audit covering them (the server has every other node's output cached,
        so only the audit and the save run again). (last result, its audit summary, the plan)"""
        plan = self._plan(graph, adopt)
        overrides = dict(plan.attempts[-1].overrides) if plan is not None else {}
        pending = (adopt or {}).get("prompt_id")
        redacting = bool((adopt or {}).get("redact"))
        while True:
            run = workflow.with_face_guidance(graph, overrides)
            if redacting:
                run = workflow.with_inputs(run, "RevPersAudit", on_fail=audit_rules.REDACT)
            result = self.run_graph(run, overrides, pending, redact=redacting)
            pending = None
            summary = workflow.audit_summary(result, graph)
            if summary is None or not summary["recognized"] or redacting or self._redacts(run):
                return result, summary, plan
            if plan is not None:
                self.journal("attempt", failed_rows=summary["failed_rows"], unfixable=summary["unfixable"])
                following = plan.next(summary["failed_rows"], summary["unfixable"])
                if following is not None:
                    overrides = following
                    self._say_retry(plan, overrides)
                    continue
            if self.on_fail != "redact" or self.settings.allow_unanonymized:
                return result, summary, plan
            redacting = True
            say(f"on-fail redact{self._of()}: face(s) still recognizable after the last attempt; covering them "
                "with a flat fill and auditing again")

    def _say_retry(self, plan, overrides):
        rows = ", ".join(str(r) for r in plan.attempts[-2].failed_rows)
        say(f"guaranteed mode{self._of()}: face row(s) {rows} still recognizable; sampling only those again "
            f"(attempt {plan.attempts[-1].number}: face_guidance \"{guarantee.format_face_guidance(overrides)}\", "
            f"the other faces {plan.base:g}, their pixels unchanged; the inversion is reused)")

    def _of(self):
        return f" ({self.item.label})" if self.progress.prefix else ""

    def _queue(self, graph, overrides, redact=False):
        """Queue the graph under a token of ours, told to the journal first: a job killed at any moment
        finds its prompt on the server again by that token (ComfyClient.find_prompt)."""
        token = uuid.uuid4().hex
        self.journal("queueing", token=token, overrides=overrides, redact=redact)
        return self.client.queue(graph, extra_data={"revpers_token": token})

    def run_graph(self, graph, overrides, pending=None, redact=False):
        """Queue the graph (or follow `pending`, the id of a prompt already queued) to its end; its result."""
        self.last_graph = graph
        try:
            prompt_id = pending or self._queue(graph, overrides, redact)
            result = self.client.follow(prompt_id, on_event=self.progress, timeout=self.settings.timeout)
        except PromptRejected as e:
            raise CliError(f"the server refused the workflow:\n{e}", EXIT_FAILED)
        except KeyboardInterrupt:
            self.progress.close()
            try:
                self.client.interrupt()
            except (ServerGone, OSError):
                pass
            raise CliError("interrupted; the run was cancelled", EXIT_INTERRUPTED)
        except TimeoutError as e:
            raise CliError(str(e), EXIT_FAILED)
        finally:
            self.progress.close()
        self._note_files(result)
        if result.status != "success":
            raise CliError(f"the run failed: {result.message or 'no message from the server'}", EXIT_FAILED)
        self._recall_cached(result)
        return result

    def _recall_cached(self, result):
        """A node the server took from its cache (same inputs as in an earlier prompt of this item) did not
        run, so its UI output, a verdict among them, is not in this prompt's history: it is the one it
        gave when it ran, which this item's earlier prompt brought."""
        cached = {str(n) for kind, data in result.events if kind == "execution_cached" for n in data.get("nodes", [])}
        for nid in cached:
            if nid not in result.outputs and nid in self.outputs:
                result.outputs[nid] = self.outputs[nid]
        self.outputs.update(result.outputs)

    def verdict(self, result, graph, summary, plan):
        """What the checks said, from their verdict data only: written (passed, or marked by request) or
        failed, with the texts to show. A node that judges but gave no verdict fails the item."""
        texts = workflow.check_texts(result, graph)
        tracks = workflow.tracks_summary(result, graph)
        lines = plan.lines() if plan is not None and len(plan.attempts) > 1 else []
        common = dict(summary=summary, tracks=tracks, texts=texts, attempt_lines=lines,
                      attempts=len(plan.attempts) if plan else 1)
        missing = workflow.missing_verdicts(result, graph)
        if missing:
            return Outcome.failed(f"no verdict from {', '.join(missing)}: a node that judges gave no verdict data "
                                  f"(an older pack on the server?), so nothing was written to {self.item.output}",
                                  **common)
        sampler = workflow.sampler_summary(result, graph)
        if sampler is not None and not sampler["anonymizing"] and not self.settings.force:
            return Outcome.failed("the sampler's settings cannot anonymize: " + "; ".join(sampler["warnings"])
                                  + f"; nothing was written to {self.item.output}", **common)
        gaps = (tracks or {}).get("long_gaps", [])
        if gaps and self.settings.fail_on_gaps:
            return Outcome.failed(f"--fail-on-gaps: {describe_gaps(gaps)}; nothing was written to "
                                  f"{self.item.output}", **common)
        check = workflow.check_summary(result, graph)
        failed = (summary is not None and not summary["passed"]) or (check is not None and not check["passed"])
        if not failed:
            return Outcome("done", EXIT_OK, **common)
        if self.settings.allow_unanonymized:
            return Outcome("unanonymized", EXIT_UNANONYMIZED, "the audit FAILED: written marked NOT ANONYMIZED by "
                           "request (--allow-unanonymized)", **common)
        return Outcome.failed(not_anonymized(summary, plan, self.item.output), **common)

    def fetch(self, result, graph):
        """The bytes of every picture the workflow saved, all of them before anything is written."""
        images = [img for nid in sorted(workflow.nodes_of(graph, workflow.OUTPUT_CLASSES))
                  for img in result.images(nid)]
        held = [s for nid in workflow.nodes_of(graph, "RevPersSave")
                for s in (result.outputs.get(nid) or {}).get("revpers_save", []) if s.get("held_back")]
        if not images and held and self.settings.allow_unanonymized:
            # written marked by request: the same prompt once more with the Save node saving the marked images
            # (every other node comes from the server's cache)
            marked = workflow.with_inputs(self.last_graph, "RevPersSave", if_audit_failed=file_privacy.SAVE_MARKED)
            result = self.run_graph(marked, {})
            images = [img for nid in sorted(workflow.nodes_of(graph, workflow.OUTPUT_CLASSES))
                      for img in result.images(nid)]
        if not images:
            raise CliError("the workflow finished without an output image", EXIT_FAILED)
        return [self.client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output"))
                for img in images]


def describe_gaps(gaps):
    """The tracker's long gaps, one phrase each: "track 1 not detected in frames 6-7 (2 frames > max_gap 1)"."""
    return "; ".join(f"track {g['track']} not detected in frames {g['first_frame']}-{g['last_frame']} "
                     f"({g['frames']} frames > max_gap {g['max_gap']}; not interpolated, left to the audit)"
                     for g in gaps)


def not_anonymized(summary, plan, output):
    """Why an item was not written: the faces still recognizable, and what may help."""
    lines = ["the audit FAILED: a face is still recognizable in the anonymized photo, so nothing was written "
             f"to {output}."]
    if summary is not None:
        for u in summary["unfixable"]:
            lines.append(f"  {u}: not a face Detect and Align anonymized (its detector did not take it for a face, "
                         "or it was covered), so sampling again cannot change it")
        if plan is not None and plan.exhausted_rows:
            lines.append(f"  face row(s) {', '.join(map(str, plan.exhausted_rows))}: still recognizable after the "
                         f"strongest guidance tried ({((plan.base,) + plan.retries)[-1]:g})")
    lines.append("See the audit above. Stronger --retry-guidance values, another --seed or --attribute may help; "
                 "--on-fail redact covers such faces with a flat fill; --allow-unanonymized writes the photo "
                 "marked NOT ANONYMIZED (exit code 5).")
    return "\n".join(lines)
