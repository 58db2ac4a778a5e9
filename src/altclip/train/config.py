"""What a training run is asked to do (``TrainConfig``), apart from the loop so that the command line reads its
fields and defaults without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    output: str = "runs/altclip"
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # samples per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine schedule ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping
    bf16: bool = False  # bfloat16 autocast (for GPUs and CPUs with bf16 units)
    gradient_checkpointing: bool = False
    save_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    fsdp: bool = False  # shard parameters across processes (for models that do not fit one device)
    resume: bool = True  # continue from the newest checkpoint in OUTPUT/checkpoints
    dropout: float | None = None  # override every dropout probability (0 makes runs bit-reproducible)
    progress: bool = True
    device: str | None = None
    workers: int | None = None  # processes preparing batches ahead of the step; None: as the data and device need
