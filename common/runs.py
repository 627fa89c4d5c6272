"""Run folders: manifests, staleness, locks, overwrite.

A stage writes into `runs/<name>/<stage>/` and leaves a `manifest.json` there: the command, its
config, the code version, fingerprints of the files it wrote, and the ids of the upstream manifests
it read. `check_artifact` lets a later stage refuse inputs that are missing, damaged, or stale (an
upstream folder was rewritten after this one was made), naming the command to rerun. `run_lock`
makes a second writer fail at once instead of interleaving files, and removes the temp files a
killed run left behind. `claim_output` refuses to write a fresh run over another one unless
`--overwrite`; `staged_dir` builds a new run beside the old and swaps it in only when complete.

    from common.runs import check_artifact, claim_output, run_lock, write_manifest

Interview question it answers:
- How does a pipeline know an artifact is stale? (record what each output was made from, by content
  hash, and compare with what is there now: what make does with timestamps, done with hashes)
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import UserError
from common.files import read_json, write_json

REPO = Path(__file__).resolve().parents[1]


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
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(new, out_dir):
    """Replace out_dir by the complete folder `new`: two renames (the old folder aside, the new one in),
    then the old copy deleted. A crash between the renames leaves the old one as `.<name>.old*.tmp`,
    which the next run's lock step puts back."""
    import shutil

    new, out_dir = Path(new), Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}.tmp"
        os.replace(out_dir, old)
    os.replace(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
