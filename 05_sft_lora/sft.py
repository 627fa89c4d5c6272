"""Supervised fine-tuning of 04's base model: full fine-tuning, LoRA, prefix tuning or adapters.

    python 05_sft_lora/sft.py --run runs/tiny                        # LoRA r=8 on the task set
    python 05_sft_lora/sft.py --run runs/tiny --method full --mix-pretrain 0.2 --patience 3
    python 05_sft_lora/sft.py --run runs/tiny --resume              # continue a killed run, bit-exact
    python 05_sft_lora/sft.py --run runs/tiny --train-file ../shared/data/sft/alpaca_zh_1k.jsonl

Reads runs/<name>/pretrain/best.pt (else ckpt.pt), tokenizer/, and data/tasks/sft_{train,heldout}.jsonl
(or any messages- or Alpaca-style JSONL). Writes runs/<name>/sft/: ckpt.pt (full fine-tuning) or
adapter.pt (the PEFT weights alone, kilobytes), predictions.jsonl, metrics.jsonl, sft.png,
outcome.json, manifest.json. It builds beside an existing run and swaps it in only when complete, so
an interrupted run leaves the previous one as it was. Every `eval_interval` steps the training state
(weights, AdamW moments, data position, RNG) goes to runs/<name>/.sft.resume.pt: `--resume` continues a
killed run from there, bit-exactly (04's train_state.RunState, as every 06 and 07 trainer).

One step: a batch of `batch_size` rows (several examples packed per row, packing.py; with
--mix-pretrain a fraction of the rows are windows of pretraining text), loss = token-mean NLL on
assistant tokens only (chat_template.py), AdamW on the trainable parameters, cosine schedule,
gradient clipping (04's optimizers). Every `eval_interval` steps the loss on a validation split
(by subject, from the training file) decides early stopping; the best state is restored.

What the outcome measures, on the held-out subjects (never trained on; sft_report.py):
- exact match, token F1 and answer accuracy (the short answer appears) of greedy answers, cut to the
  answer span, for the base model prompted with the same template and for the fine-tuned one;
- the bar (issue 23's goal): held-out answer accuracy >= 0.8, its 95 % Wilson interval wholly at or
  above both 0.8 and the strongest of three baselines (the base zero-shot, the base with --shots
  training examples in its prompt, the majority answer per question form); beside it in "bars": exact
  match >= 0.7 the same way, and SFT's exact match minus the strongest baseline's, paired over the
  questions, its 95 % bootstrap interval wholly above 0 (sft_baselines.py);
- per attribute, and for the Chinese questions about the held-out half (sft_zh_heldout.jsonl): people
  with Chinese biographies, and people with English ones only (does knowledge cross languages?);
- forgetting: the loss on the pretraining corpus's val windows before and after.

Interview questions it answers:
- What does SFT teach? (a format and a behaviour: answer the question, then stop; the facts have to
  come from pretraining, so held-out subjects measure whether SFT surfaces what the base knows)
- Full fine-tuning vs PEFT? (full moves every weight: most capacity, most forgetting, a full copy per
  task; LoRA/prefix/adapters train ~1% and store kilobytes; compare.py measures the trade)
- How do you reduce catastrophic forgetting? (mix pretraining data into the batches, train fewer
  parameters (PEFT), lower lr / fewer steps, early stopping)
"""

import dataclasses
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import (
    UserError,
    check_config,
    command_line,
    option,
    parse_config,
    run_cli,
    set_interrupt_hint,
)
from common.files import write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import check_artifact, write_manifest
from common.devices import resolve_device
from bpe import BPETokenizer  # 02_tokenizer
from checkpoint_io import save_checkpoint  # 03_model
from divergence import DivergenceGuard  # 03_model
from gpt import GPT  # 03_model
from optimizers import Schedule, clip_grad_norm, lr_at, make_optimizer, param_groups, set_lr  # 04_pretrain
from train_state import RunState  # 04_pretrain
from batches import batch_starts, get_batch, load_shards  # 04_pretrain

