"""Safe files: atomic writes, JSON and JSONL that say which line is wrong, tables and plots.

Every write goes to a temp file in the same folder and is renamed over the target (`os.replace` is
atomic on one filesystem), so a killed run never leaves a half-written file that looks complete.
JSON/JSONL readers say which file and line is wrong.

    from common.files import atomic_path, read_jsonl, write_json

Interview questions it answers:
- How do you make a checkpoint write crash-safe? (write temp, fsync, rename; never overwrite in place)
- Why is JSONL, not one big JSON array, the usual format for datasets? (streamable, appendable,
  one bad line is found by its line number, shards concatenate with `cat`)
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from common.cli import UserError


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
