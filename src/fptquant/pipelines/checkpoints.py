"""Per-layer training checkpoints, so an interrupted or diverged calibration resumes where it stopped.

A store is a directory keyed by a fingerprint of everything the result depends on (model, recipe
options that affect training, calibration tokens). Each finished layer is written atomically as
``layer_XXX.safetensors``; a rerun with the same fingerprint loads those layers instead of training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..wheels import cache_dir

log = logging.getLogger(__name__)
META_FILE = "fingerprint.json"


def fingerprint(model: torch.nn.Module, settings: dict, windows: torch.Tensor | None) -> str:
    """A short hash of the model (reference and a weight checksum), the settings and the calibration ids."""
    h = hashlib.sha256()
    h.update(str(getattr(model, "fptquant_source", type(model).__name__)).encode())
    with torch.no_grad():
        for p in list(model.parameters())[:4]:
            # on the CPU: a GPU reduction's order (hence its last digits) is not guaranteed between runs,
            # and the key should not depend on the device that calibrated
            w = p.detach().cpu().double()
            h.update(f"{tuple(p.shape)}:{w.sum().item():.10e}:{w.abs().sum().item():.10e}".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    if windows is not None:
        h.update(windows.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class CheckpointStore:
    """Layer checkpoints under ``root``; refuses a directory that belongs to another fingerprint."""

    def __init__(self, root: str | Path, key: str, description: dict):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / META_FILE
        if meta.is_file():
            recorded = json.loads(meta.read_text()).get("key")
            if recorded != key:
                raise ConfigError(
                    f"checkpoint directory {self.root} holds another calibration (fingerprint {recorded}, "
                    f"this one {key}); choose another directory or delete it"
                )
        else:
            meta.write_text(json.dumps({"key": key, **description}, indent=2, default=str) + "\n")

    @classmethod
    def default(cls, method: str, key: str, description: dict) -> CheckpointStore:
        return cls(cache_dir() / "calibration" / f"{method}-{key}", key, description)

    @classmethod
    def for_run(
        cls, method: str, model: torch.nn.Module, settings: dict, windows: torch.Tensor | None, directory: str | None
    ) -> CheckpointStore:
        """The store of one training run: ``directory`` if given, else the cache, keyed by its fingerprint."""
        key = fingerprint(model, settings, windows)
        description = {"model": getattr(model, "fptquant_source", None), **settings}
        if directory:
            return cls(directory, key, description)
        return cls.default(method, key, description)

    def _path(self, index: int | str) -> Path:
        """A layer's checkpoint (int) or a named one (str, e.g. a whole-model stage)."""
        name = f"layer_{index:03d}" if isinstance(index, int) else index
        return self.root / f"{name}.safetensors"

    def load(self, index: int | str) -> dict[str, torch.Tensor] | None:
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            return load_file(path)
        except Exception as e:  # a truncated file from a killed run: retrain this layer
            log.warning("ignoring unreadable checkpoint %s (%s); the layer is trained again", path, e)
            return None

    def save(self, index: int | str, state: dict[str, torch.Tensor]) -> None:
        tmp = self._path(index).with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
        os.replace(tmp, self._path(index))

    def completed(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.root.glob("layer_*.safetensors"))
