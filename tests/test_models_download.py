"""The model registry and its downloader, against a real HTTP server on 127.0.0.1 (in a thread)
serving stand-in files: progress, sha256 verification, resumption, archives, and the messages a
user sees when something is missing or wrong."""
import dataclasses
import hashlib
import http.server
import io
import re
import threading
import zipfile

import pytest

from revpers_cli import cli, models
from revpers_cli.standins.faceid import write_faceid_bin


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the files of `root`, honours `Range: bytes=N-`, and counts the bytes it sends."""
    root = None
    sent = None
    ranges = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and self.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.sent[path.name] = self.sent.get(path.name, 0) + len(body)


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over tmp_path/served; `.url`, `.root`, `.sent` (bytes per file)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"root": root, "sent": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.root = root
    server.sent = handler.sent
    server.handler = handler
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def entry(name):
    return next(e for e in models.REGISTRY if e.name == name)


def serve_faceid_standin(served):
    """A stand-in FaceID .bin (the real format, random values) under the real file's name."""
    path = served.root / "ip-adapter-faceid_sdxl.bin"
    write_faceid_bin(path, arch="sd15", seed=0)  # the sd15 layout: same format, 97 MB instead of 1 GB
    data = path.read_bytes()
    return data, dataclasses.replace(entry("ip-adapter-faceid_sdxl.bin"),
                                     source=dataclasses.replace(entry("ip-adapter-faceid_sdxl.bin").source,
                                                                sha256=sha(data), size=len(data)),
                                     sha256=sha(data), size=len(data))


def test_registry_is_well_formed():
    names = [e.name for e in models.REGISTRY]
    assert names[:2] == ["sd_xl_base_1.0.safetensors", "ip-adapter-faceid_sdxl.bin"]
    assert {"det_10g.onnx", "w600k_r50.onnx"} <= set(names)
    for e in models.REGISTRY:
        assert e.source.url.startswith("https://")
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert e.folder.split("/")[0] in ("checkpoints", "ipadapter", "insightface")
    assert models.registry("my_sdxl.safetensors")[0].name == "my_sdxl.safetensors"
    assert not [e for e in models.registry("my_sdxl.safetensors") if e.name == models.DEFAULT_CHECKPOINT]


def test_check_names_every_missing_file_its_folder_and_source(tmp_path):
    missing = models.check(tmp_path)
    assert [m.name for m in missing] == [e.name for e in models.REGISTRY]
    text = models.describe_missing(missing)
    for e in models.REGISTRY:
        assert e.name in text and str(tmp_path / e.folder) in text and e.source.url in text
    # a file of the wrong size is reported as such
    (tmp_path / "insightface/models/buffalo_l").mkdir(parents=True)
    (tmp_path / "insightface/models/buffalo_l/det_10g.onnx").write_bytes(b"x" * 10)
    det = [m for m in models.check(tmp_path) if m.name == "det_10g.onnx"][0]
    assert det.reason == "10 bytes, expected 16923827"


def test_check_looks_in_every_models_folder_and_the_yaml_folders(tmp_path):
    """What the CLI asks before it starts a local host: its own models folder, the one given with --models,
    and the folders of the host's extra_model_paths.yaml (by top folder, sub-folders kept)."""
    faceid, det = (next(e for e in models.REGISTRY if e.name == n) for n in ("ip-adapter-faceid_sdxl.bin", "det_10g.onnx"))
    own, given, yaml_faceid, yaml_insightface = (tmp_path / n for n in ("own", "given", "yaml_ip", "yaml_if"))
    extra = {"ipadapter": [yaml_faceid], "insightface": [yaml_insightface]}
    missing = models.check([own, given], [faceid, det], extra_dirs=extra)
    assert [(m.name, m.folder, m.reason) for m in missing] == [
        (faceid.name, own / "ipadapter", "missing"), (det.name, own / det.folder, "missing")]
    (yaml_faceid / faceid.name).parent.mkdir(parents=True)
    (yaml_faceid / faceid.name).write_bytes(b"adapter")  # no published size: present is enough
    (given / det.folder).mkdir(parents=True)
    (given / det.folder / det.name).write_bytes(b"x" * 10)  # the wrong size: reported where it is
    missing = models.check([own, given], [faceid, det], extra_dirs=extra)
    assert [(m.name, m.folder, m.reason) for m in missing] == [(det.name, given / det.folder, "10 bytes, expected 16923827")]
    right = yaml_insightface / "models/buffalo_l" / det.name  # the yaml's insightface folder + models/buffalo_l
    right.parent.mkdir(parents=True)
    with open(right, "wb") as f:
        f.truncate(det.size)
    assert models.check([own, given], [faceid, det], extra_dirs=extra) == []
    # with verify, the right size is not enough: of the copies found, the first is the one reported
    assert [(m.folder, m.reason) for m in models.check([own, given], [det], verify=True, extra_dirs=extra)] == [
        (given / det.folder, "10 bytes, expected 16923827")]
    (given / det.folder / det.name).unlink()
    assert [(m.folder, m.reason) for m in models.check([own, given], [det], verify=True, extra_dirs=extra)] == [
        (right.parent, "sha256 differs from the published file")]


