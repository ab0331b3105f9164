"""The FaceID adapter files: their formats (safetensors, a torch.save zip archive, an older pickle stream)
and reading them without running any code they might contain, whole or only the identity projections."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Dict, Mapping

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WHERE_TO_GET = ("get ip-adapter-faceid_sdxl.bin (SDXL) or ip-adapter-faceid_sd15.bin (SD1.5) from "
                "https://huggingface.co/h94/IP-Adapter-FaceID and put it in models/ipadapter")

# torch enforces weights_only safely from 2.6 on: before it, a crafted pickle could run code through
# torch.load(weights_only=True) (CVE-2025-32434). The pack's pyproject allows older torch, so a pickled
# adapter is only read on a torch that is new enough; safetensors never runs code on any.
SAFE_PICKLE_TORCH = (2, 6)


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string ("2.5.1+cu121" -> (2, 5)); (0, 0) when unreadable."""
    found = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def pickle_loading_refusal(name: str, torch_version: str | None = None) -> str | None:
    """Why a pickled (.bin) adapter must not be loaded on this torch, or None when it may: the one place that
    decides whether torch.load(weights_only=True) can be trusted here."""
    version = torch.__version__ if torch_version is None else torch_version
    if _release(version) >= SAFE_PICKLE_TORCH:
        return None
    need = ".".join(map(str, SAFE_PICKLE_TORCH))
    return (f"FaceID adapter '{name}' was not loaded: it is a pickle (.bin), and torch {version} does not enforce "
            f"weights_only safely (CVE-2025-32434: before torch {need} a crafted .bin can run code even when loaded "
            f"with weights_only=True). Upgrade torch to {need} or later (pip install -U \"torch>={need}\"), or "
            f"use a .safetensors conversion of the adapter, which is safe on any torch.")


def _refused_pickle(name: str, err: Exception) -> ValueError:
    found = re.search(r"(Unsupported global: GLOBAL [^\s]+|Unsupported operand [^\s]+|GLOBAL [^\s]+)", str(err))
    what = f": {found.group(1).rstrip('.')}" if found else ""
    return ValueError(
        f"FaceID adapter '{name}' was refused: it is not a plain tensor checkpoint that can be loaded safely (torch's "
        f"weights-only loader rejected it{what}). A pickle holding other Python objects could run code when loaded, "
        f"so nothing in it was executed. Use a trusted file "
        f"({WHERE_TO_GET}) or a .safetensors conversion.")


def _file_layout(path: str) -> str:
    """"safetensors" (read by key), "zip" (a torch.save archive, memory-mapped) or "stream" (a pickle stream
    of older torch, which is only read whole)."""
    if path.lower().endswith(".safetensors"):
        return "safetensors"
    with open(path, "rb") as f:
        return "zip" if f.read(2) == b"PK" else "stream"


def _read_ip_tensors(path: str, numbers) -> Dict[int, Dict[str, torch.Tensor]]:
    """{n: {"to_k_ip", "to_v_ip"}} of cross-attention layers ``numbers`` from the file: a safetensors file
    reads only those tensors; a zip-format torch file is memory-mapped, so only their bytes are read; a
    pickle stream is read whole."""
    keys = {n: {w: f"{n}.{w}.weight" for w in ("to_k_ip", "to_v_ip")} for n in numbers}
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {n: {w: f.get_tensor(f"ip_adapter.{k}") for w, k in ks.items()} for n, ks in keys.items()}
        except Exception as err:  # a damaged file: what safetensors says, as one error of ours
            raise ValueError(f"{err.__class__.__name__}: {err}") from None
    state = _load_state(path, mmap=True)
    try:
        section = state["ip_adapter"] if "ip_adapter" in state else {
            k[len("ip_adapter."):]: v for k, v in state.items() if str(k).startswith("ip_adapter.")}
        return {n: {w: section[k] for w, k in ks.items()} for n, ks in keys.items()}
    except (KeyError, TypeError) as err:
        raise ValueError(f"missing {err}") from None


def _load_state(path: str, mmap: bool = False) -> Mapping:
    name = os.path.basename(path)
    lower = name.lower()
    if lower.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"FaceID adapter '{name}' could not be read as safetensors: it is corrupt or truncated "
                             f"({err}). Download it again; {WHERE_TO_GET}.") from None
    if lower.endswith(PICKLE_SUFFIXES):
        refusal = pickle_loading_refusal(name)
        if refusal:
            raise ValueError(refusal)
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive (PK..); older torch a pickle stream, which starts with PROTO (0x80).
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated (not a torch "
                             f"checkpoint: neither a zip archive nor a pickle stream). Download it again; {WHERE_TO_GET}.")
        try:
            # weights_only: tensors and containers only; any other global is refused, never executed.
            # mmap: tensors read from the file when touched (zip archives only; a read in full where it fails)
            if mmap and head.startswith(b"PK"):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:
                    pass
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights_only" in str(err) or "Unsupported global" in str(err) or "global" in str(err).lower():
                raise _refused_pickle(name, err) from None
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated ({err}). "
                             f"Download it again; {WHERE_TO_GET}.") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as err:
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated "
                             f"({err.__class__.__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
                             f"Download it again; {WHERE_TO_GET}.") from None
    raise ValueError(f"FaceID adapter '{name}' has an unsupported file type: expected .bin (torch pickle) or "
                     f".safetensors.")
