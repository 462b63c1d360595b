"""The top-level verbs: quantize a model with a recipe, save the result, load it back."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config.recipe import Recipe
from ..data.text import DEFAULT_CALIB_TEXT, calibration_windows, read_text, tokenize
from ..errors import ConfigError, DataError, OutputExistsError
from ..methods import get_method
from ..models import get_adapter
from ..models.loading import load_model
from .calibration import has_static_quantizers

RECIPE_FILE = "recipe.json"
STATE_FILE = "fptquant_state.safetensors"
FORMAT_NAME = "fptquant-fakequant"
FORMAT_VERSION = 1


def prepare_calibration(data: torch.Tensor | str | None, tokenizer, recipe: Recipe) -> torch.Tensor:
    """Calibration windows ``(n, seqlen)`` from token windows, a text file or the bundled validation split."""
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.numel() == 0:
            raise DataError(
                f"calibration windows must be a non-empty (n, seqlen) tensor, got shape {tuple(data.shape)}"
            )
        return data.long()
    if tokenizer is None:
        raise DataError("a tokenizer is needed to turn calibration text into windows")
    ids = tokenize(tokenizer, read_text(data if data is not None else DEFAULT_CALIB_TEXT))
    return calibration_windows(ids, recipe.calib_samples, recipe.calib_seqlen, recipe.seed)


def quantize(
    model: nn.Module,
    recipe: Recipe | None = None,
    calibration_data: torch.Tensor | str | None = None,
    tokenizer=None,
) -> nn.Module:
    """Quantize ``model`` in place with ``recipe`` (default: RTN W4A4KV4) and return it.

    ``calibration_data`` is a ``(n, seqlen)`` tensor of token ids, a path to a text file, a bundled
    dataset name or ``None`` for the bundled WikiText-2 validation split (used only if the method needs it).
    """
    recipe = recipe or Recipe()
    adapter = get_adapter(model)
    _check_group_size(adapter, recipe)
    method = get_method(recipe.method)(recipe)
    torch.manual_seed(recipe.seed)
    recipe = method.recipe  # with the method's defaults filled in, so the saved recipe is explicit
    needs_data = method.requires_calibration()
    calibration = prepare_calibration(calibration_data, tokenizer, recipe) if needs_data else None
    if recipe.model is None:
        recipe.model = getattr(model, "fptquant_source", None)
    calibration = calibration.to(next(model.parameters()).device) if calibration is not None else None
    method.apply(model, adapter, calibration)
    model.fptquant_recipe = recipe
    model.fptquant_method = method
    return model


def _check_group_size(adapter, recipe: Recipe) -> None:
    """Per-group weight scales need groups that tile every linear's input; say which one does not."""
    size = recipe.weight_spec().group_size
    if not size:
        return
    for role, linear in adapter.linears(adapter.layers()[0]).items():
        if linear.in_features % size:
            raise ConfigError(
                f"weight group size {size} does not divide the input size {linear.in_features} of {role}_proj; "
                "choose a divisor of every layer's input size"
            )


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a file, or into a non-empty directory unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {out} is not empty; pass --overwrite to replace its contents")


def prepare_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    out = Path(out_dir)
    check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_quantized(model: nn.Module, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the recipe (JSON) and the method's learned state (safetensors) to ``out_dir``."""
    recipe: Recipe | None = getattr(model, "fptquant_recipe", None)
    if recipe is None:
        raise ConfigError("this model was not quantized by fptquant.quantize; nothing to save")
    out = prepare_output_dir(out_dir, overwrite)
    state = {k: v.contiguous() for k, v in model.fptquant_method.saved_state(model).items()}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "method": recipe.method}
    save_file(state, out / STATE_FILE, metadata=meta)
    recipe.save(out / RECIPE_FILE)
    return out


def load_quantized(
    directory: str | Path, model: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> tuple[nn.Module, object, Recipe]:
    """Rebuild a model saved by :func:`save_quantized` (``model`` overrides the recorded reference)."""
    directory = Path(directory)
    if not (directory / RECIPE_FILE).is_file() or not (directory / STATE_FILE).is_file():
        raise ConfigError(f"{directory} is not an fptquant output directory (needs {RECIPE_FILE} and {STATE_FILE})")
    recipe = Recipe.load(directory / RECIPE_FILE)
    reference = model or recipe.model
    if reference is None:
        raise ConfigError("the saved recipe records no model; pass --model")
    _check_format(directory / STATE_FILE)
    loaded, tokenizer = load_model(reference, dtype=dtype, device=device)
    state = {k: v.to(device) for k, v in load_file(directory / STATE_FILE).items()}
    torch.manual_seed(recipe.seed)
    method = get_method(recipe.method)(recipe)
    method.restore(loaded, get_adapter(loaded), state)
    if has_static_quantizers(loaded) and not all(bool(v) for k, v in state.items() if k.endswith("calibrated")):
        raise ConfigError(f"{directory}: saved static quantizers were never calibrated")
    loaded.fptquant_recipe, loaded.fptquant_method = recipe, method
    return loaded, tokenizer, recipe


def _check_format(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_NAME:
        raise ConfigError(f"{path} was not written by fptquant (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ConfigError(
            f"{path} has format version {meta['format_version']}, newer than this fptquant reads ({FORMAT_VERSION})"
        )