from adapter import BottleneckAdapters, save_adapters, train_marker_rows
from lora import (
    DEFAULT_TARGETS,
    count_params,
    describe_params,
    find_targets,
    inject_lora,
    save_lora,
)
from packing import collate_packed, collate_padded, forward_packed, pack_rows
from prefix import PrefixTuning, attach_prefix, marker_ids, save_prefix
from sft_data import encode_examples, epoch_order, read_conversations, split_validation
from feedback_data import feedback_conversations, read_feedback
from finetuned import corpus_loss, generate_answers, score
from sft_report import (
    baseline_answers,
    by_attribute,
    chinese_table,
    heldout_bars,
    outcome_block,
    plot,
    report,
)

METHODS = ("full", "lora", "prefix", "adapter")
# prefix 2e-2, not 1e-2: compare.py's sweep (x0.5, 1, 2) on the 1.5 M-character world chose 2e-2 on
# validation subjects (val answer acc 0.380 vs 0.355); held-out 0.735 vs 0.664 (README, compare)
DEFAULT_LR = {"full": 3e-4, "lora": 3e-3, "prefix": 2e-2, "adapter": 3e-3}


@dataclass
class SFTConfig:
    run: str = option("", "run folder runs/<name>: reads pretrain/, tokenizer/, data/tasks/")
    out: str = option("", "output folder; empty = <run>/sft")
    base: str = option("", "base checkpoint; empty = <run>/pretrain/best.pt, else ckpt.pt")
    train_file: str = option("", "messages- or Alpaca-style JSONL; empty = <run>/data/tasks/sft_train.jsonl")
    feedback: str = option(
        "",
        "ratings from the chat page / terminal chat (<run>/feedback/feedback.jsonl): up-rated answers and "
        "the better answers of down-rated ones join the training conversations (feedback_data.py)",
    )
    heldout_file: str = option(
        "", "conversations for the final evaluation; empty = <run>/data/tasks/sft_heldout.jsonl"
    )
    zh_heldout_file: str = option(
        "",
        "Chinese questions about the held-out people, by biography language; empty = "
        "<run>/data/tasks/sft_zh_heldout.jsonl when it exists; 'none' = skip",
    )
    method: str = option("lora", "what trains", choices=METHODS)
    lora_r: int = option(8, "LoRA rank r", min=1)
    lora_alpha: float = option(16.0, "LoRA scale: the update is (alpha/r)·B·A", min=1e-6)
    lora_dropout: float = option(0.05, "dropout on the LoRA input", min=0.0, max=0.9)
    lora_targets: list = option(DEFAULT_TARGETS, "module-name patterns to adapt", sep=",")
    prefix_len: int = option(8, "prefix tuning: virtual tokens per layer", min=1)
    prefix_hidden: int = option(128, "prefix tuning: width of the reparametrizing MLP", min=1)
    adapter_dim: int = option(16, "adapters: bottleneck width m", min=1)
    marker_rows: bool = option(
        True,
        "LoRA and prefix tuning also train the chat markers' embedding rows (<|end|> ...), which a base "
        "pretrained on plain text never saw (lora.LoRARows); off: answers may not stop",
    )
    steps: int = option(120, "optimizer steps (early stopping may end sooner)", min=1)
    batch_size: int = option(16, "rows per step; each row packs several examples", min=1)
    lr: float = option(
        0.0,
        "peak learning rate; 0 = the method's default "
        + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()),
        min=0.0,
    )
    warmup_steps: int = option(20, "linear warmup steps", min=0)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices", min=0.0)
    packing: bool = option(
        True, "pack examples into rows (block-diagonal attention); --no-packing pads one per row"
    )
    curriculum: str = option("none", "first epoch easy -> hard", choices=("none", "length", "turns"))
    mix_pretrain: float = option(
        0.0, "fraction of each batch that is pretraining text (less forgetting)", min=0.0, max=0.9
    )
    val_frac: float = option(
        0.05, "fraction of training subjects held back to measure the loss", min=0.0, max=0.5
    )
    eval_interval: int = option(40, "steps between validation losses", min=1)
    patience: int = option(0, "early stopping: evaluations without improvement (0 = off)", min=0)
    eval_limit: int = option(200, "held-out conversations answered greedily (0 = all)", min=0)
    max_new_tokens: int = option(32, "longest generated answer", min=1)
    eval_base: bool = option(True, "also answer the held-out questions with the base model (the baselines)")
    shots: int = option(3, "training conversations in the base model's few-shot prompt (a baseline)", min=0)
    forget_windows: int = option(64, "pretraining val windows for the forgetting measurement", min=1)
    strict: bool = option(False, "an example longer than the context is an error instead of skipped")
    seed: int = option(1337, "seed for the adapter init, data order and dropout")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --eval-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        steps=6,
        batch_size=4,
        warmup_steps=1,
        eval_interval=2,
        eval_limit=4,
        max_new_tokens=8,
        forget_windows=2,
    ),
}


