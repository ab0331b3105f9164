"""A folder job split over independent processes (`anonymize --shard K/N`, docs/scaling.md) and the
shards' manifests joined (`revpers merge-manifests`):

- without a server: the split (deterministic, disjoint, complete over K = 1..N, no other item moved when
  a file is added), the spec (K/N, auto from Slurm's or a Kubernetes Indexed Job's variables) and its
  errors, each shard's own manifest and journal, a folder of another split refused, and the merge: a
  complete job, a missing shard, an unfinished one, an item in two manifests, manifests of two jobs;
- against two real servers (SD1.5 stand-ins): two shards of a 20-photo folder as two processes, each
  with its own server, every item done exactly once over both, the merged manifest complete; a shard's
  manifest deleted, the merge says it is missing and exits non-zero.
"""
import json
import time
from pathlib import Path

import pytest
from test_cli_items import (
    FAST,
    ON_STANDINS,
    PHOTOS,
    cli_process,
    photo_folder,
    run,
    start_server,
)

from revpers_cli import batch, cli, shards
from revpers_cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError


def empty_folder(folder, n, start=0):
    """n photo files by name (the plan reads names and suffixes only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (folder / f"photo_{i:03d}.png").write_bytes(b"")
    return folder


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    assert e.value.code == EXIT_USAGE
    return capsys.readouterr().err


# --- the split -----------------------------------------------------------------------------------

def test_the_split_is_deterministic_disjoint_and_complete(tmp_path):
    entries = batch.plan_entries([empty_folder(tmp_path / "photos", 60)], tmp_path / "out")
    keys = [e.key for e in entries]
    for n in range(1, 7):
        parts = [[e.key for e in shards.split(entries, k, n)] for k in range(1, n + 1)]
        assert sorted(k for part in parts for k in part) == sorted(keys)  # complete
        assert sum(map(len, parts)) == len(keys)  # disjoint
        again = [[e.key for e in shards.split(batch.plan_entries([tmp_path / "photos"], tmp_path / "out"), k, n)]
                 for k in range(1, n + 1)]
        assert again == parts  # deterministic: the same plan splits the same way
        assert all(part == [k for k in keys if k in set(part)] for part in parts)  # the plan's order kept
    assert all(len(shards.split(entries, k, 3)) > 10 for k in (1, 2, 3))  # a hash spreads them


@pytest.mark.parametrize("numbered", [False, True])
def test_adding_files_moves_no_other_item_to_another_shard(tmp_path, numbered):
    photos = empty_folder(tmp_path / "photos", 40)
    before = {e.label: k for k in range(1, 5)
              for e in shards.split(batch.plan_entries([photos], tmp_path / "out", numbered), k, 4)}
    empty_folder(photos, 7, start=100)
    (photos / "aaa_first.png").write_bytes(b"")  # sorts before every other: shifts every position
    after = {e.label: k for k in range(1, 5)
             for e in shards.split(batch.plan_entries([photos], tmp_path / "out", numbered), k, 4)}
    assert len(after) == 48 and {label: after[label] for label in before} == before


# --- the spec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, env, count, expected", [
    ("3/8", {}, None, (3, 8)),
    ("1/1", {}, None, (1, 1)),
    (" 8/8 ", {}, None, (8, 8)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, None, (5, 8)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, None, (1, 4)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4",
              "SLURM_ARRAY_TASK_STEP": "2"}, None, (4, 4)),  # --array=1-7:2: tasks 1, 3, 5, 7
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 3, (2, 3)),
    ("auto", {"JOB_COMPLETION_INDEX": "0"}, 5, (1, 5)),
    ("auto", {"JOB_COMPLETION_INDEX": "4"}, 5, (5, 5)),
])
def test_the_spec_is_read(text, env, count, expected):
    assert shards.parse_spec(text, count, env) == expected


@pytest.mark.parametrize("text, env, count, message", [
    ("0/8", {}, None, "K/N with 1 <= K <= N"),
    ("9/8", {}, None, "gives shard 9 of 8"),
    ("3", {}, None, "K/N with 1 <= K <= N"),
    ("a/b", {}, None, "K/N"),
    ("-1/2", {}, None, "K/N"),
    ("", {}, None, "K/N"),
    ("2/4", {}, 4, "only with --shard auto"),
    ("auto", {}, None, "neither $SLURM_ARRAY_TASK_ID"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1"}, None, "$SLURM_ARRAY_TASK_COUNT is unset"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, None, "not a number"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 4,
     "the Slurm array has 3 tasks"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4",
              "SLURM_ARRAY_TASK_STEP": "2"}, None, "not on its array's steps"),
    ("auto", {"JOB_COMPLETION_INDEX": "2"}, None, "needs --shard-count N"),
    ("auto", {"JOB_COMPLETION_INDEX": "5"}, 5, "gives shard 6 of 5"),
])
def test_a_bad_spec_is_a_usage_error_that_says_the_form(text, env, count, message):
    with pytest.raises(CliError) as e:
        shards.parse_spec(text, count, env)
    assert e.value.code == EXIT_USAGE and message in str(e.value)


def test_the_command_line_refuses_a_bad_spec_and_a_single_item(tmp_path, capsys):
    photos = empty_folder(tmp_path / "photos", 3)
    err = usage_error(["anonymize", photos, "-o", tmp_path / "out", "--shard", "5/4"], capsys)
    assert "--shard '5/4' gives shard 5 of 4: give K/N with 1 <= K <= N" in err
    assert "give K/N" in usage_error(["anonymize", photos, "-o", tmp_path / "out", "--shard", "half"], capsys)
    assert "--shard-count N goes with --shard auto" in usage_error(
        ["anonymize", photos, "-o", tmp_path / "out", "--shard-count", "3"], capsys)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    err = usage_error(["anonymize", tmp_path / "one.png", "-o", tmp_path / "anon.png", "--shard", "1/2"], capsys)
    assert "a job of one photo or clip cannot be split" in err
    assert not (tmp_path / "out").exists()


def test_each_shard_has_its_own_manifest_and_journal(tmp_path):
    parse = cli.build_parser().parse_args
    a = parse(["anonymize", str(tmp_path), "-o", str(tmp_path / "out"), "--shard", "2/3"])
    a.shard_spec = (2, 3)
    assert cli._job_files(a) == (tmp_path / "out" / "manifest.shard-2-of-3.json", tmp_path / "out")
    a = parse(["anonymize", str(tmp_path), "-o", str(tmp_path / "out"), "--manifest", str(tmp_path / "m" / "f.csv"),
               "--output-names", "number", "--shard", "2/3"])
    a.shard_spec = (2, 3)
    assert cli._job_files(a) == (tmp_path / "m" / "f.shard-2-of-3.csv", tmp_path / "m")  # the journal beside it
    assert shards.shard_path(batch.JOURNAL_NAME, 2, 3).name == ".revpers-journal.shard-2-of-3.json"
    assert shards.journal_digest("abc", 2, 3) != shards.journal_digest("abc", 2, 4) != "abc"


def test_a_folder_of_another_split_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shards.refuse_other_splits(out, 1, 2)  # nothing there yet
    shards.refuse_other_splits(out)
    (out / ".revpers-journal.shard-3-of-4.json").write_text("{}")
    shards.refuse_other_splits(out, 1, 4)  # another shard of the same split: its neighbour
    with pytest.raises(CliError) as e:
        shards.refuse_other_splits(out, 1, 2)  # a resumed shard of another N
    assert e.value.code == EXIT_USAGE and "another split" in str(e.value) and "--shard 1/2" in str(e.value)
    with pytest.raises(CliError):
        shards.refuse_other_splits(out)  # the same folder without --shard
    (out / ".revpers-journal.shard-3-of-4.json").unlink()
    (out / batch.JOURNAL_NAME).write_text("{}")
    shards.refuse_other_splits(out)
    with pytest.raises(CliError):
        shards.refuse_other_splits(out, 1, 4)  # a job begun without --shard


# --- merging -------------------------------------------------------------------------------------

def write_shards(out, n=3, items=12, digest="d1", drop=(), status=None, csv=False):
    """The manifests n shards of a job of `items` photos would write (the records as the job writes
    them: batch.outcome_record); `drop`: shards whose manifests are not written; `status`: {key: status}."""
    out.mkdir(parents=True, exist_ok=True)
    entries = batch.plan_entries([empty_folder(out.parent / "photos", items)], out)
    for k in range(1, n + 1):
        mine = shards.split(entries, k, n)
        if k in drop:
            continue
        records = []
        for entry in mine:
            state = (status or {}).get(entry.key, "done")
            outcome = batch.Outcome(state, EXIT_FAILED if state == "failed" else EXIT_OK, "")
            records.append(dict(batch.outcome_record(entry, outcome, "http://s"), code=outcome.code))
        name = shards.shard_path(out / ("manifest.csv" if csv else batch.MANIFEST_NAME), k, n)
        batch.write_manifest(name, records, shards.header(digest, k, n, mine, len(entries)))
        (out / shards.shard_path(batch.JOURNAL_NAME, k, n).name).write_text('{"version": 1, "items": {}}')
    return entries


def merge(argv, capsys):
    code = cli.main(["merge-manifests", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_complete_job_merges_into_one_manifest(tmp_path, capsys):
    out = tmp_path / "out"
    entries = write_shards(out)
    code, stdout, err = merge([out], capsys)
    assert code == EXIT_OK, stdout + err
    merged = json.loads((out / "manifest.json").read_text())
    assert sorted(r["output"] for r in merged["items"]) == sorted(str(e.output) for e in entries)
    assert merged["settings"] == "d1" and merged["merged"]["complete"] and merged["merged"]["shards"] == [1, 2, 3]
    assert "merged 3 of 3 shard manifest(s): 12 item(s)" in stdout and "MISSING" not in stdout
    code, stdout, _ = merge([*sorted(out.glob("manifest.shard-*")), "-o", tmp_path / "all.json"], capsys)
    assert code == EXIT_OK and len(json.loads((tmp_path / "all.json").read_text())["items"]) == 12
    code, stdout, _ = merge([out, "-o", tmp_path / "all.csv"], capsys)  # JSON manifests into the job's CSV
    rows = (tmp_path / "all.csv").read_text().splitlines()
    assert code == EXIT_OK and rows[0].startswith("input,output,kind,status") and len(rows) == 13


def test_a_missing_shard_is_reported_with_its_items_and_fails_the_merge(tmp_path, capsys):
    out = tmp_path / "out"
    entries = write_shards(out, drop=(2,))
    lost = len(shards.split(entries, 2, 3))
    code, stdout, _ = merge([out, "-o", tmp_path / "merged.json"], capsys)
    assert code == EXIT_FAILED
    assert "MISSING: shard 2/3: no manifest" in stdout
    assert f"MISSING: {lost} of the job's 12 planned item(s) belong to the missing shard(s)" in stdout
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert len(merged["items"]) == 12 - lost and not merged["merged"]["complete"]


def test_an_unfinished_shard_and_a_failed_item_fail_the_merge(tmp_path, capsys):
    out = tmp_path / "out"
    entries = write_shards(out)
    path = out / "manifest.shard-1-of-3.json"
    data = json.loads(path.read_text())
    gone = data["items"].pop()["output"]
    path.write_text(json.dumps(data))
    code, stdout, _ = merge([out], capsys)
    assert code == EXIT_FAILED
    assert f"MISSING: shard 1/3: 1 of its {len(data['shard']['planned'])} planned item(s)" in stdout and gone in stdout
    failed = shards.split(entries, 3, 3)[0]
    write_shards(out, status={failed.key: "failed"})
    code, stdout, _ = merge([out], capsys)
    assert code == EXIT_FAILED and f"FAILED: 1 item(s): {failed.output}" in stdout and "MISSING" not in stdout


def test_an_item_in_two_manifests_is_an_error(tmp_path, capsys):
    out = tmp_path / "out"
    write_shards(out)
    one, two = out / "manifest.shard-1-of-3.json", out / "manifest.shard-2-of-3.json"
    data = json.loads(two.read_text())
    data["items"].append(json.loads(one.read_text())["items"][0])
    two.write_text(json.dumps(data))
    code, _, err = merge([out, "-o", tmp_path / "merged.json"], capsys)
    assert code == EXIT_FAILED and "1 item(s) are in two manifests" in err
    assert not (tmp_path / "merged.json").exists()


def test_manifests_of_other_jobs_are_refused(tmp_path, capsys):
    write_shards(tmp_path / "a" / "out", n=3, digest="d1")
    write_shards(tmp_path / "b" / "out", n=2, digest="d1")
    write_shards(tmp_path / "c" / "out", n=3, digest="d2")
    one = tmp_path / "a" / "out" / "manifest.shard-1-of-3.json"
    code, _, err = merge([one, tmp_path / "b" / "out" / "manifest.shard-2-of-2.json", "-o", tmp_path / "m.json"],
                         capsys)
    assert code == EXIT_USAGE and "different splits" in err
    code, _, err = merge([one, tmp_path / "c" / "out" / "manifest.shard-2-of-3.json", "-o", tmp_path / "m.json"],
                         capsys)
    assert code == EXIT_USAGE and "different settings" in err
    code, _, err = merge([one, one.parent / ".." / "out" / one.name, "-o", tmp_path / "m.json"], capsys)
    assert code == EXIT_USAGE and "given twice" in err
    plain = tmp_path / "plain.json"
    batch.write_manifest(plain, [], shards.header("d1"))  # a job run without --shard
    code, _, err = merge([plain, "-o", tmp_path / "m.json"], capsys)
    assert code == EXIT_USAGE and "names no shard" in err
    code, _, err = merge([tmp_path / "nowhere"], capsys)
    assert code == EXIT_USAGE and "does not exist" in err


def test_csv_manifests_merge_into_csv(tmp_path, capsys):
    out = tmp_path / "out"
    write_shards(out, csv=True)
    code, stdout, _ = merge([out], capsys)
    assert code == EXIT_OK, stdout
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0].startswith("input,output,kind,status") and len(rows) == 13
    (out / "manifest.shard-3-of-3.csv").unlink()
    (out / "manifest.csv").unlink()
    code, stdout, _ = merge([out], capsys)
    assert code == EXIT_FAILED and "MISSING: shard 3/3: no manifest" in stdout
    code, _, err = merge([out, "-o", tmp_path / "m.json"], capsys)
    assert code == EXIT_USAGE and "CSV manifests merge into a .csv" in err


# --- two shards as two processes, each with its own server ----------------------------------------

# How long a shard of a 20-photo folder on its own CPU server may take (the CLI is killed beyond it).
BOUND = 900


def journal_of(out, k, n):
    return json.loads((out / shards.shard_path(batch.JOURNAL_NAME, k, n).name).read_text())["items"]


def prompts_per_key(host_url, items):
    """How many prompts the server ran for each item of a shard's journal `items` (its uploads, under
    random names, are in the journal's left_on_server: the server was given by URL)."""
    from revpers_cli.api import ComfyClient
    owner = {left["file"]: key for key, record in items.items() for left in record.get("left_on_server", [])
             if left["folder"] == "input"}
    with ComfyClient(host_url) as client:
        history = client.history()
    count = {}
    for entry in history.values():
        for node in entry["prompt"][2].values():
            name = node["inputs"].get("image") if node["class_type"] == "LoadImage" else None
            if isinstance(name, str) and name in owner:
                count[owner[name]] = count.get(owner[name], 0) + 1
    return count


