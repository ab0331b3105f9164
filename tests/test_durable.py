"""The CLI's records survive what can happen to them: a journal or manifest is written whole or not at
all, by any number of threads at once, and a judging node that gives no verdict data fails its item
(the CLI never falls back to reading the text a node shows)."""
import json
import os
import threading

import pytest

from revpers_cli import durable, workflow
from revpers_cli.api import RunResult
from revpers_cli.job import Job, PhotoItem, Settings


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_nothing_beside_it(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    durable.write_text(path, '{"items": ["old"]}')

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        durable.write_text(path, '{"items": ["new", "and longer"]}')
    assert path.read_text() == '{"items": ["old"]}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no part file left


def test_writers_in_many_threads_never_mix_their_files(tmp_path):
    path = tmp_path / "journal.json"
    texts = [json.dumps({"writer": i, "items": list(range(2000 + i))}) for i in range(8)]
    errors = []

    def write(text):
        try:
            for _ in range(25):
                durable.write_text(path, text)
                json.loads(path.read_text())  # whatever a reader sees is one writer's whole file
        except Exception as e:  # noqa: BLE001 (collected for the assertion below)
            errors.append(e)
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_the_recorded_digest_tells_a_changed_output(tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"anonymized pixels")
    durable.sync(out)
    before = durable.sha256(out)
    out.write_bytes(b"anonymized pixels" + b"appended")
    assert durable.sha256(out) != before


def test_a_judging_node_without_verdict_data_fails_the_item(tmp_path):
    """The shipped photo workflow's judges answered with text only (as an older pack would): the item
    fails and names them, whatever the text says."""
    graph = workflow.load_workflow(workflow.find_workflow(None, "photo"))
    judges = {nid: graph[nid]["class_type"] for kind in workflow.VERDICTS for nid in workflow.nodes_of(graph, kind)}
    assert "RevPersAudit" in judges.values()
    text_only = RunResult("p", "success", outputs={nid: {"text": ["RESULT: PASSED"]} for nid in judges})
    job = Job(PhotoItem(tmp_path / "in.png", tmp_path / "out.png"), Settings({"photo": graph}), client=None)
    outcome = job.verdict(text_only, graph, None, None)
    assert outcome.status == "failed" and "no verdict from" in outcome.message
    assert all(f"node {nid} ({kind})" in outcome.message for nid, kind in judges.items())
    assert workflow.missing_verdicts(text_only, graph) and not (tmp_path / "out.png").exists()
