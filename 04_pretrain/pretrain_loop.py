"""Pretrain the GPT of 03_model on the token shards of 02_tokenizer: one readable loop, `train(cfg)`.

The command is pretrain.py (this file is its library: overfit.py and scaling.py call `train` too):

    python 04_pretrain/pretrain.py --data runs/tiny                    # tiny preset, CPU, ~3 minutes
    python 04_pretrain/pretrain.py --data runs/tiny --resume           # continue from ckpt.pt exactly
    torchrun --nproc_per_node=2 04_pretrain/pretrain.py --data runs/tiny --parallel fsdp
    python 04_pretrain/pretrain.py --data runs/web --preset gpt2       # GPT-2 124M, for a GPU

Writes `runs/<name>/pretrain/` (train_state.py says what each checkpoint holds):
- best.pt: the weights of the eval with the lowest val loss. **Later stages load this one.**
- ckpt.pt: the full training state of the last eval; `--resume` continues from it bit-exactly.
- metrics.jsonl, loss.png, outcome.json (val loss in nats/token and bits per byte, the unigram
  baseline, tokens/s, MFU; the headline and bar: best.pt on the whole val and test splits against
  Kneser-Ney n-grams, heldout_loss.py; fact recall, fact_recall.py), and manifest.json: "running"
  from the start, "complete" at the end,
  so a later stage refuses a run that is unfinished, diverged or damaged.

The folder is locked while a process writes it; a fresh run into a folder that holds another run
refuses unless --overwrite (which removes the old run first and says so: checkpoints must live in
place for --resume, so there is no building beside it and swapping). --resume refuses a config
that would change the data order, schedule or optimizer (train_state.py lists each field), and on
a finished run says so and changes nothing.

One optimizer step, in order (`train_step` and the loop in `run_loop`):
  1. lr from the schedule (optimizers.lr_at)
  2. for each of `accum` micro-batches: forward under autocast, loss / accum, backward
     (DDP/FSDP skip the gradient all-reduce on all but the last micro-batch)
  3. fp16: unscale the grads, skip the step if any is inf; clip by the global norm; optimizer step
  4. every `eval_interval` steps: val loss, best.pt if it improved, ckpt.pt, early-stopping check

Data (batches.py): the global batch of step s is a pure function of (seed, s), so a resumed
run, or the same run on another number of processes, sees exactly the same tokens at every step.
Distributed (under torchrun; gloo on CPU, NCCL on GPU): torch's DDP or FSDP2 (= ZeRO-3), set up in
torch_parallel.py -- the production path -- or, to learn from, the hand-written equivalents proven
equal to them: `--parallel ddp_by_hand` (ddp_by_hand.py: bucketed all-reduce from backward hooks) and
`zero1`/`zero2` (zero_sharding.py: AdamW's state sharded over ranks). Checkpoints hold full state
dicts, so a run saved by N FSDP or ZeRO ranks resumes on any number of processes.

Interview questions it answers:
- How do you resume bit-exactly? (weights + optimizer moments + step + scaler + RNG states, and a
  data order that is a function of the step, not of an iterator's hidden position)
- What does gradient accumulation change? (nothing in the math if each micro-loss is divided by the
  number of micro-batches; it trades memory for time; under DDP sync only on the last micro-step)
- What is MFU? (achieved FLOP/s / peak FLOP/s, achieved = tokens/s x FLOPs per token (~6N + attention))
- What is bits per byte? (batches.bits_per_byte: the loss of the text, whatever the tokenizer)
- DDP vs FSDP vs ZeRO-1/2/3? (torch_parallel.py). Why clip by the global norm? (one scale for all
  grads keeps the update direction; per-tensor clipping would change it)
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, set_interrupt_hint
from common.files import atomic_write_text, pyplot, read_json, save_figure, write_json
from common.layout import RunLayout
from common.outcome import make_bar
from common.runs import MANIFEST, claim_output, run_lock
from divergence import DivergenceGuard  # 03_model
from gpt import GPT, GPTConfig, flops_per_token  # 03_model

from optimizers import (
    DynamicLossScaler,
    Schedule,
    clip_grad_norm,
    lr_at,
    make_optimizer,
    param_groups,
    set_lr,
)
from fact_recall import format_recall, recall_of_checkpoint
from heldout_loss import heldout_outcome, window_token_losses
from batches import batch_starts, bits_per_byte, eval_starts, get_batch, load_shards, rank_rows, unigram_loss
from torch_parallel import grad_sync, setup_distributed, unwrap_for_state, wrap_model
from zero_sharding import ZeroAdamW
from pretrain_config import (
    TrainConfig,
    batch_split,
    check_device_support,
    check_train_config,
    command_for,
    model_config,
    peak_flops,
)
from train_state import (
    BEST,
    CKPT,
    check_resume,
    finished_reason,
    load_resume_checkpoint,
    read_metrics,
    restore_training_state,
    save_training_state,
    write_run_manifest,
)


# ----------------------------------------------------------------------------------------------
# Setup: everything the loop needs, built once


@dataclass
class Setup:
    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: str
    micro: int  # sequences per forward on one rank
    accum: int  # micro-steps per optimizer step
    train_data: np.ndarray  # batches.load_shards
    val_data: np.ndarray
    meta: dict  # tokens/meta.json
    mcfg: GPTConfig
    raw: GPT  # the model itself: parameter counts
    model: torch.nn.Module  # what the loop calls: raw, compiled, DDP- or FSDP-wrapped
    opt: torch.optim.Optimizer
    sched: Schedule
    scaler: DynamicLossScaler
    autocast: contextlib.AbstractContextManager
    header: dict  # what every checkpoint carries (train_state.save_training_state)
    resume_command: str


def build_model(cfg: TrainConfig, mcfg: GPTConfig, world: int, device: str):
    """(raw, model): the GPT, and the module the loop calls (torch_parallel.wrap_model)."""
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    raw = GPT(mcfg).to(device)
    return raw, wrap_model(raw, cfg.parallel, world, device, cfg.compile, cfg.grad_checkpointing)


def build_optimizer(cfg: TrainConfig, raw: GPT, device: str, world: int = 1) -> torch.optim.Optimizer:
    if cfg.parallel in ("zero1", "zero2") and world > 1:  # each rank keeps 1/world of AdamW's state
        return ZeroAdamW(
            param_groups(raw, cfg.weight_decay),
            stage=int(cfg.parallel[-1]),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
        )
    return make_optimizer(
        cfg.optimizer,
        param_groups(raw, cfg.weight_decay),
        cfg.lr,
        (cfg.beta1, cfg.beta2),
        foreach=device.startswith("cuda"),
    )


def setup(cfg: TrainConfig, shards, tokens_id: str, out: Path, rank: int, world: int, device: str) -> Setup:
    """The model, optimizer, schedule, loss scaler and autocast of the run, and what its checkpoints carry.
    A parallelism strategy plugs in at build_model (how the model is wrapped) and build_optimizer."""
    train_data, val_data, meta = shards
    micro, accum = batch_split(cfg, world)
    mcfg = model_config(cfg, meta["vocab_size"])
    raw, model = build_model(cfg, mcfg, world, device)
    opt = build_optimizer(cfg, raw, device, world)
    sched = Schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_frac)
    autocast = (
        torch.autocast(
            torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
        )
        if cfg.dtype != "fp32"
        else contextlib.nullcontext()
    )
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout masks differ across ranks
    tokenizer = Path(cfg.data) / meta.get("tokenizer_dir", "tokenizer")
    header = {
        "config": dataclasses.asdict(mcfg),
        "train_config": dataclasses.asdict(cfg),
        "tokenizer": os.path.relpath(tokenizer.resolve(), out.resolve()),  # e.g. "../tokenizer"
        "data": {"seed": cfg.seed, "world": world, "tokens_id": tokens_id},
    }
    return Setup(
        cfg,
        out,
        rank,
        world,
        device,
        micro,
        accum,
        train_data,
        val_data,
        meta,
        mcfg,
        raw,
        model,
        opt,
        sched,
        DynamicLossScaler(enabled=cfg.dtype == "fp16"),
        autocast,
        header,
        command_for(cfg, resume=True),
    )


# ----------------------------------------------------------------------------------------------
# One optimizer step, evaluation


def train_step(s: Setup, step: int):
    """Forward and backward over the step's global batch, then unscale and clip.

    Returns (loss, grad_norm, found_inf) as Python values: the step's one host sync."""
    cfg = s.cfg
    starts = batch_starts(len(s.train_data), cfg.block_size, cfg.batch_size, cfg.seed, step)
    loss_sum = torch.zeros((), device=s.device)
    for k in range(s.accum):
        x, y = get_batch(
            s.train_data, rank_rows(starts, k, s.rank, s.world, s.micro), cfg.block_size, s.device
        )
        with grad_sync(s.model, sync=k == s.accum - 1), s.autocast:
            _, loss = s.model(x, y)
            loss = loss / s.accum  # the mean over the whole global batch
        s.scaler.scale_loss(loss).backward()
        loss_sum += loss.detach().float()  # stays on the device: no sync per micro-step
    if s.world > 1:  # report the global mean, not rank 0's
        dist.all_reduce(loss_sum)
        loss_sum /= s.world
    params = list(s.model.parameters())
    found_inf = s.scaler.unscale_(params)
    grad_norm = (
        s.opt.clip_grad_norm(cfg.grad_clip)
        if isinstance(s.opt, ZeroAdamW)  # reduces the grads first
        else clip_grad_norm(params, cfg.grad_clip)
    )
    loss_value, norm_value = torch.stack([loss_sum, grad_norm.float().to(s.device)]).tolist()
    return loss_value, norm_value, found_inf