def check_sft_config(cfg: SFTConfig):
    """Every field in its declared range (common.check_config, which parse_config also runs) and the
    checks that involve several fields; a UserError otherwise. The function API calls it too."""
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 04_pretrain wrote pretrain/ into)")
    if cfg.method == "lora" and not cfg.lora_targets:
        raise UserError("--lora-targets is empty; name at least one layer, e.g. wq,wv")


# ----------------------------------------------------------------------------- inputs


def base_checkpoint(cfg: SFTConfig) -> Path:
    """The base model's file: --base, else the run's pretrain/best.pt, else pretrain/ckpt.pt."""
    if cfg.base:
        if not Path(cfg.base).is_file():
            raise UserError(f"--base {cfg.base}: no such checkpoint; 04_pretrain/pretrain.py makes one")
        return Path(cfg.base)
    pre = RunLayout(cfg.run).pretrain
    check_artifact(pre, made_by=RunLayout(cfg.run).made_by("pretrain"))
    return pre / "best.pt" if (pre / "best.pt").is_file() else pre / "ckpt.pt"


def load_tokenizer(cfg) -> BPETokenizer:
    tok_dir = RunLayout(cfg.run).tokenizer
    check_artifact(tok_dir, made_by=RunLayout(cfg.run).made_by("tokenizer"))
    return BPETokenizer.load(tok_dir)


# ----------------------------------------------------------------------------- methods


def apply_method(model, cfg: SFTConfig, marker_ids=()) -> list:
    """Make the method's parameters the trainable ones; returns the PEFT modules kept beside the model."""
    if cfg.method == "full":
        return []
    if not cfg.marker_rows:
        marker_ids = ()
    if cfg.method == "lora":
        inject_lora(
            model, cfg.lora_targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, token_ids=marker_ids
        )
        return []
    if cfg.method == "prefix":
        prefix = PrefixTuning(model.cfg, cfg.prefix_len, cfg.prefix_hidden, marker_ids).to(
            next(model.parameters()).device
        )
        attach_prefix(model, prefix)
        return [prefix]
    adapters = BottleneckAdapters(model.cfg, cfg.adapter_dim).to(next(model.parameters()).device)
    adapters.attach(model)
    if len(marker_ids):
        train_marker_rows(model, marker_ids)
    return [adapters]


def save_tuned(model, extras, cfg, out: Path, tokenizer_dir) -> Path:
    """Full fine-tuning: the whole model (ckpt.pt). PEFT: its weights alone (adapter.pt)."""
    if cfg.method == "full":
        save_checkpoint(out / "ckpt.pt", asdict(model.cfg), model.state_dict(), tokenizer=str(tokenizer_dir))
        return out / "ckpt.pt"
    path = out / "adapter.pt"
    if cfg.method == "lora":
        save_lora(model, path)
    elif cfg.method == "prefix":
        save_prefix(extras[0], model, path)
    else:
        save_adapters(extras[0], model, path)
    return path


# ----------------------------------------------------------------------------- loss and evaluation


