"""Time one FlatQuant layer's training steps on the GPU and report what synchronises or dominates.

Usage (GPU machine): python3 scripts/profile_flatquant_step.py $FPTQ_GGUF [layer]
"""

from __future__ import annotations

import sys
import time
import warnings

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


def main() -> None:
    model, tok = fptquant.load_model(sys.argv[1], device="cuda")
    index = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    adapter = get_adapter(model)
    recipe = fptquant.Recipe(method="flatquant")
    windows = calibration_windows(tokenize(tok, read_text("wikitext2-valid")), 32, 2048, 0).cuda()
    quantize_model_structure(model, adapter, recipe)
    captured = capture_first_layer_inputs(model, adapter, windows)
    inputs = torch.cat(captured.hidden).float()
    layer = adapter.layers()[index]
    targets = layer_outputs(layer, inputs, captured.kwargs)
    for amp in (True, False):
        layers = FlatQuantLayers(adapter, recipe, FlatQuantOptions(amp=amp))
        layers.build(index, layer)
        layers.initialize(index, layer, inputs, captured.kwargs)
        layers.attach(index, layer)
        s = LayerwiseSettings(epochs=1, amp=amp)
        train_layer(layers, index, layer, inputs, targets, captured.kwargs, s, Bar())  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_layer(layers, index, layer, inputs, targets, captured.kwargs, LayerwiseSettings(epochs=2, amp=amp), Bar())
        torch.cuda.synchronize()
        steps = 2 * len(inputs) // s.batch_size
        print(f"amp={amp}: {(time.perf_counter() - t0) / steps * 1e3:.1f} ms/step", flush=True)
        if amp:
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_layer(layers, index, layer, inputs[:4], targets[:4], captured.kwargs, LayerwiseSettings(epochs=1), Bar())
            torch.cuda.set_sync_debug_mode(0)
            print(f"synchronising calls in one step: {len(caught)}")
            for w in caught[:6]:
                print("  ", str(w.message)[:200])
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                train_layer(layers, index, layer, inputs[:16], targets[:16], captured.kwargs, LayerwiseSettings(epochs=1), Bar())
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
        layers.detach(index, layer)


if __name__ == "__main__":
    main()