@torch.no_grad()
def evaluate(
    model,
    data,
    block_size: int,
    n_windows: int,
    micro: int,
    device: str,
    autocast=contextlib.nullcontext(),
    rank=0,
    world=1,
) -> float:
    """Mean loss over `n_windows` fixed, evenly spaced windows of `data` (heldout_loss.py measures it).

    The windows do not depend on the world size, so 1 and N processes report the same loss. They
    are cut into chunks of `micro` rows dealt round-robin to the ranks: every rank runs the same
    number of forwards (FSDP all-gathers inside each one, so a rank must not skip one).
    """
    starts = eval_starts(len(data), block_size, n_windows)
    chunks = [starts[i : i + micro] for i in range(0, len(starts), micro)]
    total = torch.zeros((), dtype=torch.float64, device=device)
    for rows in chunks[rank::world]:
        total += float(window_token_losses(model, data, block_size, device, rows, micro, autocast).mean())
    if world > 1:
        dist.all_reduce(total)
    return total.item() / len(chunks)


class Diverged(UserError):
    """The loss became nan/inf: training stops, the checkpoints on disk are left as they were."""


# ----------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, command: str = "") -> dict:
    """Train (or with cfg.resume, continue) the run `cfg` describes; returns its outcome with the
    metric records. Everything is checked before anything is written: config, device, token shards."""
    rank, world, device = setup_distributed(cfg.device)
    check_train_config(cfg, world)
    check_device_support(cfg, device)
    shards = load_shards(Path(cfg.data), cfg.block_size, cfg.train_tokens)  # refuses bad or stale tokens
    tokens_id = read_json(RunLayout(cfg.data).tokens / MANIFEST)["id"]
    out = Path(cfg.out) if cfg.out else RunLayout(cfg.data).pretrain
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; remove it or choose another --out")
    with run_lock(out, enabled=rank == 0):  # a second writer fails here, naming our pid
        ckpt = None
        if cfg.resume:
            ckpt = load_resume_checkpoint(out)
            changed = check_resume(ckpt, cfg, tokens_id, out / CKPT)
            if changed and rank == 0:
                print(f"--resume with {changed} (--allow-config-change)")
            done = finished_reason(ckpt, cfg)
            if done:  # nothing is written
                if rank == 0:
                    print(f"{out}: {done}")
                return {
                    **(read_json(out / "outcome.json") if (out / "outcome.json").is_file() else {}),
                    "status": "already_finished",
                    "records": read_metrics(out, int(ckpt["step"])),
                }
        elif rank == 0:
            claim_output(out, cfg.overwrite, remove=True, resume_hint="or --resume to continue it")
        if world > 1:
            dist.barrier()
        s = setup(cfg, shards, tokens_id, out, rank, world, device)
        step, best = 0, {"val_loss": float("inf"), "step": -1, "bad_evals": 0}
        if ckpt is not None:
            step, best = restore_training_state(
                ckpt, unwrap_for_state(s.model), s.opt, s.scaler, s.header["config"], rank
            )
        command = (
            command_for(cfg) if cfg.resume or not command else command
        )  # what makes this run from scratch
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_run_manifest(out, cfg, command, "running", s.resume_command, files=[])
        outcome = run_loop(s, step, best, resumed=ckpt is not None, command=command)  # Ctrl-C in it: run_cli
        set_interrupt_hint("")  # prints the hint
        return outcome


