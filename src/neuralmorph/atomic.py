"""Write files and folders so that a failure never leaves half-written output behind.

Writers get a temporary path next to the final one (same folder, so the rename is atomic on one file
system; same suffix, so writers that infer the format from it still work) and the rename happens only
when the block finishes without an exception.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (an existing folder is swapped out)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp_path
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp_path, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path)


def read_json(path: str | os.PathLike, missing: str = "file not found"):
    """The JSON value stored in `path`; InputError naming the file when it is missing (`missing` says so)
    or is not valid JSON."""
    import json

    from neuralmorph.errors import InputError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None


def write_json(path: str | os.PathLike, data) -> None:
    """Write `data` as indented, strict JSON (NaN and infinities become null), atomically."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n")
