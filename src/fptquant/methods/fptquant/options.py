"""FPTQuant's options (``--method-arg KEY=VALUE``).

The local stage follows AIMET's ``LocalTransformOptimizer`` (L4 norm of the merged weights, AdamW lr
1e-2, 200 iterations). The paper's end-to-end hyper-parameters are not public; the defaults here
and the reasons for them are in docs/FPTQUANT.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...config.options import AMP_DTYPES, options_from_args
from ...errors import ConfigError
from ...pipelines.distill import LOSSES, DistillSettings
from ...pipelines.layerwise import LayerwiseSettings

ONLINE_ROTATIONS = ("block", "full", "none")
RESIDUAL_SCALINGS = {"none": (), "down": ("down",), "all": ("o", "down")}  # the linears S_n wraps
GRANULARITIES = ("tensor", "channel")
WEIGHT_CLIPS = ("learned", "minmax")
GPTQ_SCALES = ("minmax", "learned")
SCALE_SPACES = ("linear", "log")
ACT_CLIPS = ("learned", "fixed")
NOT_IN_FINGERPRINT = ("checkpoint_dir", "resume", "checkpoint_every", "preset", "cuda_graph")
# A CPU-sized run (a few minutes on 2 cores for SmolLM2): every stage runs, briefly.
PRESETS = {
    "full": {},
    "quick": {
        "local_steps": 20,
        "e2e_steps": 8,
        "batch_size": 1,
        "micro_batch": 1,
        "e2e_seqlen": 256,
        "range_windows": 2,
    },
}


@dataclass(frozen=True)
class FPTQuantOptions:
    # transforms
    residual: bool = True  # T_r: residual rotation, Hadamard init, Cayley-trained
    prerope: bool | None = None  # T_k: None = on, except for models with q/k norms (not mergeable there)
    values: bool = True  # T_v
    up_scale: bool = True  # T_u
    # S_n around none, down (down_proj only) or all (o_proj and down_proj, the paper's; true = all, false = none);
    # off by default: with it, static training diverged past ~250 steps on SmolLM2 (docs/FPTQUANT.md)
    residual_scaling: str = "none"
    down_rotation: str = "block"  # T_d: block-diagonal Hadamard (largest power-of-two block), full, none
    # not in the paper: an online Hadamard on o_proj's input (across heads, as QuaRot's), its inverse merged;
    # on by default (it lowered perplexity in both measured pairs, docs/FPTQUANT.md)
    o_rotation: str = "full"  # full (block-diagonal where no Hadamard of that order exists), block, none
    # local stage (data-free)
    local_steps: int = 200
    local_lr: float = 1e-2
    local_p: float = 4.0
    # block-wise stage (not in the paper; off by default): per-layer MSE to the full-precision layer
    blockwise_epochs: int = 0
    blockwise_lr: float = 1e-3  # T_k, T_v, T_u and static scales
    blockwise_clip_lr: float = 1e-2
    blockwise_windows: int | None = None  # None: every calibration window
    # static activation scales
    static_granularity: str = "tensor"
    range_p: float = 2.0
    range_windows: int = 16
    # end-to-end stage
    e2e_steps: int = 512
    batch_size: int = 4
    micro_batch: int = 4  # one forward per step: the transformed weights are computed once per forward
    lr: float = 1e-3  # T_k, T_v, T_u
    rotation_lr: float = 1e-4  # T_r (its Cayley generator has d² entries: AdamW moves each by ~lr per step)
    scale_lr: float = 1e-3  # static activation scales (LSQ)
    scale_space: str = "log"  # train static scales as log-scales (relative steps) or as they are
    weight_clip: str = "learned"  # RTN weights: a clip per row learned end to end (init: MSE search) or min-max
    act_clip: str = "learned"  # dynamic activation and K/V quantizers: a learned clip each (FlatQuant's LAC) or fixed
    # --weights gptq: "minmax" trains the transforms with full-precision weights, then GPTQ with min-max
    # scales (as SpinQuant does); "learned" trains them with learned-clip RTN weights (weight_clip), then
    # GPTQ on the learned per-row scales
    gptq_scales: str = "minmax"
    clip_lr: float = 5e-3  # the clip logits (weights, activations, K/V)
    loss: str = "jsd"
    temperature: float = 1.0
    max_grad_norm: float | None = None  # clip the end-to-end gradients' global norm (None: off)
    e2e_seqlen: int | None = None  # None: the recipe's calibration length
    amp: bool = True
    amp_dtype: str = "bfloat16"
    gradient_checkpointing: bool = True
    cuda_graph: bool | None = None  # replay each local, block-wise and e2e step as a CUDA graph (None: on CUDA)
    max_condition: float = 1e4  # stop when a T_v's condition number exceeds this
    checkpoint_every: int = 50
    checkpoint_dir: str | None = None
    resume: bool = True
    preset: str = "full"  # "quick": the CPU-sized values of PRESETS (explicit options still win)

    def __post_init__(self):
        choices = {
            "down_rotation": ONLINE_ROTATIONS,
            "o_rotation": ONLINE_ROTATIONS,
            "scale_space": SCALE_SPACES,
            "static_granularity": GRANULARITIES,
            "weight_clip": WEIGHT_CLIPS,
            "act_clip": ACT_CLIPS,
            "gptq_scales": GPTQ_SCALES,
            "loss": LOSSES,
            "amp_dtype": tuple(AMP_DTYPES),
            "preset": tuple(PRESETS),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"fptquant option {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if (
            min(self.local_steps, self.e2e_steps, self.range_windows - 1, self.blockwise_epochs) < 0
            or min(self.batch_size, self.micro_batch) < 1
        ):
            raise ConfigError("fptquant needs local_steps, e2e_steps >= 0, range_windows, batch_size, micro_batch >= 1")
        aliases = {True: "all", False: "none", "true": "all", "false": "none"}
        if isinstance(self.residual_scaling, (bool, str)) and self.residual_scaling in aliases:
            object.__setattr__(self, "residual_scaling", aliases[self.residual_scaling])
        if self.residual_scaling not in RESIDUAL_SCALINGS:
            raise ConfigError(
                f"fptquant option residual_scaling must be one of {tuple(RESIDUAL_SCALINGS)} (or true/false), "
                f"got {self.residual_scaling!r}"
            )
        for key in ("prerope", "cuda_graph"):
            if getattr(self, key) not in (None, True, False):
                raise ConfigError(f"fptquant option {key} must be true or false, got {getattr(self, key)!r}")
        if self.e2e_seqlen is not None and (not isinstance(self.e2e_seqlen, int) or self.e2e_seqlen < 2):
            raise ConfigError(f"fptquant option e2e_seqlen must be an integer >= 2, got {self.e2e_seqlen!r}")
        rates = (self.local_lr, self.lr, self.rotation_lr, self.scale_lr, self.clip_lr, self.blockwise_lr,
                 self.blockwise_clip_lr)  # fmt: skip
        clip = self.max_grad_norm
        if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
            raise ConfigError(f"fptquant option max_grad_norm must be a positive number, got {self.max_grad_norm!r}")
        if min(*rates, self.temperature, self.max_condition) <= 0:
            raise ConfigError("fptquant learning rates, temperature and max_condition must be positive")

    @classmethod
    def from_method_args(cls, args: dict) -> FPTQuantOptions:
        preset = args.get("preset", "full")
        if preset not in PRESETS:
            raise ConfigError(f"fptquant option preset must be one of {tuple(PRESETS)}, got {preset!r}")
        return options_from_args(cls, {**PRESETS[preset], **args}, "fptquant")

    def blockwise(self, seed: int) -> LayerwiseSettings:
        return LayerwiseSettings(
            epochs=self.blockwise_epochs,
            batch_size=self.batch_size,
            lr=self.blockwise_lr,
            clip_lr=self.blockwise_clip_lr,
            weight_decay=0.0,
            amp=self.amp,
            amp_dtype=AMP_DTYPES[self.amp_dtype],
            seed=seed,
            compile=False,  # parametrized weights: one generated class per module, one compilation per layer
            cuda_graph=self.cuda_graph,
        )

    def distill(self, seed: int) -> DistillSettings:
        return DistillSettings(
            steps=self.e2e_steps,
            batch_size=self.batch_size,
            micro_batch=self.micro_batch,
            loss=self.loss,
            temperature=self.temperature,
            amp=self.amp,
            amp_dtype=AMP_DTYPES[self.amp_dtype],
            gradient_checkpointing=self.gradient_checkpointing,
            checkpoint_every=self.checkpoint_every,
            seed=seed,
            cuda_graph=self.cuda_graph,
            max_grad_norm=self.max_grad_norm,
        )

    def fingerprint_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_FINGERPRINT}