def sft_batches(examples, cfg, block_size, epoch, pad_id, device):
    """One epoch of (x, y, segment or None) batches in the epoch's order."""
    order = epoch_order(examples, cfg.curriculum, epoch, cfg.seed)
    if cfg.packing:
        rows = pack_rows(order, block_size)
        return [
            collate_packed(rows[i : i + cfg.batch_size], pad_id, device)
            for i in range(0, len(rows), cfg.batch_size)
        ]
    return [
        (*collate_padded(order[i : i + cfg.batch_size], pad_id, device), None)
        for i in range(0, len(order), cfg.batch_size)
    ]


def batch_loss(model, x, y, segment):
    """Token-mean NLL over the trained (assistant) tokens of a batch."""
    _, loss = forward_packed(model, x, segment, y) if segment is not None else model(x, y)
    return loss


@torch.no_grad()
def validation_loss(model, batches) -> float:
    """Token-weighted mean NLL over fixed batches."""
    was = model.training
    model.eval()
    total = count = 0.0
    for x, y, seg in batches:
        n = int((y != -100).sum())
        total += batch_loss(model, x, y, seg).item() * n
        count += n
    model.train(was)
    return total / max(count, 1)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- the run


def finetune(cfg: SFTConfig, argv=None) -> dict:
    """Fine-tune, evaluate and write <out>/ (module docstring); returns the outcome dict."""
    check_sft_config(cfg)
    out = Path(cfg.out) if cfg.out else RunLayout(cfg.run).sft
    state = RunState(out, cfg, every=cfg.eval_interval, made_by=RunLayout(cfg.run).made_by("sft"))
    with state.claimed(cfg.overwrite) as tmp:  # refused or locked before any training; the state loaded
        outcome = finetune_into(tmp, cfg, state, argv)
    report(outcome, out)
    return outcome


def feedback_examples(path, n_train) -> list:
    """The conversations users' ratings add (05's feedback_data): the loop from serving back to training."""
    extra = feedback_conversations(read_feedback(path))
    if not extra:
        raise UserError(
            f"--feedback {path}: none of its ratings trains SFT (that takes an up-rated answer or a "
            "down-rated one with a better answer); rate some in the chat, or leave --feedback out"
        )
    print(f"--feedback: {len(extra)} conversations from users' ratings join the {n_train} training ones")
    return extra


