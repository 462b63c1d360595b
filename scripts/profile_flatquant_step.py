"""Time one FlatQuant layer's training steps on the GPU: compiled, CUDA-graphed, or both (ms per step).

Usage (GPU machine): python3 scripts/profile_flatquant_step.py $FPTQ_GGUF [layer]
"""

from __future__ import annotations

import sys
import time

import torch

import fptquant
from fptquant.data.text import calibration_windows, read_text, tokenize
from fptquant.fakequant.wrap import quantize_model_structure
from fptquant.methods.flatquant import FlatQuantLayers, FlatQuantOptions
from fptquant.models import get_adapter
from fptquant.pipelines.layerwise import LayerwiseSettings, layer_outputs, train_layer
from fptquant.pipelines.sequential import capture_first_layer_inputs


class Bar:
    def set_postfix(self, **kw):
        pass


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    model, tok = fptquant.load_model(sys.argv[1], device="cuda")
    index = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    adapter = get_adapter(model)
    recipe = fptquant.Recipe(method="flatquant")
    windows = calibration_windows(tokenize(tok, read_text("wikitext2-valid")), 64, 2048, 0).cuda()
    quantize_model_structure(model, adapter, recipe)
    captured = capture_first_layer_inputs(model, adapter, windows)
    inputs, kwargs = torch.cat(captured.hidden).float(), captured.kwargs
    layer = adapter.layers()[index]
    targets = layer_outputs(layer, inputs, kwargs)
    layers = FlatQuantLayers(adapter, recipe, FlatQuantOptions())
    layers.build(index, layer)
    layers.initialize(index, layer, inputs, kwargs)
    layers.attach(index, layer)
    steps = len(inputs) // 4
    for compiled, graphed in ((True, False), (False, True), (True, True)):
        s = LayerwiseSettings(epochs=1, compile=compiled, cuda_graph=graphed)
        first = timed(lambda s=s: train_layer(layers, index, layer, inputs, targets, kwargs, s, Bar()))
        s = LayerwiseSettings(epochs=3, compile=compiled, cuda_graph=graphed)
        run = timed(lambda s=s: train_layer(layers, index, layer, inputs, targets, kwargs, s, Bar()))
        print(f"compile={compiled} cuda_graph={graphed}: first epoch {first:.1f} s, then "
              f"{run / (3 * steps) * 1e3:.2f} ms/step", flush=True)  # fmt: skip
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    layers.detach(index, layer)


if __name__ == "__main__":
    main()
