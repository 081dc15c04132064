"""The optimizer section shared by the training stages (pretrain, align): ``dpa_omf.train.optim.OptimConfig``."""

from __future__ import annotations

import ml_collections


def optim(learning_rate: float, end_lr_ratio: float, weight_decay: float) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.learning_rate = learning_rate
    o.warmup_steps = 10
    # None: decay over the rest of the run; typed so `--config.<stage>.optim.decay_steps=N` works.
    o.decay_steps = ml_collections.FieldReference(None, field_type=int)
    o.end_lr_ratio = end_lr_ratio
    o.weight_decay = weight_decay
    o.b1 = 0.9
    o.b2 = 0.98
    o.eps = 1e-9
    o.clip_grad_norm = 1.0
    return o
