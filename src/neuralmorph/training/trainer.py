"""The one trainer every neural family uses: single process, or DDP under `torchrun`.

A family's model is a `torch.nn.Module` and a `Trainable` that implements `training_loss(batch, step)` (and
may override `validation_metrics`, `preview` and `parameter_groups`); `train(model, dataset, TrainerConfig(...), out)`
does the rest: AdamW with warm-up + cosine (or constant) learning rate, gradient clipping, optional AMP
on CUDA, progress bar, metrics.csv / TensorBoard, validation (`val/...` during training) and a final
test score (`test/...`), atomic safetensors checkpoints and a bit-identical `resume`. See docs/training.md.

Determinism: the global batch of step s is a pure function of (seed, s) — consecutive slices of a stream
of per-epoch permutations, each drawn from numpy's generator seeded with (seed, epoch) — so a resumed run
sees exactly the batches the uninterrupted run would have; torch / numpy / python RNG states are saved
in every checkpoint (per rank) and restored. Validation, the test score and TensorBoard previews run with
the RNG states saved and restored around them, so how often they run never changes the training trajectory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from neuralmorph.atomic import read_json, write_json
from neuralmorph.config import Config
from neuralmorph.errors import InputError, NeuralmorphError
from neuralmorph.training import checkpoint as ckpt
from neuralmorph.training.distributed import (DistInfo, all_gather_objects, barrier, init_distributed,
                                              mean_over_ranks, shutdown_distributed)
from neuralmorph.training.logger import RunLogger
from neuralmorph.training.run_folder import claim_run_folder

RUN_CONFIG_FILE = "run_config.json"
KILL_HOOK_ENV = "NEURALMORPH_TEST_KILL_AFTER_CHECKPOINT"
"""Test hook: when set to a step k, every process SIGKILLs itself right after step k's checkpoint."""
INVOCATION_KEYS = ("resume", "progress")
"""Top-level `run_config` keys that describe the invocation, not the run: not compared on resume."""


class TrainingDiverged(NeuralmorphError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainerConfig(Config):
    """How to train: steps, batch, optimiser and schedule, checkpoints, logging, device."""

    max_steps: int = 2000
    """Optimiser steps in the whole run."""
    batch_size: int = 32
    """Global batch size (summed over all processes under torchrun; must divide evenly among them)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """After the warm-up: cosine decay to zero at max_steps, or constant."""
    warmup_steps: int = 50
    """Linear warm-up steps from lr/warmup_steps to lr."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (0: only at the end); one is always written at the end."""
    val_every: int = 250
    """Validate every this many steps when there is a validation set (0: only at the end); a test set is
    scored only at the end."""
    log_every: int = 10
    """Log the mean loss of the last this-many steps to metrics.csv / TensorBoard / the progress bar."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    seed: int = 0
    """Seeds the batch order and the torch / numpy / python RNGs."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, mps. Under torchrun with CUDA each process takes cuda:LOCAL_RANK."""
    amp: bool = False
    """Mixed precision (bf16 autocast where the GPU supports it, else fp16 with loss scaling); CUDA only."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    tensorboard: bool = True
    """Write TensorBoard scalars when the tensorboard package is installed."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (needed for bit-identical resume on CUDA)."""
    find_unused_parameters: bool = False
    """DDP only: set when some parameters get no gradient in some steps."""

    def __post_init__(self):
        def need(ok: bool, flag: str, problem: str) -> None:
            if not ok:
                raise InputError(flag, problem)

        def is_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        for name in ("max_steps", "batch_size", "log_every", "keep_checkpoints"):
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"--{name.replace('_', '-')}", f"must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "checkpoint_every", "val_every", "num_workers", "seed"):
            v = getattr(self, name)
            need(is_int(v) and v >= 0, f"--{name.replace('_', '-')}", f"must be a non-negative integer, got {v!r}")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "--lr",
             f"must be a positive number, got {self.lr!r}")
        need(isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "--weight-decay", f"must be a non-negative number, got {self.weight_decay!r}")
        need(self.lr_schedule in ("cosine", "constant"), "--lr-schedule",
             f"must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        need(self.grad_clip is None or (isinstance(self.grad_clip, (int, float)) and math.isfinite(self.grad_clip)
                                        and self.grad_clip > 0), "--grad-clip",
             f"must be a positive number or None, got {self.grad_clip!r}")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise InputError("--device", f"not a torch device: {self.device!r} (use cpu, cuda, cuda:N or mps)") from None
        need(not self.amp or dev.type == "cuda", "--amp",
             f"mixed precision runs on CUDA only; device is {self.device!r} (drop --amp or use --device cuda)")

    @classmethod
    def from_dict(cls, d: dict, where: str = "trainer config") -> "TrainerConfig":
        return super().from_dict(d, where)


