"""Greedy decoding with the one-token step captured as a CUDA graph (the prompt runs eagerly).

A decode step of a small batch is a few hundred short kernels; launched from Python they take longer
than they run. Captured once and replayed, the step costs its GPU time. What the step needs for that:
a cache with fixed addresses and a device-side position (transformers' ``StaticCache``, or
fptquant's INT4 cache built with ``unpadded=True``), explicit ``position_ids`` kept on the device,
and no host reads in the model's forward (QuantizedLinear keeps its host values cached).
"""

from __future__ import annotations

import torch
from torch import nn


class GraphedDecoder:
    """``decoder()`` advances every sequence by one greedy token and returns the ``(B, 1)`` token ids."""

    def __init__(self, model: nn.Module, cache, input_ids: torch.Tensor):
        self.model, self.cache = model, cache
        with torch.no_grad():
            out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.tokens = out.logits[:, -1:].argmax(-1)
        b, n = input_ids.shape
        self.positions = torch.full((b, 1), n, dtype=torch.long, device=input_ids.device)
        self.logits = out.logits[:, -1:].clone()
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """One eager step (also what the graph records)."""
        out = self.model(input_ids=self.tokens, past_key_values=self.cache, position_ids=self.positions, use_cache=True)
        self.logits.copy_(out.logits[:, -1:])
        self.tokens.copy_(self.logits.argmax(-1))
        self.positions.add_(1)
        return self.tokens

    def capture(self, warmup: int = 1) -> None:
        """Run ``warmup`` eager steps on a side stream (kernel compilation, lazy state), then record one step.
        The warm-up steps are real: they advance the sequences like any other step."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def __call__(self) -> torch.Tensor:
        if self.graph is None:
            return self.step()
        self.graph.replay()
        return self.tokens
