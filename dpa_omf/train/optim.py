"""AdamW with linear warm-up, cosine decay and global-norm gradient clipping.

One optimizer for every training stage (pretraining and alignment): the stage's
config fills an :class:`OptimConfig`, :func:`make_optimizer` turns it into an
``optax.GradientTransformation`` plus the learning-rate schedule (the schedule
is returned separately so the host can log the rate of each step without
reading optimizer state).
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer knobs.

    Attributes:
      learning_rate: peak learning rate, reached at the end of warm-up.
      warmup_steps: linear warm-up from 0 to ``learning_rate`` over this many
        updates.
      decay_steps: length of the cosine decay after warm-up, in updates. ``None``
        decays over the rest of the run (``total_steps - warmup_steps``).
      end_lr_ratio: final learning rate as a fraction of the peak.
      weight_decay: decoupled (AdamW) weight decay. Applied only to parameters
        with ``ndim >= 2`` (matrices, embeddings), never to biases and norm
        scales, which decay would pull towards zero for no regularization gain.
      b1, b2, eps: Adam moments and epsilon.
      clip_grad_norm: clip the global gradient norm to this value before the
        Adam update; ``0`` disables clipping.
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 10
    decay_steps: int | None = None
    end_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    clip_grad_norm: float = 1.0

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first impossible field."""
        if not self.learning_rate > 0:
            raise ValueError(f"OptimConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"OptimConfig.decay_steps must be >= 1 or None, got {self.decay_steps}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"OptimConfig.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ValueError(f"OptimConfig.b1/b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.clip_grad_norm < 0:
            raise ValueError(f"OptimConfig.clip_grad_norm must be >= 0, got {self.clip_grad_norm}")


def make_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per update index (0-based): warm-up then cosine decay.

    After ``warmup_steps + decay_steps`` the rate stays at
    ``end_lr_ratio * learning_rate``.
    """
    decay = config.decay_steps
    if decay is None:
        decay = max(total_steps - config.warmup_steps, 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.warmup_steps + decay,  # optax counts warm-up inside decay_steps
        end_value=config.learning_rate * config.end_lr_ratio,
    )


def _decay_mask(params):
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(
    config: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns ``(tx, schedule)``: clip -> AdamW(schedule), decay masked to matrices.

    Args:
      config: the optimizer config (validated here).
      total_steps: number of updates of the whole run, used when
        ``config.decay_steps`` is ``None``.
    """
    config.validate()
    schedule = make_schedule(config, total_steps)
    parts = []
    if config.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts), schedule
