"""Write files and folders so that a failure never leaves half-written output behind, and never
replaces what the user owns.

Writers get a temporary path next to the final one (same folder, so the rename is atomic on one file
system; same suffix, so writers that infer the format from it still work) and the rename happens only
when the block finishes without an exception. Temporary names carry the writing process's id, so the
leftovers of a killed run are removed by the next write to the same place.

Every folder written here holds a marker file (`MARKER`) whose first line names the kind of output (a
model, a fit, a dataset...). An existing folder is replaced only when it is empty or carries the marker
of the same kind (an output of ours: a model is never replaced by a fit); an existing file where a
folder is to go, or a folder where a file is to go, is refused. Written files and folders follow the umask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from neuralmorph.errors import InputError

MARKER = ".neuralmorph"
"""The file in every folder this module writes: what tells an output of ours from a folder of the user's."""
_TMP = ".nmtmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(final: Path) -> str:
    return f".{final.name}{_TMP}{os.getpid()}-"


def _remove_stale_temps(final: Path) -> None:
    """Remove temporaries left next to `final` by writers that no longer run (killed mid-write)."""
    lead = f".{final.name}{_TMP}"
    for entry in final.parent.glob(f"{lead}*"):
        pid = entry.name[len(lead):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _final(path: str | os.PathLike) -> Path:
    final = Path(path).absolute()
    if final.name in ("", ".", ".."):
        final = final.resolve()
    if not final.name:
        raise InputError(path, "cannot write over the file-system root")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    return final


def check_output_dir(path: str | os.PathLike, kind: str) -> None:
    """InputError unless `path` may receive a folder output of `kind` (e.g. "model", "fit"): absent, an
    empty folder, or an output of ours of the same kind (its `MARKER` names the kind). Verbs call it
    before any work; `atomic_dir` checks again when it commits."""
    final = Path(path)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise InputError(path, "exists and is not a folder; choose another output path")
    if not final.is_dir() or not any(final.iterdir()):
        return
    marker = final / MARKER
    if not marker.is_file():
        raise InputError(path, "is a folder that neuralmorph did not write (it holds other files); choose another "
                               "output path or empty it first")
    found = marker.read_text().split("\n", 1)[0].strip()
    if found != kind:
        raise InputError(path, f"holds a neuralmorph {found or 'output'}, not a {kind}; choose another output path")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed."""
    final = _final(path)
    if final.is_dir() and not final.is_symlink():
        raise InputError(path, "is a folder; give a file name")
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (refused unless `check_output_dir` allows
    it: an existing folder is swapped out only when it is empty or an output of ours of the same `kind`)."""
    final = _final(path)
    check_output_dir(final, kind)
    tmp_path = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        yield tmp_path
        (tmp_path / MARKER).write_text(f"{kind}\nwritten by neuralmorph; a later run of the same kind may replace "
                                       "this folder\n")
        os.chmod(tmp_path, 0o777 & ~_umask())  # mkdtemp makes 0700
        check_output_dir(final, kind)  # nothing else appeared there meanwhile
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
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
