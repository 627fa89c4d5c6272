"""Which device a command runs on: the one function every stage's `--device` flag goes through.

    from common.devices import resolve_device
    device = resolve_device("auto")      # "cuda" when a GPU is visible, else "cpu"

A flag that names a device this machine does not have is bad input, not a bug: it gets the
project's one-line error (`error: --device cuda: ...; use --device cpu`) instead of the
AssertionError torch raises deep inside the first `.to(device)`.

Interview question it answers:
- Why is "auto" the default? (the same command runs on a laptop and on a GPU node; the fastest
  correct path on each device is chosen at run time, never by editing code)
"""

import torch

from common.cli import UserError


def resolve_device(name: str = "auto", local_rank: int = 0) -> str:
    """'auto' -> 'cuda:<local_rank>' if CUDA is visible else 'cpu'; an explicit name is checked."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda}, no GPU visible"
            )
            raise UserError(
                f"--device {name}: no CUDA device here (torch {torch.__version__}, {build}); "
                "use --device cpu or --device auto"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"numbered 0..{torch.cuda.device_count() - 1}"
            )
        return name if index else f"cuda:{local_rank}"
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: Apple's Metal backend is not available here; use --device cpu")
        return "mps"
    raise UserError(f"--device {name!r} unknown; use auto, cpu, cuda, cuda:N or mps")
