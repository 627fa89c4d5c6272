"""Which model a serving command runs: any stage's checkpoint, with its tokenizer, ready for inference.

serve.py, chat.py and bench_serve.py all start from a checkpoint path and the same flags (--ckpt,
--tokenizer, --device, --threads); this file turns them into (model, tokenizer):

    from served_model import load_model
    model, tok = load_model("runs/tiny/sft/adapter.pt")      # the base with its LoRA adapter attached

Checkpoints: 04's pretrain/best.pt or ckpt.pt, 05's sft/ckpt.pt (full fine-tuning) and sft/adapter.pt
(LoRA, prefix tuning or bottleneck adapters, loaded onto their base by 05's load_finetuned), any file
in 03's checkpoint format holding a GPT. The tokenizer is the one the checkpoint names (stored
relative to the checkpoint's folder), or --tokenizer.

Interview question it answers:
- Why check the tokenizer against the model at load time? (a tokenizer with more ids than the
  model's embedding rows fails only when a rare id is hit, deep in a request; at load it is one line)
"""

import sys
from pathlib import Path


# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.cli import UserError
from common.devices import resolve_device, set_threads
from checkpoint_io import load_checkpoint  # 03_model
from gpt import GPT  # 03_model
from sample_text import load_tokenizer  # 03_model
from finetuned import load_finetuned  # 05_sft_lora


def load_model(ckpt, tokenizer="", device="cpu"):
    """(model, tokenizer) of any stage's checkpoint (module docstring), on `device`, in eval mode."""
    path = Path(ckpt)
    saved = load_checkpoint(path, map_location=device)
    if "peft" in saved:  # 05's adapter file: its base plus the adapter
        model, tok, _ = load_finetuned(path.parent, device)
    else:
        model = GPT.from_checkpoint(path, map_location=device, ckpt=saved)
        tok = load_tokenizer(path, saved.get("tokenizer"), tokenizer)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}; "
            "pass the tokenizer the model was trained with (--tokenizer)"
        )
    return model.eval(), tok


def model_from_flags(cfg, purpose) -> tuple:
    """(model, tokenizer) from the --ckpt, --tokenizer, --device and --threads flags that serve.py and
    chat.py share; `purpose` completes the message when --ckpt is missing ("to serve", "to talk to")."""
    if not cfg.ckpt:
        raise UserError(
            f"--ckpt is required: the checkpoint {purpose}, e.g. runs/tiny/sft/adapter.pt (LoRA SFT) "
            "or runs/tiny/pretrain/best.pt"
        )
    set_threads(cfg.threads)  # pins decoding too (common/devices.py)
    return load_model(cfg.ckpt, cfg.tokenizer, resolve_device(cfg.device))


def default_model_name(ckpt) -> str:
    """runs/tiny/sft/adapter.pt -> 'tiny/sft'."""
    path = Path(ckpt).resolve()
    return f"{path.parent.parent.name}/{path.parent.name}"
