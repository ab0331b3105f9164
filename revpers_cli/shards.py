"""A folder job split into N shards, each an independent process (a Slurm array task, a Kubernetes
Indexed Job pod...) with its own server(s), journal and manifest; `revpers merge-manifests` joins the
shards' manifests into the job's one.

The split: an entry belongs to shard K of N when sha256 of its input's path under its folder (the
entry's label, as the manifest names it), read as a number, is K - 1 modulo N. By hash rather than by
position, so that a file added to (or removed from) the folder between two shards' starts, or before a
resumed shard, moves no other item to another shard: nothing is done twice, nothing falls between two
shards. The label rather than the output's name, which for --output-names number is a position.

Each shard writes `manifest.shard-K-of-N.json` and `.revpers-journal.shard-K-of-N.json` (a --manifest
given gets the same `.shard-K-of-N` before its suffix), so N shards writing into one output folder never
touch each other's files. The journal's settings digest includes the shard spec, and a shard refuses an
output folder holding the journal of another split (another N, or no --shard): those items would be
split differently and their outputs refused one by one as made by another job.

The manifest's header records the job's settings digest (the same for every shard) and the shard: K, N,
how many items the whole job planned and which outputs this shard planned; merge-manifests checks that
the manifests are of one job and says what is missing, per shard.
"""
import csv
import hashlib
import json
import os
import re
from pathlib import Path

from . import batch
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError

SPEC_FORM = "K/N with 1 <= K <= N (e.g. 3/8), or auto (from $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX)"
SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.(json|csv)$", re.IGNORECASE)


def parse_spec(text, count=None, env=None):
    """(K, N) from --shard TEXT (and --shard-count COUNT for an index that carries no count). `auto`
    reads the array runner's variables: Slurm's SLURM_ARRAY_TASK_ID, _COUNT and _MIN (and _STEP: an
    array 1-15:2 has tasks 1, 3, ... 15), or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX (from 0)
    with --shard-count N (its completions). A CliError with EXIT_USAGE otherwise."""
    env = os.environ if env is None else env
    text = (text or "").strip()
    if count is not None and text != "auto":
        raise CliError(f"--shard-count {count}: only with --shard auto (a Kubernetes Indexed Job's "
                       "JOB_COMPLETION_INDEX carries no count); --shard K/N says N itself", EXIT_USAGE)
    if text == "auto":
        k, n = _from_env(env, count)
    else:
        match = re.fullmatch(r"(\d+)/(\d+)", text)
        if not match:
            raise CliError(f"--shard {text!r}: give {SPEC_FORM}", EXIT_USAGE)
        k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise CliError(f"--shard {text!r} gives shard {k} of {n}: give {SPEC_FORM}", EXIT_USAGE)
    return k, n


def _number(env, name):
    value = env.get(name, "").strip()
    if not re.fullmatch(r"\d+", value):
        raise CliError(f"--shard auto: ${name} is {'unset' if not value else repr(value)}, not a number", EXIT_USAGE)
    return int(value)


def _from_env(env, count):
    if env.get("SLURM_ARRAY_TASK_ID", "").strip():
        task, n = _number(env, "SLURM_ARRAY_TASK_ID"), _number(env, "SLURM_ARRAY_TASK_COUNT")
        first = _number(env, "SLURM_ARRAY_TASK_MIN")
        step = _number(env, "SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP", "").strip() else 1
        if step < 1 or (task - first) % step:
            raise CliError(f"--shard auto: Slurm task {task} is not on its array's steps ({first}, step {step})",
                           EXIT_USAGE)
        if count is not None and count != n:
            raise CliError(f"--shard-count {count}: the Slurm array has {n} tasks ($SLURM_ARRAY_TASK_COUNT)",
                           EXIT_USAGE)
        return (task - first) // step + 1, n
    if env.get("JOB_COMPLETION_INDEX", "").strip():
        index = _number(env, "JOB_COMPLETION_INDEX")
        if count is None:
            raise CliError("--shard auto with $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job, counted from 0) "
                           "needs --shard-count N, the Job's completions", EXIT_USAGE)
        return index + 1, count
    raise CliError("--shard auto: neither $SLURM_ARRAY_TASK_ID (a Slurm job array) nor $JOB_COMPLETION_INDEX "
                   f"(a Kubernetes Indexed Job) is set; give {SPEC_FORM}", EXIT_USAGE)


def shard_of(label, n):
    """The shard (1..n) of the entry whose input is `label` (its path under its folder)."""
    return int(hashlib.sha256(label.encode("utf-8")).hexdigest(), 16) % n + 1


def split(entries, k, n):
    """The entries of shard k of n, in the plan's order."""
    return [e for e in entries if shard_of(e.label, n) == k]


def tag(k, n):
    return f"shard-{k}-of-{n}"


