"""Training checkpoints: safetensors for every tensor, JSON for everything else, never pickle.

Layout under a run folder `out/`:

    out/checkpoints/step_0000500/
        weights.safetensors     the model's state_dict (parameters and buffers), names as in the module
        optimizer.safetensors   every tensor of the optimiser state, named `state.<param index>.<key>`
                                (e.g. `state.3.exp_avg`), plus per-rank RNG byte states `rng.<rank>.<kind>`
        state.json              step, scheduler state, the optimiser's param-group hyper-parameters and
                                non-tensor state, AMP grad-scaler state, the rest of the RNG states,
                                the run config
    out/checkpoints/latest      text file holding the name of the newest complete checkpoint folder

Each checkpoint folder is written to a temporary sibling and renamed when complete (`atomic_dir`), then
`latest` is atomically replaced, then all but the newest `keep` checkpoints are removed. A process killed
at any moment leaves either the previous or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from neuralmorph.atomic import atomic_dir, atomic_file, read_json
from neuralmorph.errors import InputError
from neuralmorph.tensorfile import load_arrays, save_arrays

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FORMAT = "neuralmorph.checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# --- tensors <-> files --------------------------------------------------------------------------------

# --- optimiser state ----------------------------------------------------------------------------------

def _json_value(x, where: str):
    """JSON form of a hyper-parameter or state scalar (tuples become lists; tensors are handled by callers)."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (list, tuple)):
        return [_json_value(v, where) for v in x]
    if isinstance(x, dict):
        return {str(k): _json_value(v, where) for k, v in x.items()}
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    raise TypeError(f"{where}: cannot store {type(x).__name__} in a checkpoint without pickling")


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> (tensors by flat name, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = _json_value(value, f"optimizer state {idx}.{key}")
    groups = []
    for g, group in enumerate(sd["param_groups"]):
        out = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"param_groups.{g}.{key}"] = value
                out[key] = {"__tensor__": f"param_groups.{g}.{key}"}
            else:
                out[key] = _json_value(value, f"optimizer param group {g}.{key}")
        groups.append(out)
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], spec: dict) -> dict:
    """Inverse of `flatten_optimizer`: a dict for optimizer.load_state_dict."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in spec.get("state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for group in spec["param_groups"]:
        g = {}
        for key, value in group.items():
            if isinstance(value, dict) and "__tensor__" in value:
                g[key] = tensors[value["__tensor__"]]
            elif key == "betas" and isinstance(value, list):
                g[key] = tuple(value)
            else:
                g[key] = value
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- RNG states ---------------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict:
    """This process's torch (CPU and, on CUDA, its device), numpy-global and python RNG states.

    Returns {"tensors": {kind: uint8/uint32 tensor}, "json": {...}}: byte states go to safetensors.
    """
    tensors = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, pstate, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(pstate, dtype=torch.int64)
    return {"tensors": tensors,
            "json": {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                     "python": {"version": version, "gauss_next": gauss_next}}}


def restore_rng(saved: dict, device: torch.device) -> None:
    """Inverse of `capture_rng`."""
    t, j = saved["tensors"], saved["json"]
    torch.set_rng_state(t["torch"].to(torch.uint8).cpu())
    if device.type == "cuda" and "cuda" in t:
        torch.cuda.set_rng_state(t["cuda"].to(torch.uint8).cpu(), device)
    n = j["numpy"]
    np.random.set_state((n["kind"], t["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = j["python"]
    random.setstate((p["version"], tuple(int(v) for v in t["python"].tolist()), p["gauss_next"]))


# --- whole checkpoints --------------------------------------------------------------------------------

def save_checkpoint(out: Path, step: int, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    state: dict, rng_per_rank: list[dict], keep: int) -> Path:
    """Write out/checkpoints/step_XXXXXXX atomically, point `latest` at it, keep the newest `keep`.

    state: JSON-able trainer state (scheduler, scaler, run config...); `step` and the optimiser's JSON part
    are added here. rng_per_rank: `capture_rng()` of every rank, in rank order.
    """
    root = Path(out) / CHECKPOINT_DIR
    name = step_dir_name(step)
    opt_tensors, opt_json = flatten_optimizer(optimizer)
    rng_json = {}
    for rank, rng in enumerate(rng_per_rank):
        for kind, tensor in rng["tensors"].items():
            opt_tensors[f"rng.{rank}.{kind}"] = tensor
        rng_json[str(rank)] = rng["json"]
    full_state = {"format": FORMAT, "step": step, **state, "optimizer": opt_json, "rng": rng_json}
    with atomic_dir(root / name, "checkpoint", overwrite=True) as tmp:  # our run folder: a rerun step replaces its own
        save_arrays(tmp / WEIGHTS_FILE, model_state, {"format": FORMAT, "step": step})
        save_arrays(tmp / OPTIMIZER_FILE, opt_tensors, {"format": FORMAT, "step": step})
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1, sort_keys=True, allow_nan=True) + "\n")
    with atomic_file(root / LATEST_FILE) as tmp:
        tmp.write_text(name + "\n")
    prune_checkpoints(root, keep)
    return root / name


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under `root` (out/checkpoints) as (step, path), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints (never the one `latest` names) and stale temp folders."""
    ckpts = list_checkpoints(root)
    latest = latest_checkpoint(root.parent)
    for _, path in ckpts[:-keep] if keep > 0 else []:
        if latest is None or path.resolve() != latest.resolve():
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(out: Path) -> None:
    """Delete temp folders a killed writer left under out/checkpoints (`.step_...`)."""
    root = Path(out) / CHECKPOINT_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{LATEST_FILE}.") and p.is_file():
                p.unlink(missing_ok=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The folder `out/checkpoints/latest` names; if the pointer is missing or stale, the newest complete one."""
    root = Path(out) / CHECKPOINT_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_bytes().decode("utf-8", errors="replace").strip()  # damaged: stale, like a missing one
        if _STEP_DIR.match(name) and (root / name / STATE_FILE).is_file():
            return root / name
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model state, optimizer-file tensors, state.json) of one checkpoint folder, on the CPU."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    state = read_json(state_path, "checkpoint state not found")
    if not isinstance(state, dict):
        raise InputError(state_path, f"must hold a JSON object (a {FORMAT} checkpoint's state), got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise InputError(state_path, f"not a {FORMAT} checkpoint (format {state.get('format')!r})")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InputError(state_path, f"'step' must be an integer >= 0, got {step!r}")
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) \
            or not all(isinstance(g, dict) for g in opt["param_groups"]) \
            or not isinstance(opt.get("state_scalars", {}), dict):
        raise InputError(state_path, "'optimizer' must be an object with a 'param_groups' list of objects")
    if not isinstance(state.get("rng", {}), dict):
        raise InputError(state_path, "'rng' must be an object")
    weights, _ = load_arrays(folder / WEIGHTS_FILE, framework="pt")
    opt_tensors, _ = load_arrays(folder / OPTIMIZER_FILE, framework="pt")
    return weights, opt_tensors, state


def rng_of_rank(opt_tensors: dict[str, torch.Tensor], state: dict, rank: int) -> dict | None:
    """The saved `capture_rng()` of one rank, or None if the checkpoint has none for it."""
    j = state.get("rng", {}).get(str(rank))
    if j is None:
        return None
    prefix = f"rng.{rank}."
    return {"tensors": {k[len(prefix):]: v for k, v in opt_tensors.items() if k.startswith(prefix)}, "json": j}
