"""What a heal is asked to do (`HealSettings`), what it reports while it runs (`HealProgress`) and what it
returns (`HealResult`). Pure data: no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from prunesearch.choices import DType, HealMethod, values

DEFAULT_LR = {HealMethod.FULL: 1e-4, HealMethod.LORA: 1e-3}
DEFAULT_TOKENS = 1_000_000
# The repository's perplexity protocol reads the first 60,000 characters of an evaluation file.
EVAL_CHARS = 60_000


class HealError(ValueError):
    """Settings that cannot describe a heal."""


@dataclass(frozen=True)
class HealSettings:
    """How to heal. Exactly one of `tokens` / `steps` sets the budget (`DEFAULT_TOKENS` when neither)."""

    method: HealMethod = HealMethod.FULL
    tokens: int | None = None
    steps: int | None = None
    lr: float | None = None  # None: DEFAULT_LR of the method
    seq_len: int = 256
    batch: int = 8
    grad_accum: int = 1
    temperature: float = 1.0
    ce_weight: float = 0.0
    lora_rank: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    self_data_tokens: int = 0
    self_data_temperature: float = 1.0  # the teacher's sampling temperature for self-data; 0 decodes greedily
    seed: int = 0
    dtype: DType | None = None  # of the healed checkpoint; None: the unhealed checkpoint's
    device: str = "cpu"
    checkpoint_every: int = 0  # steps between saved states; 0: never
    eval_chars: int = EVAL_CHARS

    def validate(self) -> None:
        """Raise `HealError` naming every problem at once."""
        problems = []
        if self.tokens is not None and self.steps is not None:
            problems.append("give either tokens or steps, not both")
        positive = ("batch", "grad_accum", "lora_rank", "temperature", "eval_chars")
        problems += [f"{name} must be positive" for name in positive if getattr(self, name) <= 0]
        optional = ("tokens", "steps", "lr")
        problems += [
            f"{n} must be positive" for n in optional if getattr(self, n) is not None and getattr(self, n) <= 0
        ]
        problems += [
            f"{n} must not be negative" for n in ("self_data_tokens", "checkpoint_every") if getattr(self, n) < 0
        ]
        if self.dtype is not None and self.dtype not in values(DType):
            problems.append(f"dtype must be one of {', '.join(values(DType))}")
        if self.self_data_temperature < 0:
            problems.append("self_data_temperature must not be negative (0 decodes greedily)")
        if not 0.0 <= self.ce_weight <= 1.0:
            problems.append("ce_weight must lie in [0, 1]")
        if self.seq_len < 2:
            problems.append("seq_len must be at least 2 (one input and one target)")
        if problems:
            raise HealError("invalid heal settings: " + "; ".join(problems))

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch * self.grad_accum

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil((self.tokens or DEFAULT_TOKENS) / self.tokens_per_step)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[HealMethod(self.method)]


@dataclass(frozen=True)
class HealProgress:
    """Reported after every optimizer step (for a progress bar or a service's status)."""

    step: int
    total_steps: int
    loss: float
    tokens_per_second: float


@dataclass(frozen=True)
class HealResult:
    out_dir: str
    method: str
    steps: int
    tokens: int
    seconds: float  # training time, over every resumed run
    wall_seconds: float  # this call end to end: loading, self-data, evaluation, training, writing
    tokens_per_second: float
    resumed_from: int  # the step this run started at (0: a fresh heal)
    final_loss: float
    eval: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # file -> before/after -> metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