def shard_path(path, k, n):
    """manifest.json -> manifest.shard-K-of-N.json (beside it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag(k, n)}{path.suffix}")


def journal_digest(digest, k, n):
    return f"{digest}/{tag(k, n)}"


def refuse_other_splits(folder, k=None, n=None):
    """A CliError when `folder` holds the journal of another split of a job (another N; or, for a
    sharded job, an unsharded one; for an unsharded one, any shard's)."""
    own = Path(batch.JOURNAL_NAME).name if n is None else shard_path(batch.JOURNAL_NAME, k, n).name
    others = []
    for path in sorted(Path(folder).glob(".revpers-journal*.json")):
        match = SHARD_NAME.search(path.name)
        if path.name == own or (match and n is not None and int(match[2]) == n):
            continue
        others.append(path.name)
    if others:
        mine = f"--shard {k}/{n}" if n else "no --shard"
        raise CliError(f"{folder} holds the journal of another split of a job ({', '.join(others[:3])}"
                       f"{', ...' if len(others) > 3 else ''}); this run has {mine}. Its items were split "
                       "otherwise, so resuming it this way would refuse their outputs one by one: run with the same "
                       "--shard (or none) as before, or write into another output folder", EXIT_USAGE)


def header(digest, k=None, n=None, planned=(), total=None):
    """The manifest's header: the job's settings digest and, for a shard, its spec and plan."""
    head = {"settings": digest}
    if n is not None:
        head["shard"] = {"index": k, "count": n, "total": total, "planned": [str(e.output) for e in planned]}
    return head


# --- merging the shards' manifests ---------------------------------------------------------------

class Shard:
    """One shard's manifest as read: its spec, digest (JSON only), planned outputs (JSON only) and items
    (JSON: the job's records; CSV: the rows, grouped by item)."""

    def __init__(self, path):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        try:
            self._read_csv() if self.csv else self._read_json()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CliError(f"{self.path}: not a manifest a shard wrote ({e.__class__.__name__}: {e})", EXIT_USAGE)

    def _read_json(self):
        data = json.loads(self.path.read_text())
        shard = data.get("shard")
        if not isinstance(shard, dict):
            raise CliError(f"{self.path}: its header names no shard (it was not written with --shard)", EXIT_USAGE)
        self.k, self.n, self.total = int(shard["index"]), int(shard["count"]), shard.get("total")
        self.planned = list(shard.get("planned") or [])
        self.digest = data.get("settings")
        self.items = list(data["items"])
        self.outputs = [r["output"] for r in self.items]

    def _read_csv(self):
        match = SHARD_NAME.search(self.path.name)
        if not match:
            raise CliError(f"{self.path}: a CSV manifest carries no header; its shard is read from its name "
                           "(...shard-K-of-N.csv), which it does not have", EXIT_USAGE)
        self.k, self.n, self.total, self.planned, self.digest = int(match[1]), int(match[2]), None, None, None
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            self.fields = reader.fieldnames
            rows = list(reader)
        if not self.fields or "output" not in self.fields:
            raise ValueError("no output column")
        self.items = {}
        for row in rows:
            self.items.setdefault(row["output"], []).append(row)
        self.outputs = list(self.items)

    def statuses(self):
        if self.csv:
            return {out: rows[0].get("status", "") for out, rows in self.items.items()}
        return {r["output"]: r["status"] for r in self.items}


def manifests_in(paths):
    """The manifests named, a folder standing for the shards' manifests in it."""
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            inside = sorted(p for p in given.iterdir()  # the shards' journals (hidden) are not manifests
                            if p.is_file() and not p.name.startswith(".") and SHARD_NAME.search(p.name))
            if not inside:
                raise CliError(f"{given}: no shard manifest (*.shard-K-of-N.json or .csv) in it", EXIT_USAGE)
            found += inside
        elif given.is_file():
            found.append(given)
        else:
            raise CliError(f"{given} does not exist", EXIT_USAGE)
    return list(dict.fromkeys(found))


def check_one_job(shards):
    """A CliError when the shards are not of one job: another N, another settings digest, another
    format, or one shard given twice."""
    counts = {s.n for s in shards}
    if len(counts) > 1:
        raise CliError("the manifests are of different splits: " + ", ".join(f"{s.path} is shard {s.k}/{s.n}"
                                                                            for s in shards), EXIT_USAGE)
    digests = {s.digest for s in shards if s.digest is not None}
    if len(digests) > 1:
        raise CliError("the manifests are of jobs with different settings: " + ", ".join(
            f"{s.path} has {s.digest}" for s in shards), EXIT_USAGE)
    if len({s.csv for s in shards}) > 1:
        raise CliError("give the shards' manifests in one format: all JSON or all CSV", EXIT_USAGE)
    seen = {}
    for s in shards:
        if s.k in seen:
            raise CliError(f"shard {s.k}/{s.n} is given twice: {seen[s.k]} and {s.path}", EXIT_USAGE)
        seen[s.k] = s.path


def merge(shards):
    """(records or CSV rows in the output's order, report lines, complete) of one job's shards."""
    check_one_job(shards)
    n = shards[0].n
    lines, complete = [], True
    seen = {}
    duplicates = []
    for s in sorted(shards, key=lambda s: s.k):
        for out in s.outputs:
            if out in seen:
                duplicates.append(f"{out} (in {seen[out]} and {s.path})")
            else:
                seen[out] = s.path
    if duplicates:
        raise CliError(f"{len(duplicates)} item(s) are in two manifests, so the shards are not one split of one "
                       "job (each item belongs to one shard):\n  " + "\n  ".join(duplicates), EXIT_FAILED)
    present = {s.k for s in shards}
    totals = {s.total for s in shards if s.total is not None}
    for k in sorted(set(range(1, n + 1)) - present):
        lines.append(f"MISSING: shard {k}/{n}: no manifest (its items are not in the merged manifest)")
        complete = False
    for s in sorted(shards, key=lambda s: s.k):
        if s.planned is None:
            continue
        written = set(s.outputs)
        missing = [p for p in s.planned if p not in written]
        if missing:
            complete = False
            lines.append(f"MISSING: shard {s.k}/{n}: {len(missing)} of its {len(s.planned)} planned item(s) are not "
                         "in its manifest (the shard did not finish): " + ", ".join(missing[:10])
                         + (", ..." if len(missing) > 10 else ""))
    if len(totals) == 1:
        total = totals.pop()
        planned = sum(len(s.planned) for s in shards if s.planned is not None)
        if present != set(range(1, n + 1)) and not any(s.planned is None for s in shards):
            lines.append(f"MISSING: {total - planned} of the job's {total} planned item(s) belong to the missing "
                         "shard(s)")
    elif len(totals) > 1:
        lines.append(f"note: the shards planned over folders of different sizes ({', '.join(map(str, sorted(totals)))}"
                     " items): files were added or removed between their starts; each item is still in one shard")
    statuses = {out: status for s in shards for out, status in s.statuses().items()}
    failed = sorted(out for out, status in statuses.items() if status == "failed")
    if failed:
        lines.append(f"FAILED: {len(failed)} item(s): " + ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else ""))
    if shards[0].csv:
        merged = [row for out in sorted(seen) for s in shards if out in s.items for row in s.items[out]]
    else:
        by_output = {r["output"]: r for s in shards for r in s.items}
        merged = [by_output[out] for out in sorted(by_output)]
    return merged, lines, complete


