"""Pretrain the GPT of 03_model on the token shards of 02_tokenizer: one readable loop.

    python 04_pretrain/pretrain.py --data runs/tiny                    # tiny preset, CPU, ~3 minutes
    python 04_pretrain/pretrain.py --data runs/tiny --resume           # continue from ckpt.pt exactly
    torchrun --nproc_per_node=2 04_pretrain/pretrain.py --data runs/tiny --parallel fsdp
    python 04_pretrain/pretrain.py --data runs/web --preset gpt2       # GPT-2 124M, for a GPU

Writes `runs/<name>/pretrain/`: ckpt.pt (03_model/checkpoint_io.py format: model, optimizer, step,
RNG states, loss scaler, data position), metrics.jsonl, loss.png and outcome.json.

One optimizer step, in order (each a few lines of `train` below):
  1. lr from the schedule (optim.lr_at)
  2. for each of `grad_accum` micro-batches: forward under autocast, loss / grad_accum, backward
     (DDP/FSDP skip the gradient all-reduce on all but the last micro-batch)
  3. fp16: unscale the grads, skip the step if any is inf; clip by the global norm; optimizer step
  4. every `eval_interval` steps: val loss, checkpoint, early-stopping check

Data: the global batch of step s is `batch_size` random windows whose start offsets come from a
generator seeded with (seed, s) only; rank r takes its rows of it. So a resumed run, or the same run
on another number of processes, sees exactly the same tokens at every step.

Distributed (under torchrun; gloo on CPU, NCCL on GPU): DDP or FSDP2 (= ZeRO-3), set up in
torch_parallel.py, which also explains ZeRO-1/2. Checkpoints hold full state dicts, so a run saved by N
FSDP ranks resumes on any number of processes.

Interview questions it answers:
- How do you resume bit-exactly? (weights + optimizer moments + step + scaler + RNG states, and a
  data order that is a function of the step, not of an iterator's hidden position)
- What does gradient accumulation change? (nothing in the math if each micro-loss is divided by the
  number of micro-batches; it trades memory for time; under DDP sync only on the last micro-step)
- What is MFU? (achieved FLOP/s / peak FLOP/s, achieved = tokens/s x FLOPs per token (~6N + attention))
- DDP vs FSDP vs ZeRO-1/2/3? (torch_parallel.py). Why clip by the global norm? (one scale for all grads keeps
  the update direction; per-tensor clipping would change it)
"""
import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data"), str(REPO / "03_model")]
from common import UserError, run_cli, atomic_path, check_artifact, read_json, write_json, save_figure  # 01_data
from checkpoint_io import save_checkpoint, load_checkpoint, check_config_matches  # 03_model
from gpt import GPT, GPTConfig, flops_per_token  # 03_model
import gpt as gpt_module  # 03_model: its architecture presets (gpt2 / llama)

from torch_parallel import full_state, grad_sync, load_full_state, rng_states, setup_distributed, wrap_model
from optimizers import (DynamicLossScaler, Schedule, clip_grad_norm, lr_at, make_optimizer,
                   param_groups, set_lr)


# ----------------------------------------------------------------------------------------------
# Configuration and presets