def run_loop(s: Setup, step: int, best: dict, resumed: bool, command: str) -> dict:
    """Optimizer steps from `step` to cfg.max_steps (or early stop), logging, evaluating, saving."""
    cfg, out, rank = s.cfg, s.out, s.rank
    records = read_metrics(out, step) if resumed else []
    if rank == 0:  # drop what a killed run logged past the ckpt
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    metrics_file = open(out / "metrics.jsonl", "a") if rank == 0 else None

    def log(rec):
        records.append(rec)
        if metrics_file:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()

    def measure(data):  # the loss on the same fixed windows every eval
        return evaluate(
            s.model,
            data,
            cfg.block_size,
            cfg.eval_batches * cfg.batch_size,
            s.micro,
            s.device,
            s.autocast,
            rank,
            s.world,
        )

    baseline = unigram_loss(s.train_data, s.val_data, s.mcfg.vocab_size)
    fpt, peak = flops_per_token(s.mcfg), peak_flops(s.device, cfg.peak_flops)
    tokens_per_step = cfg.batch_size * cfg.block_size
    tty, talk = sys.stdout.isatty(), rank == 0 and not cfg.quiet
    if talk:
        print(
            f"model {s.raw.num_params(non_embedding=False) / 1e6:.2f}M params | {s.world} x {s.micro} x "
            f"{s.accum} accum = {cfg.batch_size} seqs x {cfg.block_size} tokens per step | "
            f"{len(s.train_data):,} train tokens | {s.device} {cfg.dtype}"
            f"{' ' + cfg.parallel if s.world > 1 else ''} | unigram baseline {baseline:.3f}"
            + (f" | resuming at step {step}" if resumed else "")
        )

    saved_step = step if resumed else None  # the step of the ckpt.pt on disk
    t_start = t_last = time.time()
    stopped, val_loss, last = "max_steps", float("nan"), {}
    s.model.train()
    set_interrupt_hint(interrupt_hint(step, saved_step, s.resume_command))
    guard = DivergenceGuard(vocab_size=s.mcfg.vocab_size)  # decides; `diverged` records and explains
    while step < cfg.max_steps:
        lr = lr_at(step, s.sched)
        set_lr(s.opt, lr)
        loss, grad_norm, found_inf = train_step(s, step)
        why = guard.problem(loss, None if s.scaler.enabled else grad_norm)  # fp16: inf grads are skipped
        if why:
            raise diverged(s, step, loss, grad_norm, saved_step, command, why)
        s.scaler.step(s.opt, found_inf)  # skipped when fp16 overflowed
        s.opt.zero_grad(set_to_none=True)
        step += 1
        set_interrupt_hint(interrupt_hint(step, saved_step, s.resume_command))  # what Ctrl-C will print

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            now = time.time()
            n_steps = step % cfg.log_interval or cfg.log_interval
            tok_s = n_steps * tokens_per_step / max(now - t_last, 1e-9)
            t_last = now
            last = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tok_s,
                "mfu": tok_s * fpt / peak if peak else None,
                "skipped": found_inf,
                "loss_scale": s.scaler.scale,
            }
            log(last)
            if talk and tty:
                print(
                    f"\rstep {step}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s"
                    + (f" | MFU {last['mfu']:.1%}" if last["mfu"] else ""),
                    end="",
                    flush=True,
                )

        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            val_loss = measure(s.val_data)
            if not math.isfinite(val_loss):  # checked before saving: keep the last good one
                raise diverged(s, step, val_loss, grad_norm, saved_step, command)
            rec = {"step": step, "val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, s.meta)}
            if cfg.eval_train:
                rec["train_eval_loss"] = measure(s.train_data)
            log(rec)
            improved = val_loss < best["val_loss"]
            best = (
                {"val_loss": val_loss, "step": step, "bad_evals": 0}
                if improved
                else {**best, "bad_evals": best["bad_evals"] + 1}
            )  # the early-stopping counter resets on improvement
            save_training_state(
                out,
                unwrap_for_state(s.model),
                s.opt,
                s.scaler,
                header=s.header,
                step=step,
                best=best,
                improved=improved,
                world=s.world,
                rank=rank,
            )
            saved_step = step
            set_interrupt_hint(interrupt_hint(step, saved_step, s.resume_command))
            if talk:
                print(
                    ("\r" if tty else "")
                    + f"step {step}/{cfg.max_steps} | train {last.get('loss', loss):.4f} "
                    f"| val {val_loss:.4f}" + (" *" if improved else "  ") + f" | "
                    f"{last.get('tokens_per_s', 0):,.0f} tok/s"
                    + (f" | MFU {last['mfu']:.1%}" if last.get("mfu") else "")
                    + f" | {time.time() - t_start:.0f}s",
                    flush=True,
                )
            if cfg.patience and best["bad_evals"] >= cfg.patience:
                stopped = "early_stop"
                break
        if cfg.stop_at and step >= cfg.stop_at:
            stopped = "stop_at"  # a simulated kill: no final save
            break

    if metrics_file:
        metrics_file.close()
    return finish(s, step, best, stopped, val_loss, baseline, last, records, time.time() - t_start, command)


def finish(s: Setup, step, best, stopped, val_loss, baseline, last, records, wall, command) -> dict:
    """outcome.json, loss.png, the manifest marked complete; the outcome with its records."""
    cfg, out = s.cfg, s.out
    bpb = lambda loss: bits_per_byte(loss, s.meta)
    outcome = {
        "status": stopped,
        "steps": step,
        "val_loss": val_loss,
        "val_bpb": bpb(val_loss),
        "best_val_loss": best["val_loss"],
        "best_val_bpb": bpb(best["val_loss"]),
        "best_step": best["step"],
        "unigram_val_loss": baseline,
        "unigram_val_bpb": bpb(baseline),
        "train_loss": last.get("loss"),
        "tokens_seen": step * cfg.batch_size * cfg.block_size,
        "wall_s": wall,
        "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"),
        "params": s.raw.num_params(non_embedding=False),
        "params_non_embedding": s.raw.num_params(non_embedding=True),
        "world": s.world,
        "device": s.device,
        "dtype": cfg.dtype,
        "weights": BEST,
        "resume_from": CKPT,
    }  # best.pt for later stages, ckpt.pt to resume
    held = None
    if s.rank == 0 and stopped != "stop_at" and cfg.final_eval:
        # the headline and bar: best.pt on the whole val and test splits vs Kneser-Ney n-grams (heldout_loss.py)
        held = heldout_outcome(Path(cfg.data), out / BEST, s.device)
        outcome.update(headline=held["headline"], bar=held["bar"], heldout=held["heldout"])
        # does the best checkpoint know its world's facts? (fact_recall.py; None on real text)
        outcome["fact_recall"] = recall_of_checkpoint(Path(cfg.data), out / BEST, s.device)
        outcome["bars"] = [held["bar"]] + ([outcome["fact_recall"]["bar"]] if outcome["fact_recall"] else [])
    if s.rank == 0 and stopped != "stop_at":
        if outcome.get("fact_recall"):
            print("fact recall of best.pt, every person, greedy completions:")
            print(format_recall(outcome["fact_recall"]))
        if held is None:
            outcome.update(skipped_eval_block(outcome))
        write_json(out / "outcome.json", outcome)
        plot_losses(records, baseline, out / "loss.png")
        write_run_manifest(out, cfg, command, "complete", s.resume_command)
        verdict = "better" if val_loss < baseline else "WORSE"
        show_bpb = lambda loss: f" ({bpb(loss):.3f} bits/byte)" if bpb(loss) else ""
        print(
            f"done ({stopped}): val loss {val_loss:.4f}{show_bpb(val_loss)} vs unigram baseline "
            f"{baseline:.4f}{show_bpb(baseline)}, {abs(baseline - val_loss):.3f} nats/token {verdict}; "
            f"best {best['val_loss']:.4f} at step {best['step']} in {out / BEST}; {wall:.0f}s"
            + (
                ""
                if bpb(val_loss)
                else " (no bits/byte: tokens/meta.json has no n_bytes; rerun 02_tokenizer)"
            )
        )
        if held:
            print(f"{held['headline']}: {'PASS' if held['bar']['passed'] else 'FAIL'}")
    return {**outcome, "records": records}