def test_download_shows_progress_verifies_and_installs(tmp_path, served, capfd):
    data, faceid = serve_faceid_standin(served)
    target_dir = tmp_path / "models"
    installed = models.download(target_dir, entries=[faceid], base_url=served.url, log=lambda s: None)
    target = target_dir / "ipadapter" / "ip-adapter-faceid_sdxl.bin"
    assert installed == [target]
    assert target.read_bytes() == data
    assert not list(target.parent.glob("*.part"))
    assert models.check(target_dir, [faceid], verify=True) == []
    err = capfd.readouterr().err
    assert "ip-adapter-faceid_sdxl.bin" in err and "100%" in err
    assert re.search(r"9[0-9]\.\d+M", err), err[-500:]  # the bar knows the total (~92 MiB)
    # nothing left to do: a second call fetches nothing
    assert models.download(target_dir, entries=[faceid], base_url=served.url, progress=False, log=lambda s: None) == []
    assert served.sent["ip-adapter-faceid_sdxl.bin"] == len(data)


def test_checksum_mismatch_deletes_the_download_and_says_so(tmp_path, served):
    data, _ = serve_faceid_standin(served)
    real = entry("ip-adapter-faceid_sdxl.bin")  # the published sha256: the stand-in cannot match it
    with pytest.raises(models.ChecksumError) as e:
        models.download(tmp_path / "m", entries=[real], base_url=served.url, progress=False, log=lambda s: None)
    message = str(e.value)
    assert "is not the published file" in message and sha(data) in message and real.sha256 in message
    assert "deleted; nothing was installed" in message
    assert not list((tmp_path / "m").rglob("ip-adapter-faceid_sdxl.bin*"))


