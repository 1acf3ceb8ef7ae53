"""Arrays plus JSON metadata in one safetensors file: the storage format of datasets and checkpoints.

safetensors holds no pickled code and can be memory-mapped and read from other languages. Its metadata
is a string map whose key order is not stable, so all metadata goes under one key as sorted JSON: the
same arrays and metadata always give the same bytes.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from neuralmorph.atomic import atomic_file
from neuralmorph.errors import InputError

_META_KEY = "neuralmorph"


def save_arrays(path: str | PathLike, arrays: dict[str, np.ndarray | torch.Tensor], meta: dict) -> None:
    """Write `arrays` (name -> numpy array, or torch tensor: any torch dtype, bf16 included) and
    JSON-serialisable `meta` to `path`, atomically."""
    metadata = {_META_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_file(path) as tmp:
        if any(torch.is_tensor(v) for v in arrays.values()):
            # clone: safetensors refuses tensors that share memory (tied weights); contiguous: dense storage
            tensors = {k: torch.as_tensor(v).detach().to("cpu").contiguous().clone() for k, v in arrays.items()}
            safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        else:
            tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
            safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata)


def load_arrays(path: str | PathLike, framework: str = "numpy") -> tuple[dict, dict]:
    """Read a file written by `save_arrays` as numpy arrays (framework "numpy") or torch tensors ("pt");
    InputError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with safe_open(str(path), framework=framework) as fh:
            meta = json.loads((fh.metadata() or {}).get(_META_KEY, "{}"))
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable safetensors file ({exc})") from None
    return arrays, meta
