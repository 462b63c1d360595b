"""fptquant: W4A4KV4 quantization of LLMs with learned function-preserving transforms.

Library use::

    import fptquant
    model, tokenizer = fptquant.load_model("smollm2-135m")
    fptquant.quantize(model, fptquant.Recipe(method="rtn", bits="w4a4kv4"), tokenizer=tokenizer)
    print(fptquant.perplexity(model, tokenizer, max_windows=4).perplexity)
"""

from .config.bits import BitsSpec, parse_bits
from .config.recipe import Recipe
from .errors import FptquantError
from .evaluation.perplexity import perplexity
from .models import get_adapter
from .models.loading import load_model
from .pipelines.quantize import load_quantized, quantize, save_quantized

__version__ = "0.1.0"
__all__ = [
    "BitsSpec",
    "FptquantError",
    "Recipe",
    "get_adapter",
    "load_model",
    "load_quantized",
    "parse_bits",
    "perplexity",
    "quantize",
    "save_quantized",
]
