"""`python -m revpers_core ...` is the `revpers` command (see revpers_core/cli.py)."""
import sys

from .cli import main

sys.exit(main())
