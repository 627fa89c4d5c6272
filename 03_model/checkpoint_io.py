"""The one checkpoint format every stage writes and reads.

A checkpoint is a plain dict saved with `torch.save` and loaded with `torch.load(weights_only=True)`,
so loading a file from elsewhere can never run code (a pickled object could). Only tensors, numbers,
strings, lists and dicts go in:

    {
      "format": "llm-from-scratch/1",
      "config": {...},          # the model config as a dict (dataclasses.asdict(GPTConfig))
      "model":  {...},          # model.state_dict()
      ...                       # whatever the stage adds: "optimizer", "scheduler", "step",
    }                           # "rng", "data", "tokenizer", "metrics", "lora", ...

"tokenizer" is the tokenizer folder relative to the checkpoint's own folder ("../tokenizer"), so a
run folder can be moved or copied; `tokenizer_dir` resolves it (older checkpoints hold an absolute path).

Stages share it: 04 writes model + training state, 05 reads "config" + "model" and adds LoRA weights,
07 writes quantized weights beside the same config. Writes are atomic (temp file, then rename), so a
run killed during a save keeps its previous checkpoint; a save that fails (a full disk: `torch.save`
raises RuntimeError, not OSError) removes its temp file and becomes a one-line `error: ...; fix`.

"sha256" is a digest of everything else in the dict (every tensor's dtype, shape and bytes, every other
value's repr, in key order). The zip container has no checksum of its own, so a flipped byte in a
weight would otherwise load silently and be trained on; `load_checkpoint` recomputes it and refuses a
mismatch. Checkpoints written before the digest existed load without the check.

Interview questions it answers:
- What must a checkpoint hold to resume training exactly? (weights, optimizer moments, scheduler
  step, loss-scaler state, RNG states, data position; weights alone only let you fine-tune)
- Why `weights_only=True`? (pickle can execute arbitrary code on load)
- How do you know a checkpoint is intact? (a digest of the tensors stored beside them, checked on load)
"""

import hashlib
import shutil
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import atomic_path

FORMAT = "llm-from-scratch/1"


def digest(obj, h=None) -> str:
    """SHA-256 over a checkpoint's contents: tensors by dtype, shape and raw bytes, the rest by repr;
    dict keys in sorted order so the digest does not depend on insertion order."""
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            digest(v, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


def save_checkpoint(path, config: dict, model_state: dict, **extra):
    """Write {"format", "config", "model", **extra, "sha256"} to `path` atomically. A failed write
    (disk full, no permission) leaves no partial file and raises a UserError saying what to do."""
    ckpt = {"format": FORMAT, "config": dict(config), "model": model_state, **extra}
    ckpt["sha256"] = digest(ckpt)
    try:
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except (RuntimeError, OSError) as e:  # torch.save reports ENOSPC as RuntimeError ("unexpected pos ...")
        raise UserError(
            f"{path}: could not write the checkpoint ({why_save_failed(e, path, ckpt)}); "
            "free space or choose --out elsewhere"
        ) from None


def why_save_failed(e, path, ckpt) -> str:
    """A reason a person can act on: torch's own message for a full disk is 'unexpected pos 896 vs 790'."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    need = sum(t.numel() * t.element_size() for t in tensors(ckpt))
    free = shutil.disk_usage(Path(path).parent).free
    if free < need + 2**20:
        return f"the disk has {free / 2**20:.1f} MiB free, the checkpoint needs about {need / 2**20:.1f} MiB"
    return f"torch.save: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def tensors(obj):
    """Every tensor inside nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)


def load_checkpoint(path, map_location="cpu", made_by="") -> dict:
    """Load a checkpoint dict, or raise a UserError that says what is wrong with the file.
    made_by: the command that makes it (e.g. `python 04_pretrain/pretrain.py --data runs/tiny`),
    named in the message when the file is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        fix = f"make it with `{made_by}`" if made_by else "train one first or check --ckpt/--resume"
        raise UserError(f"{path}: no checkpoint there; {fix}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickle with code in it ...
        fix = f"remake it with `{made_by}`" if made_by else "use an earlier checkpoint or retrain"
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an llm-from-scratch checkpoint (expected format {FORMAT!r})")
    saved = ckpt.pop("sha256", None)
    if saved is not None and saved != digest(ckpt):
        fix = f"remake it with `{made_by}`" if made_by else "use an earlier checkpoint or retrain"
        raise UserError(f"{path}: damaged checkpoint (its SHA-256 does not match its contents); {fix}")
    return ckpt


def config_differences(saved: dict, current: dict, ignore=()) -> list:
    """Names of config fields whose values differ, as 'field: saved=X current=Y' strings."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [
        f"{k}: saved={saved.get(k)!r} current={current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def check_config_matches(saved: dict, current: dict, path="checkpoint", ignore=()):
    """Raise a UserError naming every differing field if the two configs do not match."""
    diffs = config_differences(saved, current, ignore)
    if diffs:
        raise UserError(
            f"{path} was made with another config ({'; '.join(diffs)}); "
            "pass matching flags or start a new run"
        )


def tokenizer_dir(ckpt_path, saved) -> Path | None:
    """The folder a checkpoint's "tokenizer" entry names: relative to the checkpoint's folder, or absolute."""
    if not isinstance(saved, str) or not saved:
        return None
    return Path(saved) if Path(saved).is_absolute() else Path(ckpt_path).parent / saved
