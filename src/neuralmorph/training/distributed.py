"""torch.distributed set-up for the trainer: one process per device, launched by `torchrun`.

`torchrun --nproc-per-node K ...` starts K copies of the same command with RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in their environment. `init_distributed` reads those variables
and joins the process group (gloo on CPU, NCCL on CUDA); without them (a plain `python` or `neuralmorph`
run) it is a single process and nothing is initialised. Everything the trainer writes to disk is written
by rank 0 only (`is_main_process`).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from neuralmorph.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job: rank among world_size processes, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False      # True when `init_distributed` created the process group (and must end it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"${name}", f"must be an integer, got {value!r}") from None


def resolve_device(device: str) -> torch.device:
    """Parse a device string and check it exists here; InputError ('--device') when it does not."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError("--device", f"not a torch device: {device!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device", f"{device!r} asked for, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError("--device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("--device", "'mps' asked for, but MPS is not available on this machine")
    return dev


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun job described by the environment, or describe a single process.

    device: the configured device ("cpu", "cuda", "cuda:1", ...). Under torchrun with CUDA every rank
    takes `cuda:LOCAL_RANK` (one GPU per process) and NCCL; on CPU the backend is gloo.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError("--nproc-per-node", f"local rank {local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        owns = True
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise InputError("torch.distributed", f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                                              f"disagrees with RANK={rank}, WORLD_SIZE={world_size}")
    return DistInfo(rank, world_size, local_rank, dev, owns)


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if `init_distributed` created it (callers put a barrier before, on success).

    Garbage is collected around it, a precaution: a gloo group (or work holding it) that is freed only at
    interpreter shutdown can abort the process there ("terminate called without an active exception"),
    which a two-process CPU run once did after training had succeeded (not reproduced in ~50 runs since).
    """
    if info.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def is_main_process() -> bool:
    """True on rank 0 (or in a single process): the process that writes files.

    Works inside and after `train(...)`: it asks the process group when one is up, else torchrun's RANK.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj) -> list:
    """Every rank's `obj` (picklable, sent between ranks only, never written to disk), in rank order."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over ranks (every rank must pass the same keys)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}
