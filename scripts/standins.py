#!/usr/bin/env python3
"""Generate stand-in model files into a ComfyUI-style models folder: the same as
`python -m revpers_core.standins` (where the generators live, so they also work from an installed pack),
kept so that existing commands and imports go on working.

    python scripts/standins.py --models DIR [--seed 0] [--sdxl] [--sd15] [--faceid] [--buffalo] [--all]
                               [--reuse OTHER_DIR ...] [--verify]
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from revpers_core.standins import (  # noqa: E402  (the names importers of this script use)
    BUFFALO_DIR, CHECKPOINTS, FACEID, generate, generate_buffalo, generate_checkpoint, generate_faceid, is_current,
    verify_checkpoint)
from revpers_core.standins.__main__ import main  # noqa: E402

__all__ = ["BUFFALO_DIR", "CHECKPOINTS", "FACEID", "generate", "generate_buffalo", "generate_checkpoint",
           "generate_faceid", "is_current", "verify_checkpoint", "main"]

if __name__ == "__main__":
    sys.exit(main())
