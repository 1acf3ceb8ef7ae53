"""What a verb writes, checked against what it reads before any work: the output policy of every command.

Every command config is a `Verb`: it declares its outputs (`outputs()`: by default `--out`, a folder of
`out_kind` or a file when that is None) and carries `--overwrite`; every other path among its fields,
nested configs included, is an input (`inputs()`). `claim(cfg)` runs before the verb's runner and
refuses, with one line naming the flag:

- an output the policy of `neuralmorph.atomic` does not allow: anything existing there that is not an
  empty folder, except an earlier output of ours of the same kind when `--overwrite` is given;
- an output equal to, inside or containing one of the inputs (a fit written into the model folder, a
  dataset written over the folder of its source meshes).

The writers check ownership again when they commit (`atomic_dir`, `output_files`), so nothing that
appears meanwhile is replaced either.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Iterator

import tyro

from neuralmorph.atomic import check_output_dir, check_output_file
from neuralmorph.errors import InputError


@dataclass(frozen=True)
class Output:
    """One path a verb writes: a folder of `kind` (its marker's kind), or a file when `kind` is None."""

    flag: str
    path: Path
    kind: str | None
    check: Callable[[bool], None] | None = None
    """The output's own policy, given `overwrite`, where it is not a plain file or folder (a training run
    folder, which `--resume` continues and a running run locks); None: `neuralmorph.atomic`'s."""


@dataclass(frozen=True)
class Verb:
    """Base of every command config: `--overwrite` and the outputs/inputs the policy checks."""

    overwrite: Annotated[bool, tyro.conf.FlagCreatePairsOff] = field(default=False, kw_only=True)
    """Replace an earlier neuralmorph output of the same kind at the output path (never anything else)."""

    out_kind: ClassVar[str | None] = None
    """The kind of folder `--out` is (e.g. "fit"), or None when `--out` is one file."""

    def outputs(self) -> list[Output]:
        """Every path this verb writes (checked before any work)."""
        return [Output("--out", Path(self.out), self.out_kind)]  # type: ignore[attr-defined]

    def inputs(self) -> list[tuple[str, Path]]:
        """(flag, path) of every path among the config's fields that is not an output."""
        written = {o.flag for o in self.outputs()}
        return [(flag, p) for flag, p in _paths(self, "--") if flag not in written]


def _paths(cfg, prefix: str) -> Iterator[tuple[str, Path]]:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        flag = prefix + f.name.replace("_", "-")
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, Path):
                yield flag, v
            elif dataclasses.is_dataclass(v) and not isinstance(v, type):
                yield from _paths(v, flag + ".")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_apart(outputs: list[Output], inputs: list[tuple[str, Path]]) -> None:
    """InputError when an output path is, is inside, or contains an input path (symlinks resolved)."""
    for out in outputs:
        o = _resolved(out.path)
        for flag, path in inputs:
            i = _resolved(path)
            if o == i:
                raise InputError(out.flag, f"{out.path} is also the input {flag}; choose another output path")
            if o in i.parents:
                raise InputError(out.flag, f"{out.path} contains the input {flag} ({path}); choose another output path")
            if i in o.parents:
                raise InputError(out.flag, f"{out.path} is inside the input {flag} ({path}); choose another output path")


def claim(cfg: Verb) -> None:
    """Refuse, before any work, every output of `cfg` that the policy does not allow (see the module)."""
    outputs = cfg.outputs()
    for out in outputs:
        try:
            if out.check is not None:
                out.check(cfg.overwrite)
            elif out.kind is None:
                check_output_file(out.path, cfg.overwrite)
            else:
                check_output_dir(out.path, out.kind, cfg.overwrite)
        except InputError as exc:  # name the flag as well as the path
            raise InputError(f"{out.flag} {exc.where}", exc.problem) from None
    check_apart(outputs, cfg.inputs())
    paths = [_resolved(o.path) for o in outputs]
    for a in paths:
        for b in paths:
            if a != b and a in b.parents:
                raise InputError(outputs[0].flag, f"two outputs nest: {b} is inside {a}")
