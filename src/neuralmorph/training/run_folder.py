"""A training run's folder: claimed before the run starts, locked while it runs.

A run folder is an output of ours of kind `RUN_KIND` (`neuralmorph.atomic.MARKER`). `claim_run_folder`
creates it (absent or empty), continues it (`resume`), or empties it for a fresh run (`overwrite`, only
when it is ours); anything else is refused. While the run lasts the folder holds `LOCK_FILE` with the
writer's process id and host, taken with an exclusive create, so a second run into the same folder is
refused; a lock whose process is gone (a killed run) is reported and taken over.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from neuralmorph.atomic import MARKER, check_output_dir, output_kind
from neuralmorph.errors import InputError

RUN_KIND = "training run"
LOCK_FILE = "run.lock"


class RunLock:
    """The lock of one run folder; `release()` removes it (only if it is still this process's)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.token = f"{os.getpid()} {socket.gethostname()}\n"

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _holder(self.path)
                if holder is not None:
                    raise InputError(self.path.parent, f"another training run (pid {holder}) is writing here; wait "
                                                       "for it to finish or choose another --out") from None
                stale = (self.path.read_text(errors="replace").split() or ["?"])[0]
                print(f"neuralmorph: warning: {self.path}: removed the stale lock of pid {stale}, a run that no longer "
                      "runs", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.token)
            return
        raise InputError(self.path, "could not take the run's lock (another run keeps taking it)")

    def release(self) -> None:
        try:
            if self.path.read_text() == self.token:
                self.path.unlink()
        except OSError:
            pass


def _holder(lock: Path) -> int | None:
    """The pid holding `lock` when that process still runs on this host; None for a stale lock."""
    try:
        pid_text, host = (lock.read_text(errors="replace").split() + ["", ""])[:2]
    except OSError:
        return None
    if not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if host and host != socket.gethostname():
        return pid  # another machine's run (shared file system): cannot tell, so never steal it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def check_run_folder(out: str | Path, resume: bool, overwrite: bool) -> bool:
    """InputError unless `out` may be this run's folder (see `claim_run_folder`); changes nothing.
    Returns whether `out` already is a run folder of ours."""
    if resume and overwrite:
        raise InputError("--resume/--overwrite", "give one: --resume continues the run in --out, --overwrite "
                                                 "replaces it")
    out = Path(out)
    ours = out.is_dir() and output_kind(out) == RUN_KIND
    if ours and (out / LOCK_FILE).exists() and _holder(out / LOCK_FILE) is not None:
        raise InputError(out, f"another training run (pid {_holder(out / LOCK_FILE)}) is writing here; wait for it "
                              "to finish or choose another --out")
    if resume:
        if not ours:
            raise InputError(out, "holds no training run of neuralmorph to resume" if out.exists()
                             else "does not exist: nothing to resume")
    elif not (out.is_dir() and not any(out.iterdir())):
        if ours and not overwrite:
            raise InputError(out, "already holds a training run; pass --resume to continue it, --overwrite to "
                                  "replace it, or choose another --out")
        if out.exists():
            check_output_dir(out, RUN_KIND, overwrite)
    return ours


def claim_run_folder(out: str | Path, resume: bool, overwrite: bool) -> RunLock:
    """Make `out` this run's folder and lock it; returns the lock (release it when the run ends).

    Refused: a folder that is not a run of ours, a run that another process is writing, an earlier run
    without `resume` or `overwrite`, `resume` where there is no run. With `overwrite` the earlier run's
    files are removed once the lock is held.
    """
    out = Path(out)
    ours = check_run_folder(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if not ours:  # a new run folder: marked ours before it is locked, so a racing run sees a run of ours
        (out / MARKER).write_text(f"{RUN_KIND}\nwritten by neuralmorph; `--resume` continues this run, "
                                  "`--overwrite` replaces it\n")
    lock = RunLock(out)
    lock.acquire()
    if ours and overwrite and not resume:
        try:
            for entry in out.iterdir():
                if entry.name not in (LOCK_FILE, MARKER):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except BaseException:
            lock.release()
            raise
    return lock