@pytest.mark.server
def test_two_shards_on_two_servers_do_every_item_once_and_merge_complete(sd15_workflows, tmp_path_factory, tmp_path,
                                                                         capsys):
    hosts = [start_server(f"shard-{k}", tmp_path_factory) for k in (1, 2)]
    try:
        photos = photo_folder(tmp_path / "photos", "shards")
        out = tmp_path / "out"
        common = [photos, "-o", out, "--workflow", sd15_workflows["photo"], *FAST, *ON_STANDINS, "-q"]
        started = time.monotonic()
        procs = [cli_process([*common, "--server", host.url, "--shard", f"{k}/2"]) for k, host in enumerate(hosts, 1)]
        ends = [proc.communicate(timeout=BOUND) for proc in procs]
        seconds = time.monotonic() - started
        for proc, (_, err) in zip(procs, ends):
            assert proc.returncode == cli.EXIT_OK, err[-3000:]
        names = sorted(p.name for p in photos.glob("*.png"))
        sizes = [len(shards.split(batch.plan_entries([photos], out), k, 2)) for k in (1, 2)]
        assert sum(sizes) == PHOTOS and min(sizes) > 0
        for k, (_, err) in enumerate(ends, 1):
            assert f"shard {k}/2: {sizes[k - 1]} of {PHOTOS} items" in err

        # every item done exactly once over both: in one journal, on that shard's server, one prompt there
        journals = [journal_of(out, k, 2) for k in (1, 2)]
        assert not set(journals[0]) & set(journals[1])
        assert sorted([*journals[0], *journals[1]]) == names
        for k, (host, items) in enumerate(zip(hosts, journals), 1):
            assert len(items) == sizes[k - 1] and all(r["status"] == "done" for r in items.values())
            assert {r["outcome"]["server"] for r in items.values()} == {host.url}
            assert prompts_per_key(host.url, items) == {key: 1 for key in items}
            other = hosts[2 - k]
            assert prompts_per_key(other.url, items) == {}  # never sent to the other shard's server
            manifest = json.loads((out / f"manifest.shard-{k}-of-2.json").read_text())
            assert manifest["shard"]["index"] == k and manifest["shard"]["count"] == 2
            assert manifest["shard"]["total"] == PHOTOS and len(manifest["shard"]["planned"]) == sizes[k - 1]
            assert len(manifest["items"]) == sizes[k - 1]
        assert sorted(p.name for p in out.glob("*.png")) == names
        assert not (out / batch.JOURNAL_NAME).exists() and not (out / batch.MANIFEST_NAME).exists()

        # a shard run again does nothing twice: every item already done by the earlier run
        code, stdout, err = run(["anonymize", *common, "--server", hosts[0].url, "--shard", "1/2"], capsys)
        assert code == cli.EXIT_OK, err
        assert f"{sizes[0]} done ({sizes[0]} of them by an earlier run)" in stdout
        assert prompts_per_key(hosts[0].url, journal_of(out, 1, 2)) == {key: 1 for key in journals[0]}

        code, stdout, err = run(["merge-manifests", out], capsys)
        assert code == cli.EXIT_OK, stdout + err
        merged = json.loads((out / batch.MANIFEST_NAME).read_text())
        assert len(merged["items"]) == PHOTOS and merged["merged"]["complete"]
        assert sorted(Path(r["output"]).name for r in merged["items"]) == names
        assert all(r["status"] == "done" and r["audit"].startswith("passed") for r in merged["items"])
        assert f"merged 2 of 2 shard manifest(s): {PHOTOS} item(s)" in stdout

        (out / "manifest.shard-2-of-2.json").unlink()
        code, stdout, err = run(["merge-manifests", out, "-o", tmp_path / "partial.json"], capsys)
        assert code == cli.EXIT_FAILED
        assert "MISSING: shard 2/2: no manifest" in stdout
        assert f"MISSING: {sizes[1]} of the job's {PHOTOS} planned item(s) belong to the missing shard(s)" in stdout
        assert len(json.loads((tmp_path / "partial.json").read_text())["items"]) == sizes[0]
        print(f"\n[shards] {sizes[0]} + {sizes[1]} items on two servers as two processes in {seconds:.0f} s")
    finally:
        for host in hosts:
            host.stop()
