"""Library-version recording for manifests, checkpoints and reports, defined once."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from . import __version__

#: distributions recorded by default: the project itself plus the libraries whose behaviour shapes the outputs
DEFAULT_PACKAGES = ("numpy", "h5py", "opencv-python-headless", "pillow", "pycocotools", "joblib", "torch",
                    "scikit-learn")


def library_versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str]:
    """``{"cocodag": ..., "python": ..., <distribution>: <version>}`` for the installed ``packages`` (absent ones
    are left out). Read from package metadata, so nothing heavy is imported."""
    out = {"cocodag": __version__, "python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