@dataclass
class TrainConfig:
    data: str = ""               # runs/<name>: reads tokens/, writes pretrain/
    out: str = ""                # default: <data>/pretrain
    # model (03_model GPTConfig fields; arch picks gpt.py's gpt2/llama flavour)
    arch: str = "llama"
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0           # 0 = n_head
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    attn_backend: str = "auto"
    # batch: batch_size sequences per optimizer step, split over ranks and micro-batches
    batch_size: int = 32
    micro_batch: int = 0         # sequences per forward on one rank; 0 = batch_size / world
    train_tokens: int = 0        # use only the first N train tokens (0 = all); for overfit.py
    # optimizer and schedule
    optimizer: str = "adamw"     # adamw | lamb
    lr: float = 1e-3
    min_lr: float = 1e-4
    schedule: str = "cosine"     # cosine | wsd
    warmup_steps: int = 50
    decay_frac: float = 0.2
    max_steps: int = 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0       # 0 = off
    # systems
    dtype: str = "fp32"          # fp32 | bf16 | fp16 (fp16 adds the dynamic loss scaler)
    parallel: str = "ddp"        # under torchrun: ddp | fsdp
    grad_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"
    peak_flops: float = 0.0      # for MFU; 0 = from the GPU name (none on CPU)
    # evaluation, checkpoints, logging
    eval_interval: int = 100
    eval_batches: int = 8
    patience: int = 0            # early stopping: evals without improvement (0 = off)
    eval_train: bool = False     # also measure the loss on train windows, eval mode (overfit.py)
    log_interval: int = 10
    seed: int = 1337
    quiet: bool = False          # print only the final line (scaling.py / overfit.py sweeps)
    stop_at: int = 0             # act as if killed after this step (to test --resume); 0 = off
    resume: bool = False


PRESETS = {
    # CPU, generated corpus: 300 steps x 2048 tokens (~1 epoch of runs/tiny), 1.1M params, a few
    # minutes on a laptop CPU; the loss passes the unigram baseline within ~30 steps.
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, lr=2e-3,
                 min_lr=2e-4, warmup_steps=30, max_steps=300, eval_interval=50, eval_batches=4),
    # A laptop's hour or a GPU's minutes: nanoGPT's Shakespeare-char scale.
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, lr=1e-3,
                  min_lr=1e-4, warmup_steps=200, max_steps=5000, dropout=0.1, eval_interval=250,
                  eval_batches=20),
    # GPT-2 124M: context 1024, ~0.5M tokens per step (480 x 1024), 10B tokens in 19073 steps.
    "gpt2": dict(arch="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=480,
                 micro_batch=12, lr=6e-4, min_lr=6e-5, warmup_steps=715, max_steps=19073,
                 dtype="bf16", compile=True, attn_backend="auto", eval_interval=500,
                 eval_batches=40, log_interval=10),
}

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12,
              "A10": 125e12, "V100": 125e12, "T4": 65e12}   # dense bf16/fp16 tensor-core peaks


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_kv_head=cfg.n_kv_head or None, n_embd=cfg.n_embd,
                     dropout=cfg.dropout, attn_backend=cfg.attn_backend,
                     **gpt_module.PRESETS[cfg.arch])


# ----------------------------------------------------------------------------------------------
# Data: memmap shards and deterministic batches

SCAN_TOKENS = 20_000_000   # checks and the unigram baseline read at most this prefix of a shard


def load_shards(data_dir: Path, train_tokens=0):
    """(train, val, meta): uint16/uint32 memmaps of 02_tokenizer's shards, checked against meta.json."""
    tok = data_dir / "tokens"
    meta_path = tok / "meta.json"
    check_artifact(tok, made_by=f"python 02_tokenizer/bpe.py --data {data_dir}")   # present, intact, current
    meta = read_json(meta_path, made_by=f"python 02_tokenizer/bpe.py --data {data_dir}")
    dtype = np.dtype(meta.get("dtype", ""))
    vocab = int(meta["vocab_size"])
    if dtype not in (np.uint16, np.uint32):
        raise UserError(f"{meta_path}: dtype {meta.get('dtype')!r} unsupported; expected uint16 or uint32")
    shards = {}
    for split in ("train", "val"):
        path = tok / f"{split}.bin"
        if not path.is_file():
            raise UserError(f"{path}: missing; re-run `python 02_tokenizer/bpe.py --data {data_dir}`")
        arr = np.memmap(path, dtype=dtype, mode="r")
        expected = meta.get("n_tokens", {}).get(split)
        if expected is not None and len(arr) != expected:
            raise UserError(f"{path}: {len(arr)} tokens but meta.json says {expected}; the shards and "
                            "meta.json come from different runs: re-run the tokenizer")
        top = int(arr[:SCAN_TOKENS].max()) if len(arr) else 0     # a prefix: shards can be GBs
        if top >= vocab:
            raise UserError(f"{path}: token id {top} >= vocab_size {vocab} in meta.json; the shard "
                            "was made by a different tokenizer: re-run `02_tokenizer/bpe.py`")
        shards[split] = arr
    train = shards["train"][:train_tokens] if train_tokens else shards["train"]
    return train, shards["val"], meta


