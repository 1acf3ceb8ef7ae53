"""The base of every typed config: a frozen dataclass that goes to and from plain JSON-able dicts.

Configs validate themselves in `__post_init__` (raising `InputError` naming the flag), are saved next to
whatever they made (model checkpoints, training runs), and are read back strictly: an unknown field is
an error, never silently dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from neuralmorph.errors import InputError


@dataclass(frozen=True)
class Config:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config"):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(where, f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
        return cls(**d)
