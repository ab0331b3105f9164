"""Checks of the Python environment the pack runs in, reported once at load time."""
from importlib import metadata

# Each of these distributions installs the same `onnxruntime` module. With two of them installed,
# the one installed last has overwritten the other's files, and which execution providers work is
# an accident of install order.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-silicon")


def onnxruntime_clash():
    """A readable warning when more than one onnxruntime distribution is installed, else None."""
    found = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    if len(found) < 2:
        return None
    keep = "onnxruntime-gpu" if any(f.startswith("onnxruntime-gpu") for f in found) else found[0].split("==")[0]
    return (
        f"several onnxruntime packages are installed ({', '.join(found)}); they share one `onnxruntime` "
        f"module and overwrite each other. Keep one: pip uninstall -y {' '.join(f.split('==')[0] for f in found)} "
        f"&& pip install {keep}"
    )
