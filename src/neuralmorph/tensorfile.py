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
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from neuralmorph.atomic import atomic_file
from neuralmorph.errors import InputError

_META_KEY = "neuralmorph"


def save_arrays(path: str | PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `arrays` (name -> array) and JSON-serialisable `meta` to `path`, atomically."""
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def load_arrays(path: str | PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by `save_arrays`; InputError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {}).get(_META_KEY, "{}"))
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable safetensors file ({exc})") from None
    return arrays, meta
