"""Text generation with a (packed) quantized model: chat template when the tokenizer has one, greedy by
default or sampling, streamed token by token for one prompt, batched (left padding) for several.
A model with 4-bit K/V quantizers generates with the real INT4 KV cache (:mod:`.kv_cache`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    chat: bool = True

    def generate_kwargs(self) -> dict:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}  # fmt: skip


def format_prompt(tokenizer, prompt: str, chat: bool) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def kv_cache_for(model, capacity: int):
    """The real INT4 KV cache when the model's K/V quantizers are 4-bit, else None (transformers' own
    cache, with the K/V fake-quantized at every step)."""
    from .kv_cache import int4_kv_cache

    try:
        return int4_kv_cache(model, capacity)
    except ConfigError:
        return None


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], options: GenerationOptions, stream=None) -> list[str]:
    """The continuations of ``prompts`` (text only, without the prompt). ``stream``: a file to print a
    single prompt's tokens to as they come (``sys.stdout`` in the CLI)."""
    if tokenizer is None:
        raise ConfigError("this checkpoint has no tokenizer files; generation needs one")
    if not prompts:
        raise ConfigError("no prompt given")
    kwargs = options.generate_kwargs()
    torch.manual_seed(options.seed)
    texts = [format_prompt(tokenizer, p, options.chat) for p in prompts]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not options.chat).to(device)
    streamer = None
    if stream is not None and len(prompts) == 1:
        from transformers import TextStreamer

        class _To(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                print(text, end="" if not stream_end else "\n", file=stream, flush=True)

        streamer = _To(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cache = kv_cache_for(model, batch["input_ids"].shape[1] + options.max_new_tokens)
    out = model.generate(
        **batch, **kwargs, streamer=streamer, pad_token_id=tokenizer.pad_token_id, past_key_values=cache
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def new_token_ids(
    model, tokenizer, prompts: list[str], options: GenerationOptions, int4_cache: bool = True
) -> list[list[int]]:
    """Greedy continuations as token ids (for comparing a packed model with its fake-quant twin).
    ``int4_cache=False``: transformers' own cache, K/V fake-quantized at every step, attention by SDPA
    (the fake-quant model's path), to tell the INT4 attention kernel's rounding apart from the rest."""
    texts = [format_prompt(tokenizer, p, options.chat) for p in prompts]
    device = next(model.parameters()).device
    ids = []
    for text in texts:
        batch = tokenizer(text, return_tensors="pt", add_special_tokens=not options.chat).to(device)
        cache = kv_cache_for(model, batch["input_ids"].shape[1] + options.max_new_tokens) if int4_cache else None
        out = model.generate(
            **batch, **options.generate_kwargs(), pad_token_id=tokenizer.eos_token_id, past_key_values=cache
        )
        ids.append(out[0, batch["input_ids"].shape[1] :].tolist())
    return ids


__all__ = ["GenerationOptions", "generate", "kv_cache_for", "new_token_ids"]