def skipped_eval_block(o: dict) -> dict:
    """{"headline", "bar"} when the final evaluation was turned off (--no-final-eval, as the overfit and
    scaling sweeps do): the bar is unmeasured, so it cannot pass (heldout_loss.py makes the real one)."""
    headline = (
        f"val loss {o['best_val_loss']:.3f} nats/token (64 fixed windows) vs unigram "
        f"{o['unigram_val_loss']:.3f}; final evaluation skipped"
    )
    bar = make_bar(
        "test loss of best.pt (nats/token)",
        None,
        threshold=o["unigram_val_loss"],
        direction="lower",
        baseline=o["unigram_val_loss"],
        baseline_name="unigram model (val)",
        note="not measured: the run was started with final_eval off; heldout_loss.py makes the bar",
    )
    return {"headline": headline, "bar": bar}


def interrupt_hint(step: int, saved_step, resume_command: str) -> str:
    if saved_step is None:
        return f"at step {step}, before the first checkpoint; start again (with --overwrite)"
    return f"at step {step}; continue from the checkpoint of step {saved_step} with `{resume_command}`"


def diverged(s: Setup, step, loss, grad_norm, saved_step, command, why="") -> Diverged:
    """Record the divergence (outcome.json, manifest) and return the error naming what is on disk."""
    if s.rank == 0:
        write_json(
            s.out / "outcome.json",
            {
                "status": "diverged",
                "step": step,
                "loss": loss,
                "grad_norm": grad_norm,
                "last_checkpoint_step": saved_step,
            },
        )
        write_run_manifest(s.out, s.cfg, command, "diverged", s.resume_command)
    kept = (
        f"{s.out / CKPT} (step {saved_step}) is the last good checkpoint"
        if saved_step is not None
        else "no checkpoint of this run was written yet"
    )
    if saved_step is not None and (s.out / BEST).is_file():
        kept += f", {s.out / BEST} the best weights"
    return Diverged(
        f"{why or f'loss is {loss} (grad norm {grad_norm})'} at step {step}: training diverged; {kept}. "
        "Start again with a lower --lr or more --warmup-steps (--overwrite), or --dtype fp32"
    )


# ----------------------------------------------------------------------------------------------
# The plot


def plot_losses(records, baseline, path):
    plt = pyplot()
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
