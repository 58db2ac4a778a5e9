"""The training loop both stages share.

AdamW with linear warmup and cosine decay, gradient accumulation, bfloat16 autocast, gradient checkpointing,
checkpoints that resume exactly (weights, optimizer, schedule, random states, position in the data), a JSONL
metrics log with a PNG plot, a progress bar, and several processes through ``torchrun`` (DDP; FSDP on request).

Data order is a function of the step alone: sample ``k`` of the global batch at step ``s`` is the same whatever the
number of processes, so one process and two processes with the same global batch follow the same loss curve, and a
resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from altclip.loading.pretrained import PreTrainedModel
from altclip.train.config import TrainConfig
from altclip.utils.devices import resolve_device
from altclip.utils.progress import Progress

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, unusable data); the message says what to do."""


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Joins the process group ``torchrun`` describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup_device(config: TrainConfig) -> tuple[str, Distributed]:
    """The device this process trains on (its own GPU under torchrun) and its place among the processes."""
    device = resolve_device(config.device)
    dist_info = setup_distributed(device)
    if device == "cuda":
        device = f"cuda:{dist_info.local_rank}"
    return device, dist_info


def global_indices(step: int, micro: int, config: TrainConfig, world: int, rank: int, dataset_size: int) -> list[int]:
    """The dataset indices this process trains on at (step, micro-step): a fresh permutation each epoch, seeded."""
    per_step = config.batch_size * world
    start = ((step * config.grad_accum) + micro) * per_step + rank * config.batch_size
    out = []
    for position in range(start, start + config.batch_size):
        epoch, offset = divmod(position, dataset_size)
        order = _permutation(config.seed, epoch, dataset_size)
        out.append(int(order[offset]))
    return out


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    key = (seed, epoch, size)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch]).permutation(size)
    return _PERMUTATIONS[key]


class StepBatches(Sampler[list[int]]):
    """The dataset indices of every micro-batch this process trains on, in training order, from ``start`` (the step
    a resumed run continues at): what ``global_indices`` gives, as a DataLoader's batch sampler."""

    def __init__(self, config: TrainConfig, dist_info: Distributed, dataset_size: int, start: int):
        self.config, self.dist, self.dataset_size, self.start = config, dist_info, dataset_size, start

    def __iter__(self):
        for step in range(self.start, self.config.steps):
            for micro in range(self.config.grad_accum):
                yield global_indices(step, micro, self.config, self.dist.world, self.dist.rank, self.dataset_size)

    def __len__(self) -> int:
        return max(0, self.config.steps - self.start) * self.config.grad_accum