def test_size_mismatch_is_reported(tmp_path, served):
    (served.root / "ip-adapter-faceid_sdxl.bin").write_bytes(b"0123456789")
    wrong = dataclasses.replace(entry("ip-adapter-faceid_sdxl.bin"),
                                source=dataclasses.replace(entry("ip-adapter-faceid_sdxl.bin").source, size=11))
    with pytest.raises(models.ChecksumError, match="it has 10 bytes, the published file has 11"):
        models.download(tmp_path, entries=[wrong], base_url=served.url, progress=False, log=lambda s: None)
    assert not list(tmp_path.rglob("*.part"))


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, served):
    data, faceid = serve_faceid_standin(served)
    part = tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:40_000_000])
    models.download(tmp_path, entries=[faceid], base_url=served.url, progress=False, log=lambda s: None)
    assert (tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin").read_bytes() == data
    assert served.sent["ip-adapter-faceid_sdxl.bin"] == len(data) - 40_000_000
    assert not part.exists()


def test_a_server_without_ranges_restarts_the_download(tmp_path, served):
    data, faceid = serve_faceid_standin(served)
    served.handler.ranges = False
    part = tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage from an older attempt")
    models.download(tmp_path, entries=[faceid], base_url=served.url, progress=False, log=lambda s: None)
    assert (tmp_path / "ipadapter" / "ip-adapter-faceid_sdxl.bin").read_bytes() == data
    assert served.sent["ip-adapter-faceid_sdxl.bin"] == len(data)


def _buffalo_zip(files, inner=""):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(inner + name, content)
    return buf.getvalue()


def _buffalo_entries(archive, files, member_sha=None):
    source = dataclasses.replace(models.REGISTRY[2].source, sha256=sha(archive), size=len(archive))
    out = []
    for e in models.REGISTRY:
        if e.group == "buffalo_l":
            content = files[e.name]
            out.append(dataclasses.replace(e, source=source, size=len(content),
                                           sha256=(member_sha or {}).get(e.name, sha(content))))
    return out


def test_the_buffalo_l_archive_is_verified_and_unpacked(tmp_path, served):
    files = {e.name: f"stand-in {e.name}".encode() * 100 for e in models.REGISTRY if e.group == "buffalo_l"}
    archive = _buffalo_zip(files, inner="buffalo_l/")  # a folder inside the zip is flattened
    (served.root / "buffalo_l.zip").write_bytes(archive)
    entries = _buffalo_entries(archive, files)
    installed = models.download(tmp_path, entries=entries, base_url=served.url, progress=False, log=lambda s: None)
    folder = tmp_path / "insightface" / "models" / "buffalo_l"
    assert sorted(p.name for p in installed) == sorted(files)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert not (tmp_path / "insightface" / "models" / "buffalo_l.zip").exists()
    assert models.check(tmp_path, entries, verify=True) == []
    assert served.sent == {"buffalo_l.zip": len(archive)}  # one archive for five files


def test_a_bad_member_of_the_archive_installs_nothing(tmp_path, served):
    files = {e.name: e.name.encode() for e in models.REGISTRY if e.group == "buffalo_l"}
    archive = _buffalo_zip(files)
    (served.root / "buffalo_l.zip").write_bytes(archive)
    entries = _buffalo_entries(archive, files, member_sha={"w600k_r50.onnx": "0" * 64})
    models_dir = tmp_path / "m"
    with pytest.raises(models.ChecksumError, match="w600k_r50.onnx inside buffalo_l.zip"):
        models.download(models_dir, entries=entries, base_url=served.url, progress=False, log=lambda s: None)
    folder = models_dir / "insightface" / "models" / "buffalo_l"
    assert not folder.exists() or not any(folder.iterdir())
    assert not list(models_dir.rglob("*.zip*")) and not list(models_dir.rglob(".unpack-*"))


def test_http_errors_are_readable(tmp_path, served):
    with pytest.raises(models.DownloadError, match=r"downloading http://127\.0\.0\.1:\d+/ip-adapter-faceid_sdxl\.bin "
                       r"failed: HTTP 404"):
        models.download(tmp_path, only=["ip-adapter-faceid_sdxl.bin"], base_url=served.url, progress=False,
                        log=lambda s: None)
    with pytest.raises(ValueError, match="unknown model file"):
        models.download(tmp_path, only=["nope.bin"], log=lambda s: None)


def test_cli_models_check_lists_what_is_missing(tmp_path, capsys):
    code = cli.main(["models", "--models", str(tmp_path), "--check"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_MISSING
    assert "7 model file(s) missing" in err
    for e in models.REGISTRY:
        assert e.name in err and e.source.url in err


def test_cli_models_download_from_a_mirror_rejects_a_wrong_file(tmp_path, served, capsys):
    serve_faceid_standin(served)
    code = cli.main(["models", "--models", str(tmp_path / "m"), "--only", "ip-adapter-faceid_sdxl.bin",
                     "--source-base", served.url, "-q"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert "error: the download of ip-adapter-faceid_sdxl.bin" in err and "is not the published file" in err
    assert not list((tmp_path / "m").rglob("ip-adapter-faceid_sdxl.bin*"))


def test_cli_models_only_rejects_unknown_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "--models", str(tmp_path), "--only", "nope.bin"])
    assert e.value.code == cli.EXIT_USAGE
    assert "--only nope.bin: unknown" in capsys.readouterr().err