def run_merge(paths, output):
    """`revpers merge-manifests`: read, check, write the merged manifest, say what is missing; the exit code."""
    shards = [Shard(p) for p in manifests_in(paths)]
    if not shards:
        raise CliError("no manifest given", EXIT_USAGE)
    if output is None:
        folders = {s.path.parent for s in shards}
        if len(folders) != 1:
            raise CliError("the manifests are in several folders: give -o for the merged manifest", EXIT_USAGE)
        output = folders.pop() / (Path(batch.MANIFEST_NAME).stem + (".csv" if shards[0].csv else ".json"))
    output = Path(output)
    if shards[0].csv and output.suffix.lower() != ".csv":
        raise CliError(f"-o {output}: CSV manifests merge into a .csv (their rows are copied)", EXIT_USAGE)
    if output.suffix.lower() not in (".json", ".csv"):
        raise CliError(f"-o {output}: must end in .json or .csv", EXIT_USAGE)
    if output.resolve() in {s.path.resolve() for s in shards}:
        raise CliError(f"-o {output} is one of the manifests merged", EXIT_USAGE)
    merged, lines, complete = merge(shards)
    n = shards[0].n
    if shards[0].csv:
        with open(output, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=shards[0].fields)
            writer.writeheader()
            writer.writerows(merged)
    else:
        head = {"settings": shards[0].digest, "merged": {"count": n, "shards": sorted(s.k for s in shards),
                                                         "complete": complete, "missing": lines}}
        batch.write_manifest(output, merged, head)
    items = len({r["output"] for r in merged}) if shards[0].csv else len(merged)
    for line in lines:
        print(line)
    print(f"merged {len(shards)} of {n} shard manifest(s): {items} item(s) into {output}"
          + ("" if complete else " (INCOMPLETE: see MISSING above)"))
    code = batch.exit_code([{"status": r.get("status", ""), "code": int(r["code"]) if str(r.get("code", "")).isdigit()
                             else EXIT_FAILED} for r in merged]) if not shards[0].csv else \
        (EXIT_FAILED if any(r.get("status") == "failed" for r in merged) else EXIT_OK)
    return EXIT_FAILED if code == EXIT_OK and not complete else code
