"""FlexTok configuration: one dataclass, named presets, validation, derived sizes.

Mirrors ``ElasticTokConfig`` so the trainer, the keep-count masks and the search read the same
names (``resolution``, ``frames_per_block``, ``tokens_per_block``, ``min_tokens``, ``window``,
``fingerprint()``); ``family`` tells the two apart in a saved ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ...errors import ElasticTokError
from ..base import MAX_TOKENS_PER_BLOCK, ConfigFile
from ..coder import Sampler
from ..elastictok.config import MAX_RESOLUTION

FAMILY = "flextok"
MAX_CODEBOOK = 2**18  # codes per token; larger codebooks make the tokens hard to model downstream
NESTED_DROPOUT_MODES = ("pow2", "uniform", "mix")
PREDICTIONS = ("x0", "v")
INPUT_STAGES = ("pixels", "latent")
PATCH_POSITIONS = ("learned", "sincos")
CONTEXTS = ("estimate", "sample")  # what a decoded block leaves as the next block's context
MAX_STAGE_FACTOR = 64  # the latent stage's largest downsampling per axis
STAGE_FACTORS = tuple(2**i for i in range(MAX_STAGE_FACTOR.bit_length()))  # 1, 2, 4, ... 64


@dataclass
class FlexTokConfig(ConfigFile):
    """Everything that fixes a FlexTok model's shape, training objective and default sampler."""

    # Fields added after FlexTok models were first saved, with the value every earlier model had.
    fields_added_later: ClassVar[dict[str, Any]] = {"x0_loss_weight": 0.0, "pure_noise_fraction": 0.0,
                                                    "quant_norm": False, "patch_position": "learned", "seed": 0,
                                                    "sample_shift": 1.0, "stage_channels": 8, "stage_factors": (2, 4),
                                                    "stage_width": 64, "context_from": "sample"}

    family: str = FAMILY  # model family written to config.json; always "flextok" here
    resolution: tuple[int, int] = (64, 64)  # (H, W) of every frame
    frames_per_block: int = 4  # frames per time step; each block gets its own registers
    patch_size: tuple[int, int, int] = (2, 8, 8)  # (Tp, Hp, Wp) of the input stage's grid
    input_stage: str = "pixels"  # what the flow runs on: "pixels" (the identity) or "latent" (LatentStage)
    # The latent stage's shape (input_stage "latent"; models/flextok/latent.py): a frozen causal convolutional
    # video autoencoder, trained alone (training/stage.py), whose latents the flow runs on as FlexTok's flow
    # runs on a frozen VAE's. Its latent channels, (temporal, spatial) downsampling and convolution width.
    stage_channels: int = 8
    stage_factors: tuple[int, int] = (2, 4)
    stage_width: int = 64
    registers: int = 32  # R: register tokens per block, the most tokens a block can keep
    # Where a patch is, as the transformers see it: "sincos" (fixed (t, h, w) sinusoids of unit amplitude, plus
    # a learned part) or "learned" alone (starting near zero; the earliest saved models). A 1-D tokenizer
    # routes content by position (registers gather it, patches fetch it back); at pure noise a learned
    # embedding starts 20x weaker than the noise, so every patch read the same average and training stalled
    # (sincos: +1.6 dB at step 300, docs/results/README.md).
    patch_position: Literal["learned", "sincos"] = "sincos"
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_width: int = 512
    rope_theta: float = 1e4  # 1-D RoPE over the flat token index
    norm_eps: float = 1e-5
    init_std: float = 0.02
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)  # 64,000 codes per token
    # Scale each register's pre-quantisation vector to unit RMS before FSQ's tanh. Without it the encoder
    # drives half its values into tanh's flat tails (|tanh| > 0.99), where no gradient reaches it; with it
    # none are there, but in a 300-step ablation held-out PSNR did not move (docs/results/README.md).
    quant_norm: bool = False
    nested_dropout: Literal["pow2", "uniform", "mix"] = "mix"  # how training draws k per block
    min_tokens: int = 1  # the fewest tokens the search may keep per block
    cfg_dropout: float = 0.1  # share of (sample, block) pairs trained with the null condition
    # What the decoder outputs; the loss is the squared error of the rectified-flow velocity v = noise - x0
    # either way. "x0": the clean block, whose implied velocity is (x_t - x0_hat) / t (1/t capped at 1/t_min);
    # "v": the velocity itself. Both are least where the velocity is E[noise - x0 | x_t, registers], the field
    # the Euler sampler integrates, so trained over the whole path (t logit-normal, no pure-noise share: the
    # preset defaults) more steps refine the sample. Checked at micro scale only (tests/models/test_flextok.py:
    # 200 steps on one block, and 8 steps land 3x closer than one for both; past 4 to 8 steps the error rose
    # again for "v", and for "x0" with small patches). "v" needs width >= patch_dim: its output layer reaches
    # only `width` directions per patch, and the noise it must remove fills all patch_dim (x0's velocity
    # carries x_t itself; Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"). The shipped
    # model trained 90% at pure noise instead (pure_noise_fraction 0.9): a one-step regressor that more steps
    # make worse.
    prediction: Literal["x0", "v"] = "x0"
    # Training t = sigmoid(N(time_mean, time_std^2)), t = 1 pure noise. Leaning to high noise, as pixel-space
    # flows do (JiT, Li & He 2025, use the mirror of this, P_mean = -0.8), also trains the one-step estimate.
    # SD3's timestep shift s (t -> s t / (1 + (s - 1) t)) of logit-normal(0, 1) is exactly time_mean = ln s.
    time_mean: float = 0.8
    time_std: float = 1.0
    # Share of training (sample, block) pairs drawn at t = 1 exactly: pure noise, so the x0 estimate can
    # only come from the registers (an autoencoder's training signal, which teaches the decoder to read them).
    pure_noise_fraction: float = 0.0
    t_min: float = 0.05  # x0 prediction: the velocity error's 1/t weight is capped at 1/t_min
    # Weight of a plain pixel loss on the x0 estimate beside the velocity loss. The velocity loss weighs
    # an x0 error by 1/t^2, so near-clean samples (solved from the noisy input alone) dominate it; this
    # term keeps the near-noise samples, which only the registers can solve, in the gradient.
    x0_loss_weight: float = 0.0
    context_noise: float = 0.05  # training noises the previous blocks' clean frames by up to this t
    # The default sampler of tokenize and detokenize (each call may set its own; a token file records the one
    # it was scored with): Euler steps, classifier-free guidance scale (1: none), seed of each block's noise.
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    # The Euler grid: u uniform from 1 to 0, t = s u / (1 + (s - 1) u) (SD3's shift; 1: uniform, as every model
    # saved before this field). s > 1 spends the steps near noise, where the block's layout is decided; a
    # grid shifted by s matches a training time_mean of ln s. The first step is at t = 1 whatever s, so the
    # one-step estimate does not depend on it.
    sample_shift: float = 1.0
    # What a decoded block leaves as the next block's context: its one-step estimate (the first step's x0, at
    # no extra cost) or its sample (every model saved before this field). A sharp sample's invented detail,
    # read as context, is copied forward and compounds (docs/results); the estimate does not.
    context_from: str = "estimate"
    # Context blocks kept in the KV caches when streaming (None: all); the trainer sets n_blocks - 1.
    window: int | None = 16
    name: str = "custom"

    def __post_init__(self) -> None:
        self.check_field_types()  # also turns JSON's lists back into tuples
        self.validate()

    # ---- derived -------------------------------------------------------------
    @property
    def tokens_per_block(self) -> int:
        """The most tokens a block can keep: its registers."""
        return self.registers

    @property
    def input_grid(self) -> tuple[int, tuple[int, int]]:
        """Channels and (temporal, spatial) downsampling of the grid the flow runs on: the input stage's."""
        return (self.stage_channels, self.stage_factors) if self.input_stage == "latent" else (3, (1, 1))

    @property
    def patches_per_block(self) -> int:
        tp, hp, wp = self.patch_size
        ft, fs = self.input_grid[1]
        h, w = self.resolution
        return (self.frames_per_block // (ft * tp)) * (h // (fs * hp)) * (w // (fs * wp))

    @property
    def block_size(self) -> int:
        """Tokens of one block inside the transformers: its patches, then its registers."""
        return self.patches_per_block + self.registers

    @property
    def patch_dim(self) -> int:
        tp, hp, wp = self.patch_size
        return tp * hp * wp * self.input_grid[0]

    @property
    def latent_dim(self) -> int:
        return len(self.fsq_levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)

    @property
    def bottleneck(self) -> str:
        return "fsq"

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def validate(self) -> None:
        self._validate_sizes()
        tp, hp, wp = self.patch_size
        ft, fs = self.input_grid[1]
        h, w = self.resolution
        problems = []
        if self.family != FAMILY:
            problems.append(f"family must be {FAMILY!r}, got {self.family!r}")
        if self.frames_per_block % (ft * tp):
            problems.append(f"frames_per_block {self.frames_per_block} is not divisible by Tp={tp} times the "
                            f"input stage's temporal factor {ft}")
        if h % (fs * hp) or w % (fs * wp):
            problems.append(f"resolution {h}x{w} is not divisible by the patch {hp}x{wp} times the input stage's "
                            f"spatial factor {fs}")
        if self.input_stage not in INPUT_STAGES:
            problems.append(f"input_stage must be one of {INPUT_STAGES}, got {self.input_stage!r}")
        if self.width % self.num_heads or self.head_dim % 2:
            problems.append(f"width {self.width} must split into {self.num_heads} heads of even size")
        if self.registers < 1:
            problems.append(f"registers must be at least 1, got {self.registers}")
        if any(level < 2 for level in self.fsq_levels):
            problems.append(f"fsq_levels must all be >= 2, got {self.fsq_levels}")
        elif self.codebook_size > MAX_CODEBOOK:
            problems.append(f"fsq_levels {self.fsq_levels} give {self.codebook_size} codes, more than 2^18")
        if self.patch_position not in PATCH_POSITIONS:
            problems.append(f"patch_position must be one of {PATCH_POSITIONS}, got {self.patch_position!r}")
        if self.nested_dropout not in NESTED_DROPOUT_MODES:
            problems.append(f"nested_dropout must be one of {NESTED_DROPOUT_MODES}, got {self.nested_dropout!r}")
        if self.context_from not in CONTEXTS:
            problems.append(f"context_from must be one of {CONTEXTS}, got {self.context_from!r}")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        elif self.prediction == "v" and self.width < self.patch_dim:
            problems.append(f"prediction 'v' needs width >= patch_dim (the velocity carries the noise of all "
                            f"{self.patch_dim} values of a patch), got width {self.width}; use prediction 'x0'")
        if not 1 <= self.min_tokens <= self.registers:
            problems.append(f"min_tokens {self.min_tokens} must lie in [1, {self.registers}]")
        if not 0 <= self.cfg_dropout < 1:
            problems.append(f"cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if not 0 < self.t_min < 1 or not 0 <= self.context_noise < 1 or self.time_std <= 0:
            problems.append("t_min must lie in (0, 1), context_noise in [0, 1) and time_std > 0")
        if not 0 <= self.pure_noise_fraction < 1:
            problems.append(f"pure_noise_fraction must lie in [0, 1), got {self.pure_noise_fraction}")
        if not self.x0_loss_weight >= 0:
            problems.append(f"x0_loss_weight must be >= 0, got {self.x0_loss_weight}")
        if not self.sample_shift > 0:
            problems.append(f"sample_shift must be > 0, got {self.sample_shift}")
        problems.extend(Sampler.problems(self.steps, self.guidance, self.seed))
        if self.window is not None and self.window < 1:
            problems.append(f"window must be at least 1 block or None, got {self.window}")
        if problems:
            raise ElasticTokError("invalid FlexTokConfig: " + "; ".join(problems))

    def _validate_sizes(self) -> None:
        """Every size a whole number within ``SIZE_LIMITS`` and the frame and patch sizes within
        ``MAX_RESOLUTION``, before anything divides by them or builds a layer of their size."""
        problems = self.size_problems()
        for name, value, count in (("patch_size", self.patch_size, 3), ("resolution", self.resolution, 2)):
            if len(value) != count or not 1 <= min(value, default=0) <= max(value) <= MAX_RESOLUTION:
                problems.append(f"{name} must be {count} integers in [1, {MAX_RESOLUTION}], got {value}")
        ft, fs = self.stage_factors if len(self.stage_factors) == 2 else (0, 0)
        if not (ft in STAGE_FACTORS and 2 <= fs <= MAX_STAGE_FACTOR and fs in STAGE_FACTORS):
            problems.append(f"stage_factors must be (temporal, spatial) powers of two, temporal in [1, "
                            f"{MAX_STAGE_FACTOR}] and spatial in [2, {MAX_STAGE_FACTOR}], got {self.stage_factors}")
        if not problems and self.patches_per_block > MAX_TOKENS_PER_BLOCK:
            problems.append(f"a block of {self.patches_per_block} patches is more than {MAX_TOKENS_PER_BLOCK}")
        if problems:
            raise ElasticTokError("invalid FlexTokConfig: " + "; ".join(problems))

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "FlexTokConfig":
        if preset not in PRESETS:
            raise ElasticTokError(f"unknown FlexTok preset {preset!r}; choose from {', '.join(PRESETS)}")
        cls.refuse_unknown(overrides)
        return dataclasses.replace(PRESETS[preset], **overrides)


PRESETS: dict[str, FlexTokConfig] = {
    # CPU-trainable: 64x64, 4-frame blocks of 128 pixel patches (2x8x8), 32 registers per block.
    "flextok-tiny": FlexTokConfig(name="flextok-tiny"),
    # A GPU-sized model: 128x128, 512 patches and 128 registers per block.
    "flextok-small": FlexTokConfig(
        name="flextok-small", resolution=(128, 128), registers=128, width=512, encoder_depth=8,
        decoder_depth=8, num_heads=8, mlp_width=1536,
    ),
    # flextok-tiny with 256 registers per 4-frame block: as many tokens as ElasticTok's default 64x64 model keeps
    # per block, so that the two families' rate-distortion curves can overlap. Implemented, not yet trained.
    "flextok-tiny-256": FlexTokConfig(name="flextok-tiny-256", registers=256),
    # For unit tests: seconds to build and run (32 patches and 8 registers per 2-frame block).
    "flextok-micro": FlexTokConfig(
        name="flextok-micro", resolution=(32, 32), frames_per_block=2, patch_size=(1, 8, 8), registers=8,
        width=32, encoder_depth=1, decoder_depth=1, num_heads=2, mlp_width=64, fsq_levels=(8, 5, 5, 5),
    ),
}
