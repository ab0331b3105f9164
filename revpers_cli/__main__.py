"""`python -m revpers_cli ...` is the `revpers` command (see revpers_cli/cli.py)."""
import sys

from .cli import main

sys.exit(main())
