"""Small file and error helpers every stage uses: atomic writes, JSONL, one-line user errors.

Why a file of its own: every stage writes artifacts that a later stage reads (`runs/<name>/...`).
A run killed half-way must never leave a half-written file that looks complete, so every write goes
to a temporary file in the same folder and is then renamed over the target (`os.replace` is atomic
on POSIX and Windows when both paths are on one filesystem). And a user who passes a wrong path
should read one line that names the problem and the fix, not a traceback from deep inside numpy.

    from common import UserError, run_cli, atomic_write_text, write_jsonl, read_jsonl, save_figure

Interview questions it answers:
- How do you make a checkpoint write crash-safe? (write temp, fsync, rename; never overwrite in place)
- Why is JSONL, not one big JSON array, the usual format for datasets? (streamable, appendable,
  one bad line is found by its line number, shards concatenate with `cat`)
"""
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, in one line."""


def run_cli(main):
    """Run a command-line `main()`; a UserError becomes `error: <message>` on stderr and exit code 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it.

    For libraries that want a filename (torch.save, np.save, savefig):
        with atomic_path("ckpt.pt") as tmp: torch.save(obj, tmp)
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


def save_figure(fig, path, dpi=110):
    """Lay out a matplotlib figure, write it as PNG atomically, and free it (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt  # here, so stages that plot nothing never import matplotlib
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


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
        raise UserError(f"{path}: not valid UTF-8 at byte {e.start}; convert it, e.g. `iconv -t UTF-8`") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty; pass a file with text in it")
    return text


def read_jsonl(path, required=("text",)):
    """Read a JSONL file into a list of dicts; every record must have the `required` fields."""
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise UserError(f"{path}:{lineno}: record has no {missing[0]!r} field; "
                            f"each line needs {', '.join(map(repr, required))}")
        records.append(rec)
    return records
