"""Command-line flags generated from dataclass fields (:class:`jaxbyz.config.Config` and the
train command's run options), so that a field's flag, type, default and help text are written
once, beside the field.

A field's metadata (see :func:`jaxbyz.config.flag`) gives its help text and how its value is
parsed: by the field's type (``int``, ``float``, ``str``, optionally ``None``), as ``key:value``
pairs (``kind="keyval"``, the paper's ``--gar-args factor:1.5``), or as a switch
(``kind="switch"``). ``ignored`` marks a flag of the paper's code that has no meaning here: it is
accepted, and :func:`notes` says so once.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from jaxbyz.config import parse_keyval


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors (an unknown flag, a value of the wrong type) are
    one line, as every other refusal of the commands: the usage is in ``--help``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def flag_name(field: dataclasses.Field) -> str:
    """``--nb-workers`` for the field ``nb_workers`` (or the field's ``flag`` metadata)."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _scalar_type(annotation: Any) -> type:
    """``int`` for ``int`` or ``int | None`` (the type that parses one command-line value)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_fields(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls``. A flag's default is the paper's
    ``attack.py`` default where the field records one (metadata ``paper``), so that the paper's
    command lines keep their meaning, else the field's default."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        kind, own = meta.get("kind"), getattr(defaults, field.name)
        default = meta["paper"] if "paper" in meta else own
        text = meta["help"]
        if "choices" in meta:
            text += f"; one of: {', '.join(meta['choices']())}"
        if "ignored" in meta:
            text += f" (accepted; no effect here: {meta['ignored']})"
        if default != own:
            text += f" (Config: {own})"
        if kind == "switch":
            parser.add_argument(flag_name(field), dest=field.name, action="store_true", help=text)
        elif kind == "keyval":
            parser.add_argument(
                flag_name(field),
                dest=field.name,
                nargs="*",
                default=None,
                metavar="KEY:VALUE",
                help=text,
            )
        else:
            if default is not None:
                text += " (default %(default)s)"
            parser.add_argument(
                flag_name(field),
                dest=field.name,
                type=_scalar_type(hints[field.name]),
                default=default,
                metavar=meta.get("metavar"),
                help=text,
            )


def values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The field values of ``cls`` parsed into ``args``, converted as their metadata says."""
    out = {}
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        value = getattr(args, field.name)
        kind = field.metadata.get("kind")
        if kind == "keyval":
            value = parse_keyval(value, flag_name(field))
        elif field.metadata.get("off_when_not_positive") and value is not None and value <= 0:
            value = None
        out[field.name] = value
    return out


def notes(cls: type, options: Any) -> list[str]:
    """One line per flag that was given but has no meaning here (``ignored`` metadata)."""
    defaults = cls()
    return [
        f"note: {flag_name(f)} {getattr(options, f.name)!r} has no effect here: "
        f"{f.metadata['ignored']}"
        for f in dataclasses.fields(cls)
        if "ignored" in f.metadata and getattr(options, f.name) != getattr(defaults, f.name)
    ]
