"""The flags of `tilt train`: one per TrainConfig field (its trailing comment in config.py is the help text, its
`# --- group` the help group, as the README's flag table groups them), plus TRL's own option names
(trl_options.py), each with what it does here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import get_args, get_origin, get_type_hints

from ..config import ALIASES, TrainConfig
from ..trl_options import MAPPED, NOTED, REFUSED, foreign_kind

FIELD_LINE = re.compile(r"^    (\w+): [^#]*?(?:#\s?(.*))?$")
GROUP_LINE = re.compile(r"^    # --- (.+)$")
CONTINUED = re.compile(r"^        +# (.*)$")  # a comment indented under a field line continues its help


def field_help() -> dict[str, tuple[str, str]]:
    """field name -> (group, help), read once from TrainConfig's source: its trailing comments."""
    out, group, last = {}, "options", None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for line in inspect.getsource(TrainConfig).splitlines():
        if m := GROUP_LINE.match(line):
            group, last = m.group(1), None
        elif (m := CONTINUED.match(line)) and last is not None:
            out[last] = (group, f"{out[last][1]} {m.group(1).strip()}")
        elif (m := FIELD_LINE.match(line)) and m.group(1) in names:
            last = m.group(1)
            out[last] = (group, (m.group(2) or "").strip())
        else:
            last = None
    return out


def flag_names(name: str) -> list[str]:
    names = {f"--{name.replace('_', '-')}", f"--{name}"}
    names |= {f"--{a}" for a, target in ALIASES.items() if target == name}
    names |= {f"--{a.replace('_', '-')}" for a, target in ALIASES.items() if target == name}
    return sorted(names, key=lambda s: (len(s), s))


def _add(parser, name: str, kind: str, help_text: str, dest: str) -> None:
    if kind == "bool":  # --flag, --no-flag / --no_flag (HfArgumentParser's spelling), or --flag True/False
        parser.add_argument(*flag_names(name), dest=dest, nargs="?", const="true", default=None, metavar="BOOL",
                            help=help_text)
        parser.add_argument(f"--no-{name.replace('_', '-')}", f"--no_{name}", dest=dest, action="store_const",
                            const="false", help=argparse.SUPPRESS)
    elif kind == "list":  # several values (dict: key=value items)
        parser.add_argument(*flag_names(name), dest=dest, nargs="+", default=None, help=help_text)
    else:
        parser.add_argument(*flag_names(name), dest=dest, default=None, help=help_text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, in the README's groups, then TRL's own names. Values stay strings here;
    config.coerce() types and checks them."""
    parser.add_argument("--config", help="YAML file of options (flags given here override it); TRL's YAML works "
                                         "as it is, its `env:` mapping included")
    hints, helps, groups = get_type_hints(TrainConfig), field_help(), {}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("flag", True):
            continue
        typ = hints[f.name]
        if get_origin(typ) is not None and type(None) in get_args(typ):
            typ = next(a for a in get_args(typ) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group_name, text = helps.get(f.name, ("options", ""))
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        kind = "bool" if typ is bool else "list" if get_origin(typ) in (list, dict) else "value"
        _add(group, f.name, kind, f"{text} (default: {default})".replace("%", "%%"), f.name)
    trl = parser.add_argument_group("TRL options with no field of their own (accepted: what happens instead; or "
                                    "refused: the missing feature)")
    for name in sorted({*NOTED, *REFUSED, *MAPPED}):
        if name in MAPPED:
            text = f"sets --{MAPPED[name][2].replace('_', '-')} with TRL's meaning"
        else:
            text = (NOTED.get(name) or REFUSED[name]).line
            text = f"refused: {text}" if name in REFUSED else text
        _add(trl, name, foreign_kind(name), text.replace("%", "%%"), f"trl:{name}")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The options given on the command line, by the name they were given under (TRL-only ones too)."""
    out = {}
    for key, value in vars(args).items():
        if value is None or key in ("config", "func", "command", "argv"):
            continue
        name = key.removeprefix("trl:")
        if key.startswith("trl:") or name in {f.name for f in dataclasses.fields(TrainConfig)}:
            if isinstance(value, list) and len(value) == 1:
                value = value[0]  # "--loss-type sigmoid,sft" and "--loss-type sigmoid sft" both work
            out[name] = value
    return out
