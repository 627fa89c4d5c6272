"""The command line every stage shares: one-line errors and a CLI from a dataclass config.

Every stage command is built from the same pieces (files.py and runs.py hold the others), so a
learner meets them once:

1. **Errors.** `run_cli(main)` is the one entry point. Expected failures become one line,
   `error: <what is wrong>; <how to fix it>` on stderr, and exit code 2: a `UserError`, an `OSError`
   on a file (permission, read-only disk, disk full, a file where a folder should be), a flag that
   does not parse. Ctrl-C prints `interrupted[; <hint>]` and exits 130. A genuine bug still shows its
   traceback: hiding those would hide the bug.
2. **Config.** Each stage has a dataclass config whose fields are declared with `option(default,
   help, ...)`; `parse_config` turns it into argparse flags with help, defaults (and each preset's
   value) shown, booleans as `--x/--no-x`, and ranges/choices checked at parse time.

    from common.cli import UserError, option, parse_config, run_cli

Interview question it answers:
- Why exit 2 with one line for bad input, and a traceback for a bug? (the user can fix the first
  from the message alone; hiding the second would hide where the code is wrong)
"""

import argparse
import dataclasses
import errno
import shlex
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ==================================================================================================
# 1. Errors: one line, exit 2


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix, in one line.

    A ValueError, so library callers can catch it with the exception they would expect."""


_interrupt_hint = [""]


def set_interrupt_hint(hint: str):
    """What Ctrl-C should tell the user now, e.g. 'at step 120; continue with --resume'."""
    _interrupt_hint[0] = hint


OS_FIXES = {
    errno.EACCES: "check the folder's permissions or choose another --out",
    errno.EPERM: "check the folder's permissions or choose another --out",
    errno.EROFS: "the disk is read-only; choose another --out",
    errno.ENOSPC: "the disk is full; free space or choose another --out",
    errno.EDQUOT: "the disk quota is used up; free space or choose another --out",
    errno.ENOTDIR: "a file is in the way of a folder; remove it or choose another --out",
    errno.EEXIST: "a file is in the way of a folder; remove it or choose another --out",
    errno.EISDIR: "a folder is where a file should be; remove it or choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(e: OSError) -> str:
    where = e.filename if e.filename is not None else "a file"
    return f"cannot use {where}: {e.strerror or e}; {OS_FIXES.get(e.errno, 'check the path and the disk')}"


def run_cli(main, argv=None):
    """Run a command-line `main(argv)` with the project's error contract (module docstring, point 1)."""
    try:
        return main(argv) if argv is not None else main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.filename is None and e.errno not in OS_FIXES:
            raise  # not a file problem: a bug or a network error
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        hint = _interrupt_hint[0]
        print(f"\ninterrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        sys.exit(130)


# ==================================================================================================
# 2. Config: a dataclass becomes a command line


def option(default, help, *, choices=None, min=None, max=None, sep=None, cli=True):
    """A dataclass field that carries its command-line help and its allowed values.

    min/max: inclusive bounds checked by `check_config`; sep: split list values on this character
    (`--split 0.9,0.05,0.05`); cli=False: a field set by code, not by a flag."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "sep": sep, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class CLIParser(argparse.ArgumentParser):
    """argparse whose own errors (unknown flag, bad int) follow the one-line contract too."""

    def error(self, message):
        raise UserError(f"{message}; see --help")


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise UserError(f"cannot read {text!r} as true/false; write true or false")


def parse_dict(text: str) -> dict:
    """'a=0.4,b=0.6' -> {'a': 0.4, 'b': 0.6}"""
    try:
        return {k.strip(): float(v) for k, v in (kv.split("=") for kv in text.split(","))}
    except ValueError:
        raise UserError(f"cannot read {text!r}; write it as name=number,name=number") from None


def _field_parser(tp, meta, default=None):
    """(argparse kwargs, converter for a parsed value) for a field of type `tp`; a bare `list` or
    `tuple` takes its element type from the default's first element."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}, None
    if tp in (int, float, str):
        return {"type": tp, "choices": meta["choices"]}, None
    if origin in (list, tuple) or tp in (list, tuple):
        elem = args[0] if args else type(default[0]) if default else str
        sep = meta["sep"]

        def convert(values):  # a list (nargs="+") or one string (sep)
            values = [values] if isinstance(values, str) else values
            parts = [x for v in values for x in (v.split(sep) if sep else [v]) if x != ""]
            try:
                out = [elem(x) for x in parts]
            except ValueError:
                raise UserError(f"cannot read {' '.join(values)!r} as a list of {elem.__name__}") from None
            return tuple(out) if (origin or tp) is tuple else out

        return {"nargs": "+" if not sep else None, "type": str}, convert
    if origin is dict or tp is dict:
        return {"type": str}, parse_dict
    raise TypeError(f"option of type {tp} has no command-line form; add it to _field_parser")


def _show(value):
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "(none)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return repr(value) if isinstance(value, str) else str(value)


def add_config_args(parser, cls, presets=None, skip=()):
    """One flag per field of dataclass `cls`: --field-name, help with the default and presets' values."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        meta = {"help": "", "choices": None, "min": None, "max": None, "sep": None, "cli": True, **f.metadata}
        if f.name in skip or not meta["cli"]:
            continue
        kwargs, _ = _field_parser(hints[f.name], meta, getattr(defaults, f.name))
        shown = f"default {_show(getattr(defaults, f.name))}"
        per_preset = [f"{name} {_show(p[f.name])}" for name, p in (presets or {}).items() if f.name in p]
        if per_preset:
            shown += "; preset " + ", ".join(per_preset)
        help_text = f"{meta['help']} ({shown})" if meta["help"] else f"({shown})"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=help_text.replace("%", "%%"),
            **{k: v for k, v in kwargs.items() if v is not None},
        )


def config_from_args(cls, args, base=None):
    """A `cls` from the flags the user gave (None = not given) on top of `base` values."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        _, convert = _field_parser(
            hints[f.name], {"sep": None, "choices": None, **f.metadata}, getattr(defaults, f.name)
        )
        values[f.name] = convert(v) if convert else v
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"preset sets unknown fields {sorted(unknown)}")
    cfg = cls(**values)
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Raise a UserError for a field outside its declared choices or [min, max]."""
    for f in dataclasses.fields(cfg):
        v, m = getattr(cfg, f.name), f.metadata
        flag = "--" + f.name.replace("_", "-")
        if m.get("choices") and v not in m["choices"]:
            raise UserError(f"{flag} {v!r} is not one of {', '.join(map(str, m['choices']))}")
        if m.get("min") is not None and isinstance(v, (int, float)) and v < m["min"]:
            raise UserError(f"{flag} {v} is below its minimum {m['min']}; {m.get('help') or 'see --help'}")
        if m.get("max") is not None and isinstance(v, (int, float)) and v > m["max"]:
            raise UserError(f"{flag} {v} is above its maximum {m['max']}; {m.get('help') or 'see --help'}")


def parse_config(cls, argv=None, *, doc="", presets=None, default_preset=None, skip=(), extra=None):
    """(config, args) from the command line. `extra(parser)` adds flags that are not config fields
    (--run, --overwrite ...); their values are on `args`. With presets, --preset picks the base values."""
    parser = CLIParser(
        description=doc.strip().split("\n")[0] if doc else None,
        epilog=doc if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if extra:
        extra(parser)
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            default=default_preset,
            help=f"base values for the flags below (default {default_preset})",
        )
    add_config_args(parser, cls, presets, skip)
    args = parser.parse_args(argv)
    base = presets[args.preset] if presets else {}
    return config_from_args(cls, args, base), args


def command_line(script: str, argv=None) -> str:
    """The command to paste to rerun this stage: 'python 02_tokenizer/train_tokenizer.py --data runs/tiny'."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rel = Path(script).resolve().relative_to(REPO)
    except ValueError:
        rel = Path(script)
    return shlex.join(["python", str(rel), *map(str, argv)])