class Trainable:
    """Mixin: what a model (a torch.nn.Module) provides to be trained by `train`.

    training_loss(batch, step): batch is a default-collated dict of tensors already on the device (this
    process's slice of the global batch); step is the 0-based index of the optimiser step being taken
    (for curricula). Returns the scalar loss to minimise — a *mean* over the batch, so that DDP's averaged
    gradients equal the single-process gradient — and a dict of scalars to log (floats or 0-d tensors).

    The other methods have defaults a model may override.
    """

    def training_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError(f"{type(self).__name__} does not implement training_loss")

    def validation_metrics(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Per-batch means; the trainer reports their batch-size-weighted mean over the validation set as
        `val/<name>`, and over the test set (after the last step) as `test/<name>` (default: the training
        loss at `step`, as `val/loss` and `test/loss`)."""
        return {"loss": self.training_loss(batch, step)[0]}

    def preview(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """What to show in TensorBoard for `batch` (one default-collated item, on the device), name -> either
        a mesh, (vertices (1, V, 3) float, faces (1, F, 3) int), or an image, one tensor (H, W, 3) float in
        [0, 1] (HWC). Made from the first validation item at each validation, or, without a validation set,
        from the first training item at each checkpoint step; rank 0 only, in eval mode under no_grad, RNG
        state preserved. Default: none."""
        return {}

    def parameter_groups(self) -> list[dict]:
        """AdamW parameter groups ({"params": [...], "lr": ..., ...}); a group's "lr" is its peak learning
        rate and follows the same schedule. Default: one group of every parameter."""
        return [{"params": list(self.parameters())}]


# --- deterministic pieces -----------------------------------------------------------------------------

def lr_factor(step: int, config: TrainerConfig) -> float:
    """Learning-rate multiplier for the 0-based optimiser step `step`."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.max_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def global_batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Dataset indices of the global batch of step `step`: a pure function of its arguments.

    The stream is epoch 0's permutation, then epoch 1's, ...; batch s is stream[s*B : (s+1)*B] (a batch
    may straddle two epochs, so every item is seen equally often and nothing is dropped).
    """
    if n < 1:
        raise InputError("dataset", "the training set is empty")
    out, pos, end = [], step * batch_size, (step + 1) * batch_size
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = min(end - pos, n - offset)
        out.append(_epoch_permutation(n, seed, epoch)[offset:offset + take])
        pos += take
    return np.concatenate(out)


class StepBatchSampler:
    """Yields this rank's slice of each global batch for steps [start, stop): rank r takes the r-th of
    world_size equal contiguous parts."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise InputError("--batch-size", f"{batch_size} does not split evenly over {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        per = self.batch_size // self.world_size
        for step in range(self.start, self.stop):
            idx = global_batch_indices(self.n, self.batch_size, self.seed, step)
            yield idx[self.rank * per:(self.rank + 1) * per].tolist()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch (all devices), numpy's global RNG and python's `random`; rank > 0 gets its own stream."""
    s = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


# --- run config ---------------------------------------------------------------------------------------

def _jsonable(x: Any) -> Any:
    """JSON round-trip form of a config: dataclasses -> dicts, paths -> strings, tuples -> lists."""
    def default(o):
        if is_dataclass(o) and not isinstance(o, type):
            return asdict(o)
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        if isinstance(o, (np.generic,)):
            return o.item()
        raise TypeError(f"run config value of type {type(o).__name__} is not JSON-serialisable")
    return json.loads(json.dumps(x, default=default))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: d}


def config_differences(saved: dict, new: dict) -> list[str]:
    """'field: saved X, now Y' for every dotted field that differs between two run configs."""
    a, b = _flatten(saved), _flatten(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)
            out.append(f"{key}: saved {show(va)}, now {show(vb)}")
    return out


def make_run_config(config: TrainerConfig, run_config: dict | None) -> dict:
    run = _jsonable(run_config or {})
    if not isinstance(run, dict):
        raise TypeError("run_config must be a dict")
    return {"trainer": _jsonable(config.to_dict()), "run": run}


def load_run_config(out: str | Path) -> dict | None:
    """The {"trainer": ..., "run": ...} saved in out/run_config.json, or None (for a CLI's --resume defaults)."""
    path = Path(out) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    rc = read_json(path)
    if not isinstance(rc, dict) or not all(isinstance(rc.get(k, {}), dict) for k in ("trainer", "run")):
        raise InputError(path, "must hold a JSON object with 'trainer' and 'run' objects (written by neuralmorph train)")
    return rc


def _comparable(rc: dict) -> dict:
    run = {k: v for k, v in rc.get("run", {}).items() if k not in INVOCATION_KEYS}
    return {"trainer": rc.get("trainer", {}), "run": run}


# --- helpers ------------------------------------------------------------------------------------------

def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _as_float(x) -> float:
    return float(x.detach().float().item()) if isinstance(x, torch.Tensor) else float(x)


@contextlib.contextmanager
def _preserved_rng(device: torch.device):
    """Run a block (validation) without moving the torch / numpy / python RNG streams of training."""
    saved = ckpt.capture_rng(device)
    try:
        yield
    finally:
        ckpt.restore_rng(saved, device)


class _LossModule(torch.nn.Module):
    """Routes DDP's forward to `training_loss`, so DDP's gradient hooks fire for it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, step):
        return self.model.training_loss(batch, step)


def _parameter_groups(model: torch.nn.Module, config: TrainerConfig) -> list[dict]:
    groups = [dict(g) for g in model.parameter_groups()]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    if not any(g["params"] for g in groups):
        raise TypeError(f"{type(model).__name__} has no trainable parameters")
    return groups


def _loader(dataset: Dataset, sampler, config: TrainerConfig, device: torch.device, seed_offset: int) -> DataLoader:
    # An explicit generator: the DataLoader's worker base seed must not draw from the global RNG, which
    # would shift the training RNG stream between a fresh and a resumed run.
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, seed_offset]).generate_state(1)[0]))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers, collate_fn=default_collate,
                      pin_memory=device.type == "cuda", generator=gen, persistent_workers=False)


def _validate(model: torch.nn.Module, val_set: Dataset, config: TrainerConfig, info: DistInfo, step: int,
              autocast, prefix: str = "val") -> dict[str, float]:
    """Batch-size-weighted mean of the model's validation metrics over the whole of `val_set` (the
    validation or the test set), as `<prefix>/<name>`."""
    indices = list(range(info.rank, len(val_set), info.world_size))
    per = max(config.batch_size // info.world_size, 1)
    sums: dict[str, float] = {}
    count = 0
    was_training = model.training
    with _preserved_rng(info.device), torch.no_grad():
        model.eval()
        try:
            if indices:
                loader = DataLoader(Subset(val_set, indices), batch_size=per, shuffle=False,
                                    num_workers=config.num_workers, collate_fn=default_collate,
                                    generator=torch.Generator().manual_seed(config.seed))
                for batch in loader:
                    batch = _to_device(batch, info.device)
                    n = len(next(iter(batch.values()))) if isinstance(batch, dict) and batch else per
                    with autocast():
                        metrics = model.validation_metrics(batch, step)
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + _as_float(v) * n
                    count += n
        finally:
            model.train(was_training)
    total: dict[str, float] = {}
    total_count = 0
    for s, c in all_gather_objects(info, (sums, count)):
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
        total_count += c
    return {f"{prefix}/{k}": v / max(total_count, 1) for k, v in sorted(total.items())}


def _preview(model: torch.nn.Module, dataset: Dataset, device: torch.device) -> dict:
    """The model's TensorBoard previews (meshes, images) of the first item of `dataset`; touches no RNG
    stream and no weights."""
    was_training = model.training
    with _preserved_rng(device), torch.no_grad():
        model.eval()
        try:
            return model.preview(_to_device(default_collate([dataset[0]]), device))
        finally:
            model.train(was_training)


# --- the trainer --------------------------------------------------------------------------------------

def train(model: torch.nn.Module, train_set: Dataset, config: TrainerConfig, out: str | Path,
          val_set: Dataset | None = None, resume: bool = False, run_config: dict | None = None,
          progress: bool = True, test_set: Dataset | None = None, overwrite: bool = False) -> torch.nn.Module:
    """Train `model` (a `Trainable` torch.nn.Module) on `train_set`; checkpoints and logs under `out`.

    train_set / val_set / test_set: map-style datasets whose items are dict[str, Tensor] (default-collated
    into batches). val_set is scored every `val_every` steps and at the end (`val/<name>`); test_set only
    once, after the last step (`test/<name>`), so it can never steer a run. The model's TensorBoard previews
    (`Trainable.preview`) show the first validation item at each validation, or, without a validation set,
    the first training item at each checkpoint step. `out` must be absent, empty,
    the run to `resume` or, with `overwrite`, an earlier run to replace (`training.run_folder`); it is
    locked while the run lasts. resume: continue from out/checkpoints/latest (bit-identically on the
    same device and process count); the given config must equal the saved out/run_config.json, else
    InputError naming the differing fields. run_config: the family's own config (model, data...), saved and compared
    alongside the trainer's. Under torchrun this joins the process group (and leaves it on return);
    only rank 0 writes. Returns the trained model itself (not a DDP wrapper), on config.device (or its
    rank's GPU).
    """
    if not isinstance(model, torch.nn.Module) or not isinstance(model, Trainable):
        raise TypeError("train() needs a torch.nn.Module that is a neuralmorph.training.Trainable")
    if not isinstance(config, TrainerConfig):
        raise TypeError("config must be a TrainerConfig")
    out = Path(out)
    n_train = len(train_set)
    if n_train < 1:
        raise InputError("dataset", "the training set is empty")

    info = init_distributed(config.device)
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    prev_cudnn_benchmark = torch.backends.cudnn.benchmark
    logger = bar = module = loader = lock = None
    try:
        device = info.device
        if config.amp and device.type != "cuda":
            raise InputError("--amp", f"mixed precision runs on CUDA only; device is {device}")
        if config.batch_size % info.world_size:
            raise InputError("--batch-size", f"{config.batch_size} does not split evenly over {info.world_size} processes")
        if config.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)

        # --- the run folder, run config and where to start ------------------------------------------
        if info.is_main:  # refused unless `out` is new, this run's to continue, or ours to replace
            lock = claim_run_folder(out, resume, overwrite)
        barrier(info)
        new_rc = make_run_config(config, run_config)
        saved_rc = load_run_config(out)
        latest = ckpt.latest_checkpoint(out)
        if resume:
            if saved_rc is not None:
                diffs = config_differences(_comparable(saved_rc), _comparable(new_rc))
                if diffs:
                    raise InputError(out / RUN_CONFIG_FILE, "--resume with a config that differs from the saved "
                                     "run's: " + "; ".join(diffs) + " (resume with the saved values, or train into a new --out)")
            elif latest is not None:
                raise InputError(out, f"has checkpoints but no {RUN_CONFIG_FILE}; cannot check the config to resume")
        barrier(info)
        if info.is_main:
            ckpt.remove_stale_temporaries(out)
            if not (resume and saved_rc is not None):
                write_json(out / RUN_CONFIG_FILE, new_rc)
        barrier(info)

        # --- model, optimiser, scaler --------------------------------------------------------------
        model.to(device)
        groups = _parameter_groups(model, config)
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        amp_dtype = None
        scaler = None
        if config.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if amp_dtype == torch.float16:
                scaler = torch.amp.GradScaler("cuda")

        def autocast():
            return torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

        start_step = 0
        saved_rng = None
        if resume and latest is not None:
            weights, opt_tensors, state = ckpt.load_checkpoint(latest)
            try:
                model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
            except RuntimeError as exc:
                raise InputError(latest / ckpt.WEIGHTS_FILE,
                                 f"does not match the model: {str(exc).splitlines()[0]}") from None
            try:
                optimizer.load_state_dict(ckpt.unflatten_optimizer(opt_tensors, state["optimizer"]))
            except (ValueError, KeyError) as exc:
                raise InputError(latest / ckpt.OPTIMIZER_FILE, f"does not match the model's parameters: {exc}") from None
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_step = int(state["step"])
            saved_rng = ckpt.rng_of_rank(opt_tensors, state, info.rank)
            if info.is_main and int(state.get("world_size", 1)) != info.world_size:
                warnings.warn(f"resuming a {state.get('world_size')}-process run with {info.world_size} processes: "
                              "the batches are the same, the per-process random streams are not", stacklevel=2)
            if info.is_main and progress:
                print(f"resuming {out} from step {start_step} ({latest.name})")
        elif resume and info.is_main and progress:
            print(f"nothing to resume in {out}: starting from step 0")

        # --- DDP, data, logging --------------------------------------------------------------------
        module = _LossModule(model)
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                         find_unused_parameters=config.find_unused_parameters)
        sampler = StepBatchSampler(n_train, config.batch_size, config.seed, start_step, config.max_steps,
                                   info.rank, info.world_size)
        loader = _loader(train_set, sampler, config, device, seed_offset=1 + start_step)
        logger = RunLogger(out, info.is_main, resume_step=start_step if resume else None, tensorboard=config.tensorboard)
        from tqdm.auto import tqdm
        bar = tqdm(total=config.max_steps, initial=start_step, desc=f"train {out.name}", unit="step",
                   disable=not (progress and info.is_main), dynamic_ncols=True)

        # RNG last, right before the loop, at the same point for fresh and resumed runs.
        if saved_rng is not None:
            ckpt.restore_rng(saved_rng, device)
        else:
            if resume and start_step > 0 and info.is_main:
                warnings.warn(f"the checkpoint holds no RNG state for rank {info.rank}; reseeding", stacklevel=2)
            seed_everything(config.seed if start_step == 0 else config.seed + start_step, info.rank)

        params = [p for g in optimizer.param_groups for p in g["params"]]
        kill_at = os.environ.get(KILL_HOOK_ENV)
        kill_at = int(kill_at) if kill_at else None
        window_loss = torch.zeros((), dtype=torch.float64, device=device)
        window_logs: dict[str, float] = {}
        window_n = 0
        has_val = val_set is not None and len(val_set) > 0
        model.train()

        for step, batch in zip(range(start_step, config.max_steps), loader):
            done = step + 1
            factor = lr_factor(step, config)
            for g, base in zip(optimizer.param_groups, base_lrs):
                g["lr"] = base * factor
            batch = _to_device(batch, device)
            with autocast():
                loss, logs = module(batch, step)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = None
            if config.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()

            window_loss += loss.detach().double()
            for k, v in (logs or {}).items():
                window_logs[k] = window_logs.get(k, 0.0) + _as_float(v)
            if grad_norm is not None:
                window_logs["grad_norm"] = window_logs.get("grad_norm", 0.0) + _as_float(grad_norm)
            window_n += 1
            bar.update(1)

            if done % config.log_every == 0 or done == config.max_steps:
                values = {"loss": float(window_loss.item()) / window_n,
                          **{k: v / window_n for k, v in window_logs.items()}}
                values = mean_over_ranks(info, values)
                if not math.isfinite(values["loss"]):
                    last = ckpt.latest_checkpoint(out)
                    raise TrainingDiverged(f"{out}: loss became {values['loss']} by step {done}; lower --lr or set "
                                           f"--grad-clip (last checkpoint: {last.name if last else 'none'})")
                logger.log(done, {"lr": optimizer.param_groups[0]["lr"], **values})
                bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                window_loss.zero_()
                window_logs, window_n = {}, 0

            if has_val and ((config.val_every and done % config.val_every == 0) or done == config.max_steps):
                metrics = _validate(model, val_set, config, info, step, autocast)
                logger.log(done, metrics)
                if info.is_main and logger.writer is not None:
                    logger.previews(done, _preview(model, val_set, info.device))
                if metrics and info.is_main:
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if test_set is not None and len(test_set) > 0 and done == config.max_steps:
                metrics = _validate(model, test_set, config, info, step, autocast, prefix="test")
                logger.log(done, metrics)
                if metrics and info.is_main:
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

            checkpoint_now = done == config.max_steps or bool(config.checkpoint_every and done % config.checkpoint_every == 0)
            if not has_val and checkpoint_now and info.is_main and logger.writer is not None:
                # No validation set (e.g. the appearance family's default): the first training item, at
                # each checkpoint, so such runs still show previews. Written before the checkpoint's flush.
                logger.previews(done, _preview(model, train_set, info.device))

            if checkpoint_now:
                rngs = all_gather_objects(info, ckpt.capture_rng(device))
                if info.is_main:
                    logger.flush()
                    state = {"scheduler": {"kind": config.lr_schedule, "base_lrs": base_lrs,
                                           "warmup_steps": config.warmup_steps, "max_steps": config.max_steps,
                                           "last_lr": [g["lr"] for g in optimizer.param_groups]},
                             "scaler": scaler.state_dict() if scaler is not None else None,
                             "world_size": info.world_size, "run_config": new_rc}
                    ckpt.save_checkpoint(out, done, model.state_dict(), optimizer, state, rngs,
                                         config.keep_checkpoints)
                if kill_at is not None and done == kill_at:
                    barrier(info)
                    os.kill(os.getpid(), signal.SIGKILL)

        barrier(info)
        return model
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        torch.use_deterministic_algorithms(prev_deterministic)
        torch.backends.cudnn.benchmark = prev_cudnn_benchmark
        module = loader = None  # drop the DDP wrapper before its process group goes
        if lock is not None:
            lock.release()
        shutdown_distributed(info)
