"""Files that survive a crash: written whole or not at all, and on the disk before we say they are.

A file is written to a temporary name of its own in the same folder (the process, the thread and a
random part in the name, so two writers never share one), flushed and fsynced, renamed over the target,
and the folder is fsynced so that the rename itself is on the disk. `sync` does the last two steps for a
file someone else wrote (an output photo or clip). `sha256` is the digest the journal records for an
output when it was audited, so a resumed job can tell that its bytes are still those.
"""
import hashlib
import os
import threading
import uuid
from pathlib import Path

__all__ = ["write_bytes", "write_text", "sync", "sha256"]


def _sync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened for reading (some file systems): the rename stands
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path, data):
    """Write `data` to `path` atomically and durably (see the module's notes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}.part")
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    _sync_folder(path.parent)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def sync(path):
    """Put a file that was written by other code on the disk: the file, then its folder."""
    path = Path(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    _sync_folder(path.parent)


def sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
