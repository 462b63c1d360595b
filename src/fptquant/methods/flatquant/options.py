"""FlatQuant's options (``--method-arg KEY=VALUE``), with the released scripts' values as defaults.

The released code's argparse defaults differ from what its scripts and the paper run (``flat_lr``
1e-5 vs 5e-3; ``cali_trans``/``add_diag``/``lwc``/``lac`` off); the defaults here are the scripts'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...config.options import AMP_DTYPES, options_from_args
from ...errors import ConfigError
from ...math.kronecker import FACTOR_KINDS
from ...pipelines.layerwise import LayerwiseSettings

# Options that only change how the result is stored, not what calibration learns.
NOT_IN_FINGERPRINT = ("checkpoint_dir", "resume", "offload", "compile", "cuda_graph")


@dataclass(frozen=True)
class FlatQuantOptions:
    epochs: int = 15
    batch_size: int = 4
    lr: float = 5e-3  # transforms and diagonals
    clip_lr: float = 5e-2  # clip logits: 10x lr, as released
    weight_decay: float = 0.01  # AdamW's default, which the release applies to every group
    min_lr_factor: float = 1e-3  # cosine to lr * 1e-3
    transforms: bool = True  # LT (learnable affine transforms)
    diag: bool = True  # PS (per-channel scaling)
    clip: bool = True  # LCT (learnable weight and activation clipping)
    diag_alpha: float = 0.3  # SmoothQuant-style init of the diagonals
    factor: str = "svd"  # "svd" or "inverse" (the release's --direct_inv)
    online_bf16: bool = True  # online factors and P1ᵀX rounded to bfloat16 (exactly inverted): the fast kernel
    amp: bool = True  # autocast on CUDA; parameters stay float32
    amp_dtype: str = "bfloat16"
    offload: bool | None = None  # activations on the CPU (None: only when GPU memory is short)
    compile: bool | None = None  # torch.compile the training step (None: on CUDA without cuda_graph)
    cuda_graph: bool | None = None  # replay each training step as a CUDA graph (None: on CUDA)
    checkpoint_dir: str | None = None  # default: the cache, keyed by a fingerprint of the run
    resume: bool = True

    def __post_init__(self):
        if self.factor not in FACTOR_KINDS:
            raise ConfigError(f"flatquant factor must be one of {FACTOR_KINDS}, got {self.factor!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"flatquant amp_dtype must be one of {tuple(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("flatquant needs epochs >= 0 and batch_size >= 1")
        if min(self.lr, self.clip_lr) <= 0:
            raise ConfigError("flatquant learning rates must be positive")

    @classmethod
    def from_method_args(cls, args: dict) -> FlatQuantOptions:
        return options_from_args(cls, args, "flatquant")

    def layerwise(self, seed: int) -> LayerwiseSettings:
        return LayerwiseSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            clip_lr=self.clip_lr,
            weight_decay=self.weight_decay,
            min_lr_factor=self.min_lr_factor,
            amp=self.amp,
            amp_dtype=AMP_DTYPES[self.amp_dtype],
            offload=self.offload,
            seed=seed,
            compile=self.compile,
            cuda_graph=self.cuda_graph,
        )

    def fingerprint_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_FINGERPRINT}
