"""Calibration passes over token windows."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError
from ..fakequant.wrap import set_observing
from ..math.quantizer import Quantizer
from ..models.base import model_device


def has_static_quantizers(model: nn.Module) -> bool:
    return any(isinstance(m, Quantizer) and m.spec.enabled and not m.spec.dynamic for m in model.modules())


@torch.no_grad()
def run_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, desc: str = "forward") -> None:
    device = model_device(model)
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, leave=False):
        model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)


def calibrate_static_ranges(model: nn.Module, calibration: torch.Tensor | None, batch_size: int = 1) -> None:
    """Set every static quantizer's range from min/max over the calibration windows (if any are static)."""
    if not has_static_quantizers(model):
        return
    if calibration is None or len(calibration) == 0:
        raise DataError("static activation quantizers need calibration data")
    set_observing(model, True)
    run_windows(model, calibration, batch_size, desc="calibrating static ranges")
    set_observing(model, False)
