"""What the audit of the saved photo costs per face, beside what the anonymization costs per face.

Audit: the audit node's own code (revpers_core.faces.audit) on InsightFace's group photo (six real
faces) against a changed copy, with the real dlib detector and descriptor and the stand-in buffalo_l
(SCRFD + ArcFace, the real files' architecture and size), timed in this process. Anonymization: the
quick start's job run by the CLI on a local ComfyUI (shipped photo workflow, six marker faces), its
wall time from queueing to the saved photo, by default on the SD1.5 stand-ins with the stand-in
settings (3 steps, 128 px crops): a lower bound, since a real run takes 100 steps at 1024 px. Not a
test: timings depend on the machine.

    .venv/bin/python benchmarks/bench_audit_cost.py [--repeat 3] [--arch sd15|sdxl] [--steps 3]
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def audit_seconds(repeat):
    import numpy as np
    from faces_fixtures import insightface_image, to_float, write_standin_pack
    from revpers_core.faces import audit, recognizers
    from revpers_core.faces.analysis import load_analyser

    if not recognizers.dlib_available():
        sys.exit("dlib is not installed: pip install dlib-bin face-recognition-models")
    with tempfile.TemporaryDirectory() as tmp:
        analyser = load_analyser(str(write_standin_pack(Path(tmp) / "buffalo_l")), provider="CPU", det_size=640)
        auditor = audit.make_auditor(analyser, 0.30, 0.60)
        original = to_float(insightface_image("t1.jpg"))
        final = np.ascontiguousarray(original[:, ::-1])  # every face moved: all found, all compared
        audit.audit(auditor, [original], [final])  # warm-up (model loading)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            report = audit.audit(auditor, [original], [final])
            times.append(time.perf_counter() - t0)
    return times, len(report.faces), original.shape


def anonymize_seconds(repeat, arch, steps):
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "revpers_cli", "anonymize", "--example", "group", "-o",
                   str(Path(tmp) / "out.png"), "--standin-weights", "--standin-arch", arch, "--steps", str(steps),
                   "--models", str(REPO / ".host" / "test-models"), "-q", "--no-retry"]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"the anonymization run failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            times.append(float(re.search(r"wrote .* \(([\d.]+) s\)", done.stdout).group(1)))
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    audit_times, faces, shape = audit_seconds(a.repeat)
    audit_face = min(audit_times) / faces
    print(f"[audit] {shape[1]}x{shape[0]} photo, {faces} faces, ArcFace (stand-in) + dlib: "
          f"best {min(audit_times):.2f} s of {a.repeat} -> {audit_face:.3f} s per face")
    run_times = anonymize_seconds(a.repeat, a.arch, a.steps)
    run_face = min(run_times) / 6
    print(f"[anonymize] quick-start job, {a.arch} stand-ins, {a.steps} steps, 128 px crops, 6 faces "
          f"(a fresh local server each time: model loading and the audit included): best {min(run_times):.1f} s of {a.repeat} -> {run_face:.2f} s per face")
    print(f"[ratio] audit / anonymization per face: {audit_face / run_face:.3f} "
          f"(at {a.steps} steps; the real job runs 100 steps at 1024 px, so the audit's share is smaller there)")


if __name__ == "__main__":
    main()
