"""The `neuralmorph` command line: builds the one command from `neuralmorph.commands` with tyro, runs
the chosen verb's runner and prints errors.

Every verb's config and runner, and the `COMMANDS` registry itself, live in `neuralmorph.commands`;
this module holds only the plumbing (`_union`, `_runners`, `_parse`, `main`) and how --help reads
(`REGISTRY`: an optional flag shows its value's kind, a field's docstring flows as one paragraph). Errors the user can fix
(`NeuralmorphError`, which configs also raise from their own validation) and failures of the file system
(`OSError`: a full or read-only disk, a busy file...) are printed as one line with a non-zero exit;
anything else is a bug and keeps its traceback. Before a verb that writes runs, its outputs are
checked against the output policy (`neuralmorph.outputs.claim`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from dataclasses import dataclass
from typing import Annotated, Callable, Union, get_args, get_origin

import tyro
from tyro.constructors import (ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo, StructConstructorSpec,
                               StructTypeInfo)

from neuralmorph.commands import COMMANDS, GROUP_HELP
from neuralmorph.errors import NeuralmorphError
from neuralmorph.outputs import Verb, claim

__all__ = ["COMMANDS", "main"]


REGISTRY = ConstructorRegistry()
"""How flag values are read and shown, where neuralmorph differs from tyro's defaults (`_optional`)."""


@REGISTRY.primitive_rule
def _optional(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """`X | None` flags of one value read like `X` in --help (`--landmarks PATH`, not `{None}|PATH`):
    leaving the flag out gives its default, and the word None still sets None where the help says what
    None means (e.g. `--grad-clip None`). Other unions keep tyro's rule (None returned)."""
    if get_origin(info.type) not in (Union, types.UnionType):
        return None
    args = get_args(info.type)
    inner = [a for a in args if a is not type(None)]
    if len(args) != 2 or len(inner) != 1:
        return None
    spec = ConstructorRegistry.get_primitive_spec(PrimitiveTypeInfo.make(inner[0], info.markers))
    if not isinstance(spec, PrimitiveConstructorSpec) or spec.nargs != 1:
        return None
    return PrimitiveConstructorSpec(
        nargs=1, metavar=spec.metavar,
        instance_from_str=lambda strings: None if strings == ["None"] else spec.instance_from_str(strings),
        is_instance=lambda x: x is None or spec.is_instance(x),
        str_from_instance=lambda x: ["None"] if x is None else spec.str_from_instance(x),
        choices=None if spec.choices is None else (*spec.choices, "None"))


def _paragraphs(text: str | None) -> str | None:
    """Field help as flowing paragraphs: tyro keeps the source line breaks of a multi-line field docstring
    (its indented continuation lines read as new lines), which --help then shows mid-sentence at any
    terminal width. Single line breaks become spaces; blank lines still separate paragraphs."""
    if text is None:
        return None
    return "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text.strip()))


_reading_struct = False


@REGISTRY.struct_rule
def _flowing_help(info: StructTypeInfo) -> StructConstructorSpec | None:
    """Dataclass configs as tyro builds them, with every field's help passed through `_paragraphs`."""
    global _reading_struct
    if _reading_struct or not dataclasses.is_dataclass(info.type):
        return None
    _reading_struct = True  # ask tyro's own rules for the spec, skipping this one
    try:
        spec = ConstructorRegistry.get_struct_spec(info)
    finally:
        _reading_struct = False
    if not isinstance(spec, StructConstructorSpec):
        return None

    def flowing(helptext):
        return lambda: _paragraphs(helptext() if callable(helptext) else helptext)

    return dataclasses.replace(spec, fields=tuple(dataclasses.replace(f, helptext=flowing(f.helptext))
                                                  for f in spec.fields))


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
        return tyro.cli(config_cls, args=args[1:], prog=f"{prog} {name}", registry=REGISTRY)
    return tyro.cli(_union(level), args=args, prog=prog, config=(tyro.conf.OmitSubcommandPrefixes,),
                    registry=REGISTRY)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = _parse(list(args))
        if isinstance(cfg, Verb):  # verbs that write: their outputs are checked before any work
            claim(cfg)
        _runners(COMMANDS)[type(cfg)](cfg)
    except NeuralmorphError as exc:
        print("neuralmorph: error: " + " ".join(str(exc).split("\n")), file=sys.stderr)  # one line, always
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("neuralmorph: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        raise SystemExit(1) from None
    except OSError as exc:  # the file system refused (full, read-only, busy, a folder in the way...)
        print(f"neuralmorph: error: {_os_error(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


def _os_error(exc: OSError) -> str:
    """One line for a failed read or write: the path(s) and what the system said."""
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {what}" if where else f"{what} (operating-system error)"