def batch_starts(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The start offsets of step `step`'s global batch: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - block_size - 1, size=batch_size, endpoint=True)


def get_batch(data, starts, block_size, device):
    """x, y: (len(starts), block_size) int64; y is x shifted left by one token."""
    rows = np.stack([data[s:s + block_size + 1] for s in starts]).astype(np.int64)
    xy = torch.from_numpy(rows).to(device)
    return xy[:, :-1], xy[:, 1:]


def rank_rows(starts, micro: int, rank: int, world: int, micro_batch: int):
    """Rank `rank`'s rows of micro-step `micro`: global rows are laid out [micro][rank][row]."""
    i = (micro * world + rank) * micro_batch
    return starts[i:i + micro_batch]


def unigram_loss(train, val, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of val under the train shard's token frequencies (add-one smoothed).

    (Over at most SCAN_TOKENS of each shard, plenty to estimate a unigram distribution.)

    The loss of a model that ignores context entirely: a trained LM must beat it clearly.
    """
    counts = np.bincount(np.asarray(train[:SCAN_TOKENS]), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val[:SCAN_TOKENS])].mean())


# ----------------------------------------------------------------------------------------------
# Settings that cannot run

def check_config(cfg: TrainConfig, world: int, device: str):
    """Raise a UserError for settings that cannot run; returns (micro_batch, grad_accum)."""
    micro = cfg.micro_batch or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % (micro * world):
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by micro_batch {micro} x world "
                        f"size {world}; choose --batch-size as a multiple of {max(1, micro) * world}")
    if cfg.dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--dtype {cfg.dtype!r} unknown; choose fp32, bf16 or fp16")
    if cfg.dtype == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support (pre-Ampere); use --dtype fp16 (loss scaling) or fp32")
    if cfg.compile and device == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        raise UserError("--compile on CPU needs a C++ compiler (g++) and none is installed; drop --compile")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise UserError(f"--parallel {cfg.parallel!r} unknown; choose ddp or fsdp")
    if cfg.optimizer not in ("adamw", "lamb") or cfg.schedule not in ("cosine", "wsd"):
        raise UserError("--optimizer must be adamw or lamb and --schedule cosine or wsd")
    if cfg.lr <= 0 or cfg.max_steps < 1:
        raise UserError("--lr must be > 0 and --max-steps >= 1")
    return micro, cfg.batch_size // (micro * world)


# ----------------------------------------------------------------------------------------------
# Checkpoints: model + optimizer (full state dicts, torch_parallel.py) + step, scaler, RNG, data position

def save_state(path, model, opt, scaler, mcfg, cfg, step, best, world, rank):
    model_state, optim_state = full_state(model, opt, world)
    rng = rng_states(world)
    if rank == 0:
        save_checkpoint(path, dataclasses.asdict(mcfg), model_state, optimizer=optim_state,
                        train_config=dataclasses.asdict(cfg), step=step, rng=rng,
                        scaler=scaler.state_dict(), best=best,
                        tokenizer=str((Path(cfg.data) / "tokenizer").resolve()),
                        data={"seed": cfg.seed, "next_step": step, "world": world})
    if world > 1:
        dist.barrier()


def restore_state(path, model, opt, scaler, mcfg, rank):
    """Load ckpt.pt into model/opt/scaler and this rank's RNG; returns (step, best)."""
    ckpt = load_checkpoint(path)
    check_config_matches(ckpt["config"], dataclasses.asdict(mcfg), path)
    load_full_state(model, opt, ckpt["model"], ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if rank < len(ckpt["rng"]["cpu"]):
        torch.set_rng_state(ckpt["rng"]["cpu"][rank])
        if torch.cuda.is_available() and ckpt["rng"]["cuda"][rank].numel():
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rank])
    return int(ckpt["step"]), dict(ckpt["best"])


# ----------------------------------------------------------------------------------------------
# Evaluation, metrics, plot

@torch.no_grad()
def evaluate(model, val, cfg, micro, rank, world, device, autocast) -> float:
    """Mean loss over `eval_batches` x `batch_size` fixed, evenly spaced val windows.

    The windows do not depend on the world size, so 1 and N processes report the same val loss.
    They are cut into chunks of `micro` rows dealt round-robin to the ranks: every rank runs the
    same number of forwards (FSDP all-gathers inside each one, so a rank must not skip one).
    """
    starts = np.linspace(0, len(val) - cfg.block_size - 1, cfg.eval_batches * cfg.batch_size).astype(np.int64)
    chunks = [starts[i:i + micro] for i in range(0, len(starts), micro)]
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for rows in chunks[rank::world]:
        x, y = get_batch(val, rows, cfg.block_size, device)
        with autocast:
            _, loss = model(x, y)
        total += loss.double()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return total.item() / len(chunks)


def read_metrics(path: Path, upto_step: int) -> list:
    """metrics.jsonl records with step <= upto_step (a killed run may leave later or partial lines)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            if rec.get("step", upto_step + 1) <= upto_step:
                records.append(rec)
    return records


def plot_losses(records, baseline, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="val")
    ax.axhline(baseline, ls="--", c="gray", label=f"unigram baseline {baseline:.2f}")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="pretraining loss")
    ax.legend()
    save_figure(fig, path)


class Diverged(UserError):
    """The loss became nan/inf: training stops, the last good checkpoint is left as it was."""


# ----------------------------------------------------------------------------------------------
# The loop

def train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed(cfg.device)
    micro, accum = check_config(cfg, world, device)
    data_dir = Path(cfg.data)
    out = Path(cfg.out) if cfg.out else data_dir / "pretrain"
    train_data, val_data, meta = load_shards(data_dir, cfg.train_tokens)
    for split, arr in (("train", train_data), ("val", val_data)):
        if len(arr) < cfg.block_size + 2:
            raise UserError(f"the {split} split has {len(arr)} tokens, fewer than block_size+2 = "
                            f"{cfg.block_size + 2}; lower --block-size or give it more data")
    mcfg = model_config(cfg, int(meta["vocab_size"]))
    torch.manual_seed(cfg.seed)                               # same initial weights on every rank
    raw = GPT(mcfg).to(device)
    model = wrap_model(raw, cfg.parallel, world, device, cfg.compile, cfg.grad_checkpointing)
    opt = make_optimizer(cfg.optimizer, param_groups(raw, cfg.weight_decay), cfg.lr,
                         (cfg.beta1, cfg.beta2), foreach=device.startswith("cuda"))
    sched = Schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_frac)
    scaler = DynamicLossScaler(enabled=cfg.dtype == "fp16")
    dev_type = torch.device(device).type
    autocast = (torch.autocast(dev_type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype])
                if cfg.dtype != "fp32" else contextlib.nullcontext())
    torch.manual_seed(cfg.seed + 1 + rank)                    # dropout masks differ across ranks
    ckpt_path, metrics_path = out / "ckpt.pt", out / "metrics.jsonl"

    step, best = 0, {"val_loss": float("inf"), "step": -1, "bad_evals": 0}
    if cfg.resume:
        step, best = restore_state(ckpt_path, model, opt, scaler, mcfg, rank)
    records = read_metrics(metrics_path, step) if cfg.resume else []
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(metrics_path) as tmp:                 # drop what a killed run wrote past the ckpt
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics_file = open(metrics_path, "a") if rank == 0 else None

    baseline = unigram_loss(train_data, val_data, mcfg.vocab_size)
    fpt = flops_per_token(mcfg)
    peak = cfg.peak_flops or (next((v for k, v in PEAK_FLOPS.items()
                                    if k in torch.cuda.get_device_name(device)), 0.0)
                              if dev_type == "cuda" else 0.0)
    params = raw.num_params(non_embedding=False)
    tokens_per_step = cfg.batch_size * cfg.block_size
    tty = sys.stdout.isatty()
    if rank == 0 and not cfg.quiet:
        print(f"model {params / 1e6:.2f}M params | {world} x {micro} x {accum} accum = {cfg.batch_size} seqs x "
              f"{cfg.block_size} tokens per step | {len(train_data):,} train tokens | {device} {cfg.dtype}"
              f"{' ' + cfg.parallel if world > 1 else ''} | unigram baseline {baseline:.3f}")

    def log(rec):
        records.append(rec)
        if metrics_file:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()

    t_start, t_last, stopped, val_loss, last = time.time(), time.time(), "max_steps", float("nan"), {}
    model.train()
    while step < cfg.max_steps:
        lr = lr_at(step, sched)
        set_lr(opt, lr)
        starts = batch_starts(len(train_data), cfg.block_size, cfg.batch_size, cfg.seed, step)
        loss_sum = torch.zeros((), device=device)
        for k in range(accum):
            x, y = get_batch(train_data, rank_rows(starts, k, rank, world, micro), cfg.block_size, device)
            with grad_sync(model, sync=k == accum - 1), autocast:
                _, loss = model(x, y)
                loss = loss / accum                            # the mean over the whole global batch
            scaler.scale_loss(loss).backward()
            loss_sum += loss.detach().float()                  # stays on the device: no sync per micro-step
        if world > 1:                                          # report the global mean, not rank 0's
            dist.all_reduce(loss_sum)
            loss_sum /= world
        params_list = [p for p in model.parameters()]
        found_inf = scaler.unscale_(params_list)
        grad_norm = clip_grad_norm(params_list, cfg.grad_clip)
        loss_sum, grad_norm = torch.stack([loss_sum, grad_norm.float().to(device)]).tolist()  # the step's one host sync
        if not math.isfinite(loss_sum) or (not math.isfinite(grad_norm) and not scaler.enabled):
            kept = f"the last good checkpoint (step {best.get('saved_step', 0)}) is kept at {ckpt_path}" \
                if ckpt_path.is_file() else "no checkpoint was written yet"
            if rank == 0:
                write_json(out / "outcome.json", {"status": "diverged", "step": step, "loss": loss_sum})
            raise Diverged(f"loss is {loss_sum} (grad norm {grad_norm}) at step {step}: training diverged; "
                           f"{kept}. Lower --lr, raise --warmup-steps, or use --dtype fp32")
        if not found_inf:                                      # fp16 overflow: skip this update
            opt.step()
        scaler.update(found_inf)
        opt.zero_grad(set_to_none=True)
        step += 1

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            now = time.time()
            n_steps = cfg.log_interval if step % cfg.log_interval == 0 else step % cfg.log_interval
            tok_s = n_steps * tokens_per_step / max(now - t_last, 1e-9)
            mfu = tok_s * fpt / peak if peak else None
            t_last = now
            last = {"step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": tok_s, "mfu": mfu, "skipped": found_inf, "loss_scale": scaler.scale}
            log(last)
            if rank == 0 and tty and not cfg.quiet:
                print(f"\rstep {step}/{cfg.max_steps} | loss {loss_sum:.4f} | lr {lr:.2e} | "
                      f"{tok_s:,.0f} tok/s" + (f" | MFU {mfu:.1%}" if mfu else ""), end="", flush=True)

        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            val_loss = evaluate(model, val_data, cfg, micro, rank, world, device, autocast)
            rec = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
            if cfg.eval_train:
                rec["train_eval_loss"] = evaluate(model, train_data, cfg, micro, rank, world, device, autocast)
            log(rec)
            improved = val_loss < best["val_loss"]
            best.update(val_loss=min(val_loss, best["val_loss"]), bad_evals=0 if improved else best["bad_evals"] + 1)
            if improved:
                best["step"] = step
            best["saved_step"] = step
            save_state(ckpt_path, model, opt, scaler, mcfg, cfg, step, best, world, rank)
            if rank == 0 and not cfg.quiet:
                print(("\r" if tty else "") + f"step {step}/{cfg.max_steps} | train {last.get('loss', loss_sum):.4f} "
                      f"| val {val_loss:.4f} (ppl {math.exp(min(val_loss, 50)):.1f}) | "
                      f"{last.get('tokens_per_s', 0):,.0f} tok/s"
                      + (f" | MFU {last['mfu']:.1%}" if last.get("mfu") else "")
                      + f" | {time.time() - t_start:.0f}s", flush=True)
            if cfg.patience and best["bad_evals"] >= cfg.patience:
                stopped = "early_stop"
                break
        if cfg.stop_at and step >= cfg.stop_at:
            stopped = "stop_at"                                 # simulated kill: no final save
            break

    if metrics_file:
        metrics_file.close()
    wall = time.time() - t_start
    outcome = {"status": stopped, "steps": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
               "best_val_loss": best["val_loss"], "best_step": best["step"], "unigram_val_loss": baseline,
               "train_loss": last.get("loss"), "tokens_seen": step * tokens_per_step, "wall_s": wall,
               "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"), "params": params,
               "params_non_embedding": raw.num_params(non_embedding=True),
               "world": world, "device": device, "dtype": cfg.dtype, "ckpt": str(ckpt_path)}
    if rank == 0 and stopped != "stop_at":
        write_json(out / "outcome.json", outcome)
        plot_losses(records, baseline, out / "loss.png")
        verdict = "better" if val_loss < baseline else "WORSE"
        print(f"done: val loss {val_loss:.4f} vs unigram baseline {baseline:.4f} "
              f"({abs(baseline - val_loss):.3f} nats {verdict}) in {wall:.0f}s; wrote {out}/")
    outcome["records"] = records
    return outcome


# ----------------------------------------------------------------------------------------------
# Command line

CHOICES = {"arch": ("llama", "gpt2"), "optimizer": ("adamw", "lamb"), "schedule": ("cosine", "wsd"),
           "dtype": ("fp32", "bf16", "fp16"), "parallel": ("ddp", "fsdp"),
           "attn_backend": ("auto", "triton", "torch", "tiled", "sdpa")}
HELP = {"out": "output folder (default <data>/pretrain)", "arch": "03_model flavour",
        "n_kv_head": "key/value heads for GQA/MQA (0 = n_head)",
        "batch_size": "sequences per optimizer step, over all ranks and micro-batches",
        "micro_batch": "sequences per forward on one rank (0 = batch_size / world size)",
        "train_tokens": "train on the first N tokens only (0 = all)", "min_lr": "lr at the end of the decay",
        "decay_frac": "WSD: fraction of max_steps spent decaying", "grad_clip": "global-norm clip (0 = off)",
        "dtype": "fp16 adds the dynamic loss scaler", "parallel": "under torchrun",
        "grad_checkpointing": "recompute each block in backward (less memory, ~30%% more compute)",
        "peak_flops": "peak FLOP/s for MFU (0 = from the GPU name)",
        "eval_batches": "val loss over eval_batches x batch_size fixed windows",
        "patience": "early stopping: evals without improvement (0 = off)",
        "eval_train": "also evaluate on train windows (overfit.py)", "quiet": "print only the last line",
        "stop_at": "stop after this step as if killed, to try --resume (0 = off)",
        "resume": "continue exactly from <out>/ckpt.pt"}


def parse_config(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="runs/<name> with tokens/ from 02_tokenizer")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data",):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{HELP.get(f.name, '')} (default: {getattr(defaults, f.name)!r} or the preset's)".strip()
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            p.add_argument(flag, type=typ, default=None, choices=CHOICES.get(f.name), help=help_text)
    args = p.parse_args(argv)
    values = {**PRESETS[args.preset], "data": args.data}
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "preset"})
    return TrainConfig(**values)


def main(argv=None):
    cfg = parse_config(argv)
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