def finetune_into(tmp: Path, cfg: SFTConfig, state: RunState, argv=None) -> dict:
    """The work of `finetune`, written into tmp (a folder beside <out>, swapped in when complete);
    `state` is the run's --resume state (04's train_state.RunState: weights, AdamW, RNG, data position)."""
    run = Path(cfg.run)
    device = resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).sft
    base_path = base_checkpoint(cfg)
    tok = load_tokenizer(cfg)
    train_path, held_path = (
        task_file(cfg.run, cfg.train_file, "sft_train.jsonl"),
        task_file(cfg.run, cfg.heldout_file, "sft_heldout.jsonl"),
    )
    train_records, held_records = read_conversations(train_path), read_conversations(held_path)
    if cfg.feedback:
        train_records += feedback_examples(cfg.feedback, len(train_records))
    model = GPT.from_checkpoint(base_path, map_location=device)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"the tokenizer has {tok.vocab_size} tokens but {base_path} only {model.cfg.vocab_size}; "
            "the base was trained with another tokenizer: rerun 04_pretrain"
        )
    if cfg.method == "lora":
        find_targets(model, cfg.lora_targets)  # bad targets fail now, not after the base's evaluation
    T = model.cfg.block_size
    pre_train, pre_val, _ = load_shards(run, T)
    examples, skipped = encode_examples(tok, train_records, T, cfg.strict, str(train_path))
    if not examples:
        raise UserError(
            f"{train_path}: every conversation is longer than the context ({T} tokens); "
            "use shorter conversations or a base model with a longer context"
        )
    train_ex, val_ex = split_validation(examples, cfg.val_frac, cfg.seed)
    held = held_records[: cfg.eval_limit] if cfg.eval_limit else held_records
    print(
        f"{train_path}: {len(train_records)} conversations, {len(examples)} fit the context of {T} tokens, "
        f"{skipped} skipped as longer (never cut); {len(train_ex)} train / {len(val_ex)} validation; "
        f"{len(held)} held-out to answer"
    )

    pad = tok.special_tokens.get("<|pad|>", tok.eot_id)
    base_eval, baselines, shots = baseline_answers(model, tok, held, train_records, cfg, device)
    forget_before = corpus_loss(model, pre_val, T, cfg.forget_windows, device)

    torch.manual_seed(cfg.seed)
    extras = apply_method(model, cfg, marker_ids(tok))
    counts = count_params(model, *extras)
    print(f"method {cfg.method}: {describe_params(counts)}")
    trainable = torch.nn.ModuleList([model, *extras])
    lr = cfg.lr or DEFAULT_LR[cfg.method]
    opt = make_optimizer("adamw", param_groups(trainable, cfg.weight_decay), lr, (0.9, 0.95))
    sched = Schedule(lr, lr / 10, min(cfg.warmup_steps, cfg.steps // 2), cfg.steps, "cosine")
    params = [p for p in trainable.parameters() if p.requires_grad]
    val_batches = (
        sft_batches(val_ex, dataclasses.replace(cfg, curriculum="none"), T, 0, pad, device) if val_ex else []
    )
    n_pre = round(cfg.mix_pretrain * cfg.batch_size)
    sft_rows = max(1, cfg.batch_size - n_pre)

    records, best, bad_evals, stopped = [], {"val_loss": math.inf, "step": 0, "state": None}, 0, "steps"
    guard = DivergenceGuard(lower=f"--lr (now {lr:g})", vocab_size=model.cfg.vocab_size)
    rss_before, t0, cpu0 = peak_rss_mb(), time.time(), time.process_time()
    epoch, batches, step, used, saved_step = 0, [], 0, 0, None
    epoch_batches = lambda e: sft_batches(
        train_ex, dataclasses.replace(cfg, batch_size=sft_rows), T, e, pad, device
    )
    step, records, loop = state.restore("sft", {"trainable": trainable}, {"opt": opt}, guard=guard)
    if step:  # --resume: the position in the data (epoch, batches used of it) and early stopping's state
        epoch, used, best, bad_evals = (loop[k] for k in ("epoch", "used", "best", "bad_evals"))
        batches = epoch_batches(epoch - 1)[used:] if epoch else []
        saved_step = step
    model.train()
    for extra in extras:
        extra.train()
    while step < cfg.steps:
        saved = f"continue from step {saved_step} with --resume" if saved_step else "rerun to start again"
        set_interrupt_hint(f"at step {step}; {out} is as it was; {saved}")
        if not batches:
            batches, used = epoch_batches(epoch), 0
            epoch += 1
        x, y, seg = batches.pop(0)
        used += 1
        set_lr(opt, lr_at(step, sched))
        loss = batch_loss(model, x, y, seg)
        if n_pre:  # pretraining windows: plain LM loss on every token, weighted by their share of the rows
            px, py = get_batch(pre_train, batch_starts(len(pre_train), T, n_pre, cfg.seed, step), T, device)
            loss = (1 - cfg.mix_pretrain) * loss + cfg.mix_pretrain * model(px, py)[1]
        loss.backward()
        grad_norm = clip_grad_norm(params, 1.0)
        guard.check(step + 1, loss, grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        records.append(
            {"step": step, "loss": loss.item(), "lr": lr_at(step - 1, sched), "grad_norm": float(grad_norm)}
        )
        if val_batches and (step % cfg.eval_interval == 0 or step == cfg.steps):
            v = validation_loss(model, val_batches)
            records.append({"step": step, "val_loss": v})
            print(
                f"step {step}/{cfg.steps} | train {records[-2]['loss']:.4f} | validation {v:.4f} | "
                f"{time.time() - t0:.0f}s",
                flush=True,
            )
            if v < best["val_loss"]:
                best = {"val_loss": v, "step": step, "state": [p.detach().clone() for p in params]}
                bad_evals = 0
            else:
                bad_evals += 1
            if cfg.patience and bad_evals >= cfg.patience:
                stopped = "early_stop"
                break
        if step % cfg.eval_interval == 0 and step < cfg.steps:
            loop = {"epoch": epoch, "used": used, "best": best, "bad_evals": bad_evals}
            state.save(
                "sft", step, {"trainable": trainable}, {"opt": opt}, guard=guard, records=records, extra=loop
            )
            saved_step = step
    train_s, train_cpu_s = time.time() - t0, time.process_time() - cpu0
    rss_after = peak_rss_mb()
    if cfg.patience and best["state"] is not None:  # early stopping keeps the best state
        with torch.no_grad():
            for p, saved in zip(params, best["state"]):
                p.copy_(saved)
    model.eval()

    tuned_answers = generate_answers(model, tok, [r["messages"] for r in held], cfg.max_new_tokens, device)
    tuned_eval = score(tuned_answers, held)
    goals, paired, contenders = heldout_bars(tuned_answers, baselines, held, f"SFT ({cfg.method})")
    zh_table = chinese_table(model, tok, cfg, train_records, device)
    forget_after = corpus_loss(model, pre_val, T, cfg.forget_windows, device)
    # what training holds beyond the frozen weights: gradients and AdamW's two moments per trainable number
    state_mb = (counts["total"] + 3 * counts["trainable"]) * 4 / 2**20

    tuned_file = save_tuned(model, extras, cfg, tmp, os.path.relpath(RunLayout(run).tokenizer, out))
    outcome = {
        "method": cfg.method,
        "base_checkpoint": os.path.relpath(base_path, out),
        "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        "params": counts,
        "lr": lr,
        "steps": step,
        "stopped": stopped,
        "best_step": best["step"],
        "best_val_loss": best["val_loss"] if val_batches else None,
        "epochs": epoch,
        "examples": {
            "train_file": str(train_path),
            "conversations": len(train_records),
            "used": len(examples),
            "skipped_too_long": skipped,
            "train": len(train_ex),
            "validation": len(val_ex),
            "heldout": len(held),
        },
        "heldout_base": base_eval,
        "heldout_tuned": tuned_eval,
        "bar": goals[0],
        "bars": [*goals, paired],
        "contenders": contenders,  # exact match and answer accuracy, Wilson intervals: SFT and baselines
        "by_attribute": by_attribute(tuned_answers, held),
        "chinese": zh_table,
        "few_shot": shots,
        "corpus_val_loss": {
            "before": forget_before,
            "after": forget_after,
            "change": forget_after - forget_before,
        },
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "s_per_step": train_s / max(step, 1),
        "device": device,
        "peak_rss_mb": rss_after,
        "train_rss_growth_mb": rss_after - rss_before,
        "train_state_mb": state_mb,
        "file": tuned_file.name,
        "file_kib": tuned_file.stat().st_size / 1024,
    }
    write_jsonl(tmp / "metrics.jsonl", records)
    write_jsonl(
        tmp / "predictions.jsonl",
        [
            {
                "question": r["messages"][-2]["content"],
                "reference": r["messages"][-1]["content"],
                "tuned": a,
                **{name: answers[i] for name, answers in baselines.items()},
            }
            for i, (r, a) in enumerate(zip(held, tuned_answers))
        ],
    )
    outcome.update(outcome_block(outcome))
    write_json(tmp / "outcome.json", outcome)
    plot(records, base_eval, tuned_eval, tmp / "sft.png", f"SFT ({cfg.method})")
    inputs = [
        base_path if cfg.base else RunLayout(run).pretrain,
        RunLayout(run).tokenizer,
        RunLayout(run).tokens,
    ]
    inputs += [Path(f) if f else RunLayout(run).data for f in (cfg.train_file, cfg.heldout_file)]
    inputs += [Path(cfg.feedback)] if cfg.feedback else []
    write_manifest(
        tmp,
        stage="05_sft_lora",
        command=command_line(__file__, argv),
        config=asdict(cfg),
        inputs=inputs,
    )
    return outcome


def main(argv=None):
    cfg, _ = parse_config(SFTConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    finetune(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