class Samples(Protocol):
    """What a stage's samples are: a list, or a Dataset that knows its length."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


@dataclass
class TrainData:
    """What a stage trains on. ``dataset[i]`` is sample ``i`` (read and decoded: the work DataLoader workers do in
    their own processes), ``collate`` makes a batch of CPU tensors from a list of samples, and ``to_device`` moves a
    batch to the training device (and may run frozen models on it) in the training process. ``decodes``: whether
    reading a sample is real work (decoding images), so that workers pay off by default."""

    dataset: Samples
    collate: Callable[[list], Any]
    to_device: Callable[[Any], Any]
    decodes: bool = False

    def loader(self, sampler: StepBatches, workers: int | None, device_type: str) -> DataLoader:
        """Batches in training order, ``workers`` processes preparing the next ones while a step runs. By default
        one per CPU but one, at most 4, where samples are decoded and the step runs on an accelerator; none when it
        runs on the CPU, whose cores the step already uses (one worker on 2 cores: 0.82 to 0.92 times the pairs/s
        of none, ``benchmarks/train_data.py``), or when samples are not decoded."""
        if workers is None:
            workers = min(4, max(1, (os.cpu_count() or 1) - 1)) if self.decodes and device_type != "cpu" else 0
        return DataLoader(
            self.dataset,  # type: ignore[arg-type]  # DataLoader indexes any sequence; its stub asks for a Dataset
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            pin_memory=device_type == "cuda",
            # Its own generator: the iterator draws its workers' seed from it, and a draw from torch's global
            # generator would shift the dropout of a resumed run against an uninterrupted one.
            generator=torch.Generator(),
        )


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


class _Layered(Protocol):
    def encoder_layers(self) -> Iterable[nn.Module]: ...


ModelT = TypeVar("ModelT", bound=nn.Module)


class Trainer(Generic[ModelT]):
    """Runs ``loss_fn(model, batch) -> (loss, metrics)`` over the batches of ``data`` for ``config.steps``.

    ``model`` is the module whose trainable parameters are optimized; ``save_fn(model, directory)`` writes the
    final, usable checkpoint. ``model.encoder_layers()`` gives the layers FSDP shards one at a time.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: ModelT,
        data: TrainData,
        loss_fn: Callable[[nn.Module, Any, Distributed], tuple[torch.Tensor, dict[str, float]]],
        save_fn: Callable[[ModelT, Path], None],
        dist_info: Distributed | None = None,
        log: Callable[[str], None] = print,
    ):
        self.config = config
        self.dist = dist_info or Distributed()
        self.output = Path(config.output)
        self.data, self.dataset_size = data, len(data.dataset)
        self.loss_fn, self.save_fn, self.log = loss_fn, save_fn, log
        if self.dataset_size < 1:
            raise TrainingError("The training data is empty (after skipping unusable samples)")
        if config.dropout is not None:
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    module.set_dropout(config.dropout)
        if config.gradient_checkpointing:
            for module in model.modules():
                enable = getattr(module, "gradient_checkpointing_enable", None)
                if enable is not None:
                    enable()
                    break
        self.model = model
        self.wrapped = self._wrap(model)
        params = [p for p in self.wrapped.parameters() if p.requires_grad]
        if not params:
            raise TrainingError("Nothing to train: every parameter is frozen")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]  # biases, norms, logit_scale
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        self.step = 0

    @property
    def sharded(self) -> bool:
        return self.config.fsdp and self.dist.world > 1

    def _wrap(self, model: ModelT) -> nn.Module:
        if self.dist.world == 1:
            return model
        if self.config.fsdp:
            # FSDP2: each transformer layer's parameters are sharded across processes and gathered for its turn.
            # An empty copy of the model (on the meta device) receives the full weights at the end, to be saved.
            import copy

            from torch.distributed.fsdp import fully_shard

            self._template = copy.deepcopy(model).to("meta")
            # FSDP2 cannot shard 0-d parameters (logit_scale): they stay replicated, their gradients averaged here.
            self._replicated = {p for p in model.parameters() if p.dim() == 0}
            for layer in cast(_Layered, model).encoder_layers():  # what the class docstring asks of the model
                fully_shard(layer)
            fully_shard(model, ignored_params=self._replicated)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.dist.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        return sorted(self.output.glob("checkpoints/step-*[0-9]"))

    def save_checkpoint(self) -> Path:
        """Weights, optimizer, random states and step, written atomically (a temporary folder renamed)."""
        state = self._model_state()
        optimizer = self._optimizer_state()
        if not self.dist.main:
            return self.output
        target = self.output / "checkpoints" / f"step-{self.step:07d}"
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "model.pt")
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(_random_states(), tmp / "rng.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "config": asdict(self.config)}, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        for old in self.checkpoints()[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def _model_state(self) -> dict[str, Any]:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return dict(self.model.state_dict())

    def _optimizer_state(self) -> dict:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=options)
        return self.optimizer.state_dict()

    def resume(self) -> bool:
        """Loads the newest checkpoint, if any; True when it did."""
        found = self.checkpoints() if self.config.resume else []
        if not found:
            return False
        path = found[-1]
        weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, weights, options=options)
            set_optimizer_state_dict(self.model, self.optimizer, optimizer, options=options)
        else:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optimizer)
        _restore_random_states(torch.load(path / "rng.pt", weights_only=True))
        self.step = json.loads((path / "trainer.json").read_text())["step"]
        self.log(f"Resumed from {path} (step {self.step})")
        return True

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        if not self.resume():
            torch.manual_seed(config.seed + self.dist.rank)
            np.random.seed(config.seed)
            random.seed(config.seed)
        metrics_path = self.output / "metrics.jsonl"
        if self.dist.main and self.step == 0:
            metrics_path.unlink(missing_ok=True)
        device_type = next(self.model.parameters()).device.type
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if config.bf16 else nullcontext()
        sampler = StepBatches(config, self.dist, self.dataset_size, start=self.step)
        batches = iter(self.data.loader(sampler, config.workers, device_type))
        self.wrapped.train()
        start, samples, last = time.perf_counter(), 0, None
        progress = Progress(
            "training", total=config.steps, done=self.step, enabled=config.progress and self.dist.main, lines=False
        )
        while self.step < config.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, config)
            sums: dict[str, float] = {}
            for micro in range(config.grad_accum):
                batch = self.data.to_device(next(batches))
                sync = micro == config.grad_accum - 1 or self.dist.world == 1
                if self.sharded:
                    cast("FSDPModule", self.model).set_requires_gradient_sync(sync)  # fully_shard made it one
                # Neither in sync nor sharded: several processes, so _wrap made wrapped a DistributedDataParallel.
                ddp = cast("DistributedDataParallel", self.wrapped)
                with nullcontext() if sync or self.sharded else ddp.no_sync(), autocast:
                    loss, metrics = self.loss_fn(self.wrapped, batch, self.dist)
                    (loss / config.grad_accum).backward()
                for k, v in {"loss": loss.detach().float().item(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v / config.grad_accum
                samples += config.batch_size * self.dist.world
            sums = self._average(sums)
            if not all(math.isfinite(v) for v in sums.values()):
                good = self.checkpoints()
                raise TrainingError(
                    f"The loss became {sums['loss']} at step {self.step}; training stopped. "
                    + (f"The last good checkpoint is {good[-1]}; " if good else "No checkpoint was written yet; ")
                    + "lower --lr, or check the data, then run again (it resumes from the last checkpoint)"
                )
            grad_norm = self._clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            last = {
                "step": self.step,
                **{k: round(v, 6) for k, v in sums.items()},
                "lr": lr_at(self.step - 1, config),
                "grad_norm": round(grad_norm, 4),
            }
            if self.dist.main and (self.step % config.log_every == 0 or self.step == config.steps or self.step == 1):
                elapsed = time.perf_counter() - start
                last |= {"samples_per_s": round(samples / elapsed, 2), "elapsed_s": round(elapsed, 2)}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
            progress(self.step, config.steps, f"loss {last['loss']:.4f}")
            if self.step % config.save_every == 0 or self.step == config.steps:
                self.save_checkpoint()
        progress.close()
        final = self.output / "final"
        trained = self.model
        if self.sharded:  # gather the full weights into the empty copy, on the main process
            state = self._model_state()
            trained = self._template
            if self.dist.main:
                trained.to_empty(device="cpu")
                trained.load_state_dict(state)
        if self.dist.main:
            self.save_fn(trained, final)
            if importlib.util.find_spec("matplotlib") is None:
                self.log(
                    f"metrics.png not drawn: matplotlib is not installed (pip install 'altclip[train]'); the metrics "
                    f"are in {metrics_path}"
                )
            else:
                plot_metrics(metrics_path, self.output / "metrics.png")
        if self.dist.world > 1:
            dist.barrier()
        return {"final": str(final), "last": last, "steps": self.step}

    def _average(self, values: dict[str, float]) -> dict[str, float]:
        if self.dist.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: v / self.dist.world for k, v in zip(keys, t.tolist())}

    def _clip(self) -> float:
        if self.sharded:
            for p in self._replicated:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dist.world
        params = [p for p in self.wrapped.parameters() if p.grad is not None]
        if not params:
            return 0.0
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP


def _random_states() -> dict[str, torch.Tensor]:
    """torch's, numpy's and Python's generator states as tensors (loadable with weights_only=True)."""
    # The legacy global generator is MT19937, whose state is this tuple.
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    _, keys, position, has_gauss, gauss = state
    version, python, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": torch.tensor([position, has_gauss, gauss], dtype=torch.float64),
        "python": torch.tensor(python, dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if python_gauss is None else python_gauss], dtype=torch.float64),
    }


def _restore_random_states(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    position, has_gauss, gauss = state["numpy_rest"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(position), int(has_gauss), gauss)
    )
    gauss_next = state["python_gauss"].item()
    random.setstate((3, tuple(state["python"].tolist()), None if math.isnan(gauss_next) else gauss_next))


def plot_metrics(metrics_path: Path, out: Path, keys: Sequence[str] = ()) -> Path | None:
    """A PNG of the loss (and any other logged metric) against the step; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = (
        [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        if metrics_path.exists()
        else []
    )
    if not rows:
        return None
    skip = {"step", "lr", "grad_norm", "samples_per_s", "elapsed_s"}
    names = list(keys) or [k for k in rows[-1] if k not in skip]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in names:
        points = [(r["step"], r[name]) for r in rows if name in r]
        axes[0].plot(*zip(*points), label=name)
    axes[0].set_xlabel("step")
    axes[0].set_yscale("log" if all(r.get("loss", 1) > 0 for r in rows) else "linear")
    axes[0].legend()
    axes[0].set_title("training")
    axes[1].plot([r["step"] for r in rows], [r["lr"] for r in rows])
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
