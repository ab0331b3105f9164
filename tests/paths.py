"""Where the tests find the repository, the ComfyUI host, the oracle and their artifacts."""
import os
from pathlib import Path

from revpers_cli.host import default_comfyui_dir

REPO = Path(__file__).resolve().parents[1]
HOST = default_comfyui_dir()  # $COMFYUI_DIR, else .host/comfyui-$REVPERS_HOST (default 0.3.75)
# the reference's numbers on tiny random weights (tests/data/oracle/README.md): part of the repository
ORACLE = REPO / "tests" / "data" / "oracle"
ARTIFACTS = Path(os.environ.get("REVPERS_ARTIFACTS") or REPO / "artifacts")
# More arguments for the servers the web UI tests open, e.g. another front end for a check by hand:
# REVPERS_UI_SERVER_ARGS="--front-end-root /path/to/comfyui_frontend_package/static"
UI_SERVER_ARGS = os.environ.get("REVPERS_UI_SERVER_ARGS", "").split()


def artifact_dir(area):
    """A folder for pictures and logs a test leaves behind for people to look at."""
    path = ARTIFACTS / area
    path.mkdir(parents=True, exist_ok=True)
    return path
