"""The `neuralmorph` command line: builds the one command from `neuralmorph.commands` with tyro, runs
the chosen verb's runner and prints errors.

Every verb's config and runner, and the `COMMANDS` registry itself, live in `neuralmorph.commands`;
this module holds only the plumbing (`_union`, `_runners`, `_parse`, `main`). Errors the user can fix
(`NeuralmorphError`, which configs also raise from their own validation) are printed as one line with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Callable, Union

import tyro

from neuralmorph.commands import COMMANDS, GROUP_HELP
from neuralmorph.errors import NeuralmorphError

__all__ = ["COMMANDS", "main"]


def _union(commands: dict) -> object:
    """The tyro union type for one registry level: each verb (or verb group) becomes a named subcommand.

    Groups appear as empty placeholder dataclasses carrying their help line; `_parse` walks into a group
    by itself, so a group works the same with one member or many.
    """
    members = []
    for name, entry in commands.items():
        if isinstance(entry, dict):
            placeholder = dataclass(frozen=True)(type(f"{name.title()}Group", (), {"__doc__": GROUP_HELP.get(name, name)}))
            members.append(Annotated[placeholder, tyro.conf.subcommand(name)])
        else:
            members.append(Annotated[entry[0], tyro.conf.subcommand(name)])
    return Union[tuple(members)]  # type: ignore[return-value]


def _runners(commands: dict) -> dict[type, Callable]:
    out = {}
    for entry in commands.values():
        out.update(_runners(entry) if isinstance(entry, dict) else {entry[0]: entry[1]})
    return out


def _parse(args: list[str]) -> object:
    """Walk verb groups (`data`, `train`) by hand, then let tyro parse the verb's own flags."""
    level, prog = COMMANDS, "neuralmorph"
    while args and isinstance(level.get(args[0]), dict):
        prog, level, args = f"{prog} {args[0]}", level[args[0]], args[1:]
    if len(level) == 1:
        # tyro folds a one-member union into its member, which would drop the verb's name.
        ((name, (config_cls, _)),) = level.items()
        if not args or args[0] != name:
            wants_help = args[:1] in (["-h"], ["--help"])
            summary = (config_cls.__doc__ or "").strip().splitlines()[0]
            print(f"usage: {prog} {{{name}}}\n\n  {name}: {summary}", file=sys.stdout if wants_help else sys.stderr)
            raise SystemExit(0 if wants_help else 2)
        return tyro.cli(config_cls, args=args[1:], prog=f"{prog} {name}")
    return tyro.cli(_union(level), args=args, prog=prog, config=(tyro.conf.OmitSubcommandPrefixes,))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = _parse(list(args))
        _runners(COMMANDS)[type(cfg)](cfg)
    except NeuralmorphError as exc:
        print(f"neuralmorph: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("neuralmorph: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        raise SystemExit(1) from None
