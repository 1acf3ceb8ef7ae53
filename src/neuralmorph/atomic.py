"""Write files and folders so that a failure never leaves half-written output behind, and never
replaces what the user owns.

Writers get a temporary path next to the final one (same folder, so the rename is atomic on one file
system; same suffix, so writers that infer the format from it still work) and the rename happens only
when the block finishes without an exception. Temporary names carry the writing process's id, so the
leftovers of a killed run are removed by the next write to the same place.

What is ours: every folder written here holds a marker file (`MARKER`) whose first line names the kind of
output (a model, a fit, a dataset...); every file a verb writes as its output carries `SIGNATURE` in its
first bytes (a PLY/OBJ/OFF comment, the STL header, the glTF generator, a PNG text chunk, a JSON key).

The policy (`check_output_dir`, `check_output_file`): an output path may be absent or an empty folder;
anything else there is refused, except an earlier output of ours of the same kind when the user passed
`overwrite` (a model is never replaced by a fit, a user's file never by anything). An existing file
where a folder is to go, or a folder where a file is to go, is refused. Written files and folders
follow the umask.
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
SIGNATURE = "written by neuralmorph"
"""In the first bytes of every file a verb writes as its output: what tells a file of ours from the user's."""
_JSON_SIGNATURE = '"written_by": "neuralmorph"'
_SIGNATURE_WINDOW = 4096


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


def _refuse_existing(path, what: str, overwrite: bool, ours: bool) -> None:
    if not ours:
        raise InputError(path, f"exists and is not an output of neuralmorph ({what}); choose another output path")
    if not overwrite:
        raise InputError(path, f"holds an earlier neuralmorph {what}; pass --overwrite to replace it, or choose "
                               "another output path")


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of neuralmorph output in folder `path` (its `MARKER`'s first line), or None when it has none."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        with open(marker, "rb") as fh:
            return fh.read(200).decode("utf-8", "replace").split("\n", 1)[0].strip() or "output"
    except OSError:
        return None


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> None:
    """InputError unless `path` may receive a folder output of `kind` (e.g. "model", "fit"): absent, an
    empty folder, or (with `overwrite`) an output of ours of the same kind. Verbs call it before any work;
    `atomic_dir` checks again when it commits."""
    final = Path(path)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise InputError(path, "exists and is not a folder; choose another output path")
    if not final.is_dir() or not any(final.iterdir()):
        return
    found = output_kind(final)
    if found is None:
        raise InputError(path, "is a folder that neuralmorph did not write (it holds other files); choose another "
                               "output path or empty it first")
    if found != kind:
        raise InputError(path, f"holds a neuralmorph {found}, not a {kind}; choose another output path")
    _refuse_existing(path, kind, overwrite, ours=True)


def is_signed(path: str | os.PathLike) -> bool:
    """Whether the file at `path` was written by neuralmorph as an output (`SIGNATURE` in its first bytes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SIGNATURE_WINDOW)
    except OSError:
        return False
    return SIGNATURE.encode() in head or _JSON_SIGNATURE.encode() in head


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> None:
    """InputError unless `path` may receive a file output: absent, or (with `overwrite`) a file that
    neuralmorph wrote (signed). Verbs call it before any work; `output_files` checks again when it commits."""
    final = Path(path)
    if final.name in ("", ".", ".."):
        raise InputError(path, "is a folder; give a file name")
    if final.is_dir() and not final.is_symlink():
        raise InputError(path, "is a folder; give a file name")
    for parent in final.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(path, f"cannot be written: {parent} is a file, not a folder")
            break
    if final.exists() or final.is_symlink():
        if final.is_symlink() or not final.is_file():
            raise InputError(path, "exists and is not a regular file; choose another output path")
        _refuse_existing(path, "file", overwrite, ours=is_signed(final))


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed. For the
    files inside outputs of ours (checkpoints, logs, a fit's files); a verb's own file outputs go
    through `output_files`, which applies the policy."""
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
def output_files(*paths: str | os.PathLike, overwrite: bool = False) -> Iterator[tuple[Path, ...]]:
    """Yield one temporary path per output file (e.g. a mesh and its .json sidecar); when the block
    finishes, every output is checked again (`check_output_file`) and all are renamed into place
    together; on failure none is. Writers must sign what they write (`save_mesh`, `save_png` and
    `write_json` do)."""
    for p in paths:
        check_output_file(p, overwrite)
    finals = [_final(p) for p in paths]
    if len({str(f) for f in finals}) != len(finals):
        raise InputError(paths[0], "two outputs of this command would go to the same file")
    temps: list[Path] = []
    try:
        for f in finals:
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(f), suffix=f.suffix, dir=f.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield tuple(temps)
        for p, tmp in zip(paths, temps):
            check_output_file(p, overwrite)  # nothing of the user's appeared there meanwhile
            os.chmod(tmp, 0o666 & ~_umask())
        for f, tmp in zip(finals, temps):
            os.replace(tmp, f)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` (refused unless `check_output_dir` allows
    it: an existing folder is swapped out only when it is empty, or an output of ours of the same `kind`
    and `overwrite` is set)."""
    final = _final(path)
    check_output_dir(final, kind, overwrite)
    tmp_path = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        yield tmp_path
        (tmp_path / MARKER).write_text(f"{kind}\nwritten by neuralmorph; a later run of the same kind may replace "
                                       "this folder when given --overwrite\n")
        os.chmod(tmp_path, 0o777 & ~_umask())  # mkdtemp makes 0700
        check_output_dir(final, kind, overwrite)  # nothing else appeared there meanwhile
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


def work_folder(path: str | os.PathLike, kind: str) -> Path:
    """A folder of ours that a command keeps between its runs (a benchmark's data and models): made, with
    the marker, when absent or empty; reused when it is ours of `kind`; anything else is refused. Whatever
    is inside is the command's to replace."""
    final = Path(path)
    if final.exists() and not (final.is_dir() and not any(final.iterdir())):
        check_output_dir(final, kind, overwrite=True)
        return final
    final.mkdir(parents=True, exist_ok=True)
    (final / MARKER).write_text(f"{kind}\nwritten by neuralmorph; kept between runs, reused by the next\n")
    return final


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
    """Write `data` as indented, strict JSON (NaN and infinities become null), atomically; a dict gets
    the signature key `"written_by": "neuralmorph"` first."""
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

    if isinstance(data, dict):  # the signature goes first, within the bytes `is_signed` reads
        data = {"written_by": "neuralmorph", **{k: v for k, v in data.items() if k != "written_by"}}
    text = json.dumps(clean(data), indent=2, allow_nan=False) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)
