"""The teacher and the yardsticks that distill.py, speculative.py and prune.py share.

    teacher, tok, source = load_teacher("runs/tiny", "pretrain")   # 04's best.pt (or "sft", or a .pt path)
    measure(model, ...) -> {"params", "val_loss", "val_ppl", "exact_match", "gen_tok_s", ...}

A compressed model is only as good as what it keeps, so every model in this stage is measured the
same way, on the same text:
- val perplexity: exp(mean NLL) over fixed, evenly spaced windows of 02's val shard (05's
  `corpus_loss`), so two models are scored on exactly the same tokens;
- held-out exact match: 05's evaluation (greedy answers with the chat template, `finetuned.generate_answers`
  + `finetuned.score`, i.e. 05's metrics) on the held-out subjects of the task set;
- generation tokens/s: 03's decoding.generate, greedy, batch 1, with the KV cache (`bench_generate`),
  the best of a few interleaved repeats because the machine may be shared;
- parameters: every stored number (tied embedding counted once) and, for pruning, the nonzero ones.

Interview questions it answers:
- Why measure every model on the same fixed windows? (perplexities over different random windows
  differ by more than the effects being compared; fixed windows make the difference the model's)
- Why the best of several timings and not the mean? (on a shared machine noise only ever adds time:
  the minimum is the closest to what the code costs)
"""

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO),
    str(REPO / "02_tokenizer"),
    str(REPO / "03_model"),
    str(REPO / "04_pretrain"),
    str(REPO / "05_sft_lora"),
]
from common.cli import UserError
from common.layout import RunLayout
from common.runs import check_artifact
from bpe import BPETokenizer  # 02_tokenizer
from batches import eval_starts  # 04_pretrain
from heldout_loss import window_token_losses  # 04_pretrain
from bench_generate import tokens_per_second  # 03_model
from checkpoint_io import save_checkpoint  # 03_model
from gpt import GPT  # 03_model
from lora import lora_modules, merged_plain_model  # 05_sft_lora
from finetuned import corpus_loss, generate_answers, load_finetuned, score  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora

TEACHER_HELP = "pretrain (04's best.pt), sft (05's fine-tuned model) or the path of a .pt checkpoint"


def pretrain_made_by(run) -> str:
    return RunLayout(run).made_by("pretrain")


def load_teacher(run, which: str, device="cpu"):
    """(model in eval mode, tokenizer, the artifact it came from: a folder or a file, for manifests).

    pretrain: runs/<name>/pretrain/best.pt (else ckpt.pt), checked with check_artifact; sft: 05's
    finished run (full fine-tuning, or the base with its LoRA merged in); else a checkpoint file."""
    run = Path(run)
    tok_dir = RunLayout(run).tokenizer
    check_artifact(tok_dir, made_by=RunLayout(run).made_by("tokenizer"))
    if which == "pretrain":
        pre = RunLayout(run).pretrain
        check_artifact(pre, made_by=pretrain_made_by(run))
        path, source = (pre / "best.pt" if (pre / "best.pt").is_file() else pre / "ckpt.pt"), pre
        model = GPT.from_checkpoint(path, map_location=device)
    elif which == "sft":
        model, _, peft = load_finetuned(RunLayout(run).sft, device)
        if peft is not None and not lora_modules(model):
            raise UserError(
                f"{run / 'sft'} holds a prefix/adapter model, which this stage cannot use as a "
                "plain GPT; rerun 05_sft_lora/sft.py with --method full or lora, or use --teacher pretrain"
            )
        if peft is not None:
            model = merged_plain_model(model)
        source = RunLayout(run).sft
    else:
        path = Path(which)
        if not path.is_file():
            raise UserError(
                f"--teacher {which}: no such checkpoint; 04_pretrain/pretrain.py makes "
                f"{run}/pretrain/best.pt (--teacher pretrain), 05_sft_lora/sft.py --method full "
                f"makes {run}/sft/ckpt.pt (--teacher sft)"
            )
        model, source = GPT.from_checkpoint(path, map_location=device), path
    tok = BPETokenizer.load(tok_dir)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"the tokenizer in {tok_dir} has {tok.vocab_size} tokens but the teacher only "
            f"{model.cfg.vocab_size}; it was trained with another tokenizer: rerun 04_pretrain"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok, source


def count_params(model) -> int:
    """Stored parameters, a tied matrix counted once (module.parameters() deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def nonzero_params(model) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def checkpoint_kib(model, path) -> float:
    """Write the model in 03's checkpoint format and return the file's size in KiB."""
    save_checkpoint(path, asdict(model.cfg), model.state_dict())
    return os.path.getsize(path) / 1024


def heldout_conversations(run, limit: int) -> list:
    """The first `limit` held-out conversations of 01's task set (subjects never trained on)."""
    data = RunLayout(run).data
    check_artifact(data, made_by=RunLayout(run).made_by("data"))
    records = read_conversations(data / "tasks" / "sft_heldout.jsonl")
    return records[:limit] if limit else records


def speed_prompt(val, length: int) -> torch.Tensor:
    """A fixed prompt (1, length) from the start of the val shard, the same for every model."""
    return torch.as_tensor(val[:length].astype("int64"))[None]


def generation_speeds(models: dict, prompt, n_new: int, repeats: int, device) -> dict:
    """{name: tokens/s}: greedy generation of n_new tokens, batch 1, KV cache; models interleaved,
    each the best of `repeats` runs (a shared machine only ever adds time)."""
    best = {name: 0.0 for name in models}
    idx = prompt.to(device)
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = max(best[name], tokens_per_second(model, idx, n_new, use_cache=True))
    return best


def window_losses(model, val, n_windows: int, device, batch=16) -> np.ndarray:
    """Mean next-token loss of each of n evenly spaced val windows (corpus_loss's windows, one number
    each), shape (n_windows,): the unit the paired intervals of prune.py and quantize.py resample.
    With windows of equal length their mean is corpus_loss."""
    T = model.cfg.block_size
    return window_token_losses(model, val, T, device, eval_starts(len(val), T, n_windows), batch).mean(axis=1)


def measure(model, tok, val, heldout, *, eval_windows, max_new_tokens, device) -> dict:
    """Parameters, val loss and perplexity, held-out exact match / token F1 / answer accuracy (05)."""
    loss = corpus_loss(model, val, model.cfg.block_size, eval_windows, device)
    row = {"params": count_params(model), "val_loss": loss, "val_ppl": math.exp(loss)}
    if heldout:
        answers = generate_answers(model, tok, [r["messages"] for r in heldout], max_new_tokens, device)
        row.update({k: v for k, v in score(answers, heldout).items() if k != "n"})
    return row


def peak_memory_mb(device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on CPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def timed(totals: dict, part: str, device):
    """Add the wall time of the block to totals[part] (synchronizing a GPU, so that work queued in
    the block is billed to it and not to the next one)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    yield
    sync()
    totals[part] = totals.get(part, 0.0) + time.perf_counter() - t0
