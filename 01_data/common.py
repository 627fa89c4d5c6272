"""What every stage shares: one-line errors, a CLI from a dataclass config, safe files, run folders.

Every stage command is built from the same four pieces, so a learner meets them once:

1. **Errors.** `run_cli(main)` is the one entry point. Expected failures become one line,
   `error: <what is wrong>; <how to fix it>` on stderr, and exit code 2: a `UserError`, an `OSError`
   on a file (permission, read-only disk, disk full, a file where a folder should be), a flag that
   does not parse. Ctrl-C prints `interrupted[; <hint>]` and exits 130. A genuine bug still shows its
   traceback: hiding those would hide the bug.
2. **Config.** Each stage has a dataclass config whose fields are declared with `option(default,
   help, ...)`; `parse_config` turns it into argparse flags with help, defaults (and each preset's
   value) shown, booleans as `--x/--no-x`, and ranges/choices checked at parse time.
3. **Files.** Every write goes to a temp file in the same folder and is renamed over the target
   (`os.replace` is atomic on one filesystem), so a killed run never leaves a half-written file that
   looks complete. JSON/JSONL readers say which file and line is wrong.
4. **Run folders.** A stage writes into `runs/<name>/<stage>/` and leaves a `manifest.json` there:
   the command, its config, the code version, fingerprints of the files it wrote, and the ids of the
   upstream manifests it read. `check_artifact` lets a later stage refuse inputs that are missing,
   damaged, or stale (an upstream folder was rewritten after this one was made), naming the command
   to rerun. `run_lock` makes a second writer fail at once instead of interleaving files, and
   removes the temp files a killed run left behind. `claim_output` refuses to write a fresh run over
   another one unless `--overwrite`; `staged_dir` builds a new run beside the old and swaps it in
   only when complete.

    from common import UserError, run_cli, option, parse_config, atomic_path, write_json, read_jsonl

Interview questions it answers:
- How do you make a checkpoint write crash-safe? (write temp, fsync, rename; never overwrite in place)
- Why is JSONL, not one big JSON array, the usual format for datasets? (streamable, appendable,
  one bad line is found by its line number, shards concatenate with `cat`)
- How does a pipeline know an artifact is stale? (record what each output was made from, by content
  hash, and compare with what is there now: what make does with timestamps, done with hashes)
"""

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
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
    """The command to paste to rerun this stage: 'python 02_tokenizer/bpe.py --data runs/tiny'."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rel = Path(script).resolve().relative_to(REPO)
    except ValueError:
        rel = Path(script)
    return shlex.join(["python", str(rel), *map(str, argv)])


# ==================================================================================================
# 3. Files: atomic writes, JSON, JSONL, plots


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it.

    For libraries that want a filename (torch.save, np.save, savefig):
        with atomic_path("ckpt.pt") as tmp: torch.save(obj, tmp)
    Ctrl-C or a crash mid-write deletes the temp file; `kill -9` cannot, so `run_lock` removes such
    orphans (`.<name>.<random>.tmp`) the next time a stage opens the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it a normal file's mode
    try:
        yield tmp
        with open(tmp, "rb") as f:  # flush the bytes to disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path, records):
    """Write an iterable of dicts, one JSON object per line, atomically. Returns the record count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_text(path) -> str:
    """Read a UTF-8 text file, or raise a UserError saying why it is not one (missing, binary, empty)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path}: looks binary (NUL bytes); pass a UTF-8 text or .jsonl file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not valid UTF-8 at byte {e.start}; convert it, e.g. `iconv -t UTF-8`"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: file is empty; pass a file with text in it")
    return text


def read_json(path, made_by="") -> dict:
    """A JSON object from `path`; missing or corrupt -> UserError naming the command that makes it."""
    path = Path(path)
    fix = f"rerun `{made_by}`" if made_by else "check the path"
    if not path.is_file():
        raise UserError(f"{path}: missing; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: corrupt or truncated ({type(e).__name__}); {fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object; {fix}")
    return obj


TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}


def read_jsonl(path, required=("text",), types=None):
    """Read a JSONL file into a list of dicts; every record must have the `required` fields, and each field
    named in `types` ({field: type}; "text" is a string unless said otherwise) must have that type."""
    types = {"text": str, **(types or {})}
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise UserError(
                f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}; write one {{...}} per line"
            )
        missing = [k for k in required if k not in rec]
        if missing:
            raise UserError(
                f"{path}:{lineno}: record has no {missing[0]!r} field; "
                f"each line needs {', '.join(map(repr, required))}"
            )
        for k, tp in types.items():
            if k in rec and (not isinstance(rec[k], tp) or (tp is int and isinstance(rec[k], bool))):
                raise UserError(
                    f"{path}:{lineno}: {k!r} must be {TYPE_NAMES.get(tp, tp.__name__)}, got "
                    f"{type(rec[k]).__name__} ({json.dumps(rec[k], ensure_ascii=False)[:40]}); fix that line"
                )
        records.append(rec)
    return records


def markdown_table(rows, columns) -> str:
    """A markdown table from a list of dicts, one column per key in `columns` ("-" where a row has
    no value). Every stage's printed table and the report card use it, so they read the same."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=110):
    """Lay out a matplotlib figure, write it as PNG atomically, and free it (pyplot keeps figures alive)."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


# ==================================================================================================
# 4. Run folders: manifests, staleness, locks, overwrite

MANIFEST = "manifest.json"


def file_fingerprint(path, known=None) -> dict:
    """{"bytes", "sha256", "mtime_ns"} of a file; the hash is reused from `known` when size and
    mtime are unchanged (what git and make do), so checking a large shard costs a stat, not a read."""
    st = os.stat(path)
    if known and known.get("bytes") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return dict(known)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": st.st_size, "sha256": h.hexdigest(), "mtime_ns": st.st_mtime_ns}


_code_version = []


def code_version() -> str:
    """The git commit of this checkout ('+dirty' with uncommitted changes), or 'unknown'."""
    if not _code_version:
        try:
            run = lambda *a: subprocess.run(
                ["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            commit = run("rev-parse", "--short=12", "HEAD")
            dirty = run("status", "--porcelain", "--untracked-files=no")
            _code_version.append(commit + ("+dirty" if dirty else ""))
        except (OSError, subprocess.SubprocessError):
            _code_version.append("unknown")
    return _code_version[0]


def write_manifest(out_dir, *, stage, command, config, inputs=(), files=None, extra=None) -> dict:
    """Write `out_dir/manifest.json` and return it.

    inputs: upstream artifact folders this stage read (each must hold a manifest: its id is
    recorded) and/or plain input files (their fingerprint is recorded). files: the outputs to
    fingerprint, relative to out_dir (default: every file in out_dir but the manifest itself).
    The id is a hash of what matters (config, inputs, output hashes), not of the time it ran."""
    out_dir = Path(out_dir)
    if files is None:
        files = sorted(
            str(p.relative_to(out_dir))
            for p in out_dir.rglob("*")
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
        )
    recorded_inputs = {}
    for path in inputs:
        path = Path(path)
        key = os.path.relpath(path.resolve(), out_dir.resolve())  # relative: the run folder can move
        if path.is_dir():
            up = read_json(path / MANIFEST)
            recorded_inputs[key] = {"id": up["id"], "stage": up["stage"], "created": up["created"]}
        else:
            fp = file_fingerprint(path)
            recorded_inputs[key] = {"bytes": fp["bytes"], "sha256": fp["sha256"]}
    fps = {name: file_fingerprint(out_dir / name) for name in files}
    core = {
        "stage": stage,
        "config": config,
        "inputs": {k: v.get("id", v.get("sha256")) for k, v in recorded_inputs.items()},
        "files": {k: v["sha256"] for k, v in fps.items()},
    }
    manifest = {
        "id": hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16],
        "stage": stage,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "code_version": code_version(),
        "config": config,
        "inputs": recorded_inputs,
        "files": fps,
        **(extra or {}),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def check_artifact(art_dir, made_by: str, _checked=None) -> dict:
    """The manifest of an upstream artifact folder, after checking that it is usable:

    - present and complete (a manifest is written last, so a killed stage leaves none),
    - undamaged (every file it lists has the size and hash it had),
    - current (every upstream folder it was made from still has the manifest id it had then),
    recursively up the chain. Otherwise a UserError naming the command to rerun.
    made_by: the command that makes `art_dir` (used when there is no manifest to read it from)."""
    art_dir = Path(art_dir)
    _checked = {} if _checked is None else _checked
    if str(art_dir) in _checked:
        return _checked[str(art_dir)]
    mpath = art_dir / MANIFEST
    if not art_dir.is_dir():
        raise UserError(f"{art_dir}: missing; make it first with `{made_by}`")
    if not mpath.is_file():
        raise UserError(
            f"{art_dir}: incomplete (no {MANIFEST}: the stage was interrupted, failed, or is "
            f"from an older version); rerun `{made_by}`"
        )
    manifest = read_json(mpath, made_by)
    if manifest.get("status", "complete") != "complete":
        raise UserError(
            f"{art_dir}: holds an unfinished run ({manifest.get('status')}); finish it with "
            f"`{manifest.get('resume_command', made_by)}` or rerun `{made_by}`"
        )
    rerun = manifest.get("command") or made_by
    for name, fp in manifest.get("files", {}).items():
        p = art_dir / name
        if not p.is_file():
            raise UserError(f"{p}: missing (listed in {mpath}); rerun `{rerun}`")
        now = file_fingerprint(p, fp)
        if now["bytes"] != fp["bytes"] or now["sha256"] != fp["sha256"]:
            raise UserError(
                f"{p}: changed or damaged since `{rerun}` wrote it ({now['bytes']} bytes, "
                f"was {fp['bytes']}); rerun `{rerun}`"
            )
    for up_path, rec in manifest.get("inputs", {}).items():
        up = Path(os.path.normpath(art_dir / up_path))
        if "id" in rec:
            up_manifest = check_artifact(up, f"the stage that makes {up}", _checked)
            if up_manifest["id"] != rec["id"]:
                raise UserError(
                    f"{art_dir} is stale: it was made from {up} of {rec['created']}, but {up} was "
                    f"rewritten on {up_manifest['created']}; rerun `{rerun}`"
                )
        elif up.is_file() and file_fingerprint(up)["sha256"] != rec["sha256"]:
            raise UserError(f"{art_dir} is stale: its input {up} changed since; rerun `{rerun}`")
    _checked[str(art_dir)] = manifest
    return manifest


def remove_orphan_temps(out_dir) -> int:
    """Delete what a killed write left: `.<name>.*.tmp` files inside out_dir (atomic_path) and
    `.<out_dir name>.*.tmp` folders beside it (staged_dir). Call only under run_lock."""
    out_dir = Path(out_dir)
    removed = 0
    old = sorted(out_dir.parent.glob(f".{out_dir.name}.old*.tmp"))
    if old and not out_dir.exists():  # killed between staged_dir's two renames:
        os.replace(old[0], out_dir)  # the old run was set aside, the new never arrived
        print(f"restored {out_dir} from {old[0].name} (a swap was interrupted)", file=sys.stderr)
    victims = list(out_dir.glob(".*.tmp")) if out_dir.is_dir() else []
    victims += list(out_dir.parent.glob(f".{out_dir.name}.*.tmp"))
    for p in victims:
        with contextlib.suppress(FileNotFoundError):
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def run_lock(out_dir, enabled=True):
    """Hold an advisory lock on out_dir (the file `.<name>.lock` beside it) while a stage writes there.

    A second process gets a one-line error naming the holder's pid instead of interleaving its files
    with the first's. The lock is released when the process ends, even by kill -9 (the kernel drops
    flock locks with the file descriptor), so a stale lock never blocks a later run. On entry, temp
    files a killed run left are removed."""
    if not enabled:
        yield
        return
    import fcntl

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    while True:  # the holder deletes the file when done: a lock taken on a deleted file is no lock
        f = open(lock_path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UserError(
                f"{out_dir} is being written by another process (pid {holder}); wait for it to "
                "finish, or choose another --out / --run"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        n = remove_orphan_temps(out_dir)
        if n:
            print(f"removed {n} temp file(s) left in {out_dir} by a killed run", file=sys.stderr)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # removed while still held, so no one can lock it in between
        f.close()  # closing the descriptor releases the lock (kill -9 too; the file then stays, harmless)


def claim_output(out_dir, overwrite: bool, remove=True, resume_hint=""):
    """Make sure a fresh run may write out_dir: refuse when it holds another run, unless overwrite.

    With overwrite: remove=False when the caller builds beside it and swaps (`staged_dir`: the old
    run stays until the new one is complete); remove=True for training stages, whose checkpoints
    must live in place: the old run is removed now, with a message saying so."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a folder; remove it or choose another --out")
    if not out_dir.is_dir() or not any(p for p in out_dir.iterdir() if not p.name.startswith(".")):
        return
    if not overwrite:
        what = ""
        with contextlib.suppress(UserError, OSError):
            m = read_json(out_dir / MANIFEST)
            what = f" (`{m.get('command')}`, {m.get('created')})"
        raise UserError(
            f"{out_dir} already holds a run{what}; pass --overwrite to replace it"
            f"{', ' + resume_hint if resume_hint else ''}, or choose another --out / --run"
        )
    if not remove:
        return
    import shutil

    shutil.rmtree(out_dir)
    print(f"--overwrite: removed the previous run in {out_dir}", file=sys.stderr)


@contextlib.contextmanager
def fresh_output(out_dir, overwrite: bool, resume_hint=""):
    """Everything a stage that makes a new run in out_dir does around its work, in one block:

        with fresh_output(out, cfg.overwrite) as tmp:   # lock taken, out claimed: before any work
            ...train, writing into tmp...               # out still holds the last good result
                                                        # swapped in only when the block succeeds
    A second writer fails at once (run_lock); a folder holding a run is refused without --overwrite
    before minutes of training are spent (claim_output); a run that fails, diverges, runs out of disk or
    is killed leaves the previous result untouched (staged_dir)."""
    with run_lock(out_dir):
        claim_output(out_dir, overwrite, remove=False, resume_hint=resume_hint)
        with staged_dir(out_dir) as tmp:
            yield tmp


@contextlib.contextmanager
def staged_dir(out_dir):
    """Yield a temp folder beside out_dir; when the block succeeds, it replaces out_dir.

    The old folder stays intact until the new one is complete. The swap is two renames (old aside,
    new in) and the old copy is then deleted; a crash between the renames leaves both as
    `.<name>.*.tmp` folders: the next run's lock step puts the old one back and removes the other."""
    import shutil

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}.tmp"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
