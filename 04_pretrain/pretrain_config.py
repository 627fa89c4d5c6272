"""What a pretraining run is: its config (= its command line), presets, and the checks before it starts.

    cfg = TrainConfig(data="runs/tiny", max_steps=100)      # the function API; pretrain_loop.train(cfg)
    python 04_pretrain/pretrain.py --help                    # the same fields as flags, with each preset's values

Every field is one flag with its help, default and allowed range (common.option). The defaults are
the `tiny` run; `--preset small|gpt2` starts from other values. `check_train_config` refuses, before
anything is read or written, settings that cannot run together (warmup as long as the run, a batch
that does not split over the ranks, a head count that does not divide the width, ...), and
`command_for` writes the command that reproduces a config, which the run folder records as its
resume command.

Interview questions it answers:
- Why must warmup be shorter than the run? (the schedule would never reach its peak lr, let alone decay)
- How is a global batch split? (batch_size = world size x micro_batch x accumulation steps; the
  accumulation count follows from the other two, and they must divide evenly)
"""

import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, check_config, command_line, option
from gpt import GPTConfig  # 03_model
import gpt as gpt_module  # 03_model: its architecture presets (gpt2 / llama) and choices

from train_state import CHANGEABLE


# ----------------------------------------------------------------------------------------------
# Configuration and presets


@dataclass
class TrainConfig:
    """One pretraining run. The defaults are the `tiny` preset: CPU, generated corpus, 1000 steps of
    2048 tokens (~3 epochs of runs/tiny), 1.1M params, a few minutes on a laptop; the loss passes
    the unigram baseline within ~30 steps. Why several epochs: a held-out person of the world's 200 is
    written about only in biographies, and a fact must be read many times before the model recalls it
    (fact_recall.py measures that at the end of the run). Why lr 4e-3 (was 2e-3): at the same 1,000
    steps it stores more: fact recall in the biographies' own words 0.297 -> 0.414 (n = 1,200 probes;
    8e-3 in the 05 README's table)."""

    data: str = option("", "run folder runs/<name> holding tokens/ from 02_tokenizer (required)")
    out: str = option("", "output folder (default <data>/pretrain)")
    # the model: 03_model GPTConfig fields; arch picks gpt.py's gpt2 / llama flavour
    arch: str = option("llama", "03_model flavour", choices=tuple(gpt_module.PRESETS))
    n_layer: int = option(4, "transformer blocks", min=1)
    n_head: int = option(4, "attention heads", min=1)
    n_kv_head: int = option(0, "key/value heads for GQA/MQA (0 = n_head)", min=0)
    n_embd: int = option(128, "model width (a multiple of n_head)", min=2)
    block_size: int = option(128, "context length in tokens", min=2)
    dropout: float = option(0.0, "dropout probability in training", min=0.0, max=0.95)
    attn_backend: str = option(
        "auto",
        "attention kernel (03_model; auto = the fastest correct one here)",
        choices=gpt_module.BACKENDS,
    )
    # the batch: batch_size sequences per optimizer step, split over ranks and micro-batches
    batch_size: int = option(16, "sequences per optimizer step, over all ranks and micro-batches", min=1)
    micro_batch: int = option(0, "sequences per forward on one rank (0 = batch_size / world size)", min=0)
    train_tokens: int = option(0, "train on the first N train tokens only (0 = all; overfit.py)", min=0)
    # optimizer and schedule (optimizers.py)
    optimizer: str = option("adamw", "update rule", choices=("adamw", "lamb"))
    lr: float = option(4e-3, "peak learning rate", min=0.0)
    min_lr: float = option(4e-4, "learning rate at the end of the decay", min=0.0)
    schedule: str = option(
        "cosine", "warmup then cosine decay, or warmup-stable-decay", choices=("cosine", "wsd")
    )
    warmup_steps: int = option(30, "steps of linear warmup (fewer than max_steps)", min=0)
    decay_frac: float = option(0.2, "wsd: fraction of max_steps spent decaying", min=0.0, max=1.0)
    max_steps: int = option(1000, "optimizer steps in the run", min=1)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on matrices", min=0.0)
    beta1: float = option(0.9, "Adam first-moment decay", min=0.0, max=0.999999)
    beta2: float = option(0.95, "Adam second-moment decay", min=0.0, max=0.999999)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)", min=0.0)
    # systems
    dtype: str = option(
        "fp32", "autocast precision; fp16 adds the dynamic loss scaler", choices=("fp32", "bf16", "fp16")
    )
    parallel: str = option(
        "ddp",
        "data parallelism under torchrun: torch's ddp/fsdp (torch_parallel.py), or the "
        "hand-written ddp_by_hand (ddp_by_hand.py), zero1/zero2 (zero_sharding.py)",
        choices=("ddp", "fsdp", "ddp_by_hand", "zero1", "zero2"),
    )
    grad_checkpointing: bool = option(
        False, "recompute each block in backward: less memory, ~30% more compute"
    )
    compile: bool = option(False, "torch.compile the model (needs a C++ compiler on CPU)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    peak_flops: float = option(0.0, "peak FLOP/s for MFU (0 = from the GPU name; none on CPU)", min=0.0)
    # evaluation, checkpoints, logging
    eval_interval: int = option(100, "steps between evals (val loss, checkpoints, early stopping)", min=1)
    eval_batches: int = option(4, "val loss over eval_batches x batch_size fixed windows", min=1)
    patience: int = option(
        0, "early stopping: stop after this many evals without improvement (0 = off)", min=0
    )
    eval_train: bool = option(False, "also measure the loss on train windows in eval mode (overfit.py)")
    final_eval: bool = option(
        True, "at the end: best.pt on the whole val/test splits vs n-grams, and fact recall (sweeps skip it)"
    )
    log_interval: int = option(10, "steps between train-loss log lines", min=1)
    seed: int = option(1337, "initial weights, dropout and the data order", min=0)
    quiet: bool = option(False, "print only the final line (sweeps)")
    stop_at: int = option(0, "stop after this step as if killed, to try --resume (0 = off)", min=0)
    # what to do with the output folder
    resume: bool = option(False, "continue the run in the output folder from its ckpt.pt")
    overwrite: bool = option(False, "replace the run already in the output folder (removes it first)")
    allow_config_change: list[str] = option(
        [], f"with --resume: accept new values of these fields ({', '.join(sorted(CHANGEABLE))})"
    )


PRESETS = {
    "tiny": {},  # the dataclass defaults
    # seconds, for the smoke test (run_all.py --preset micro): that everything connects, not quality
    "micro": dict(
        n_layer=1,
        n_head=2,
        n_embd=32,
        batch_size=8,
        lr=0.01,
        min_lr=0.001,
        warmup_steps=3,
        max_steps=30,
        eval_interval=15,
        eval_batches=2,
    ),
    # A laptop's hour or a GPU's minutes: nanoGPT's Shakespeare-char scale.
    "small": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        block_size=256,
        batch_size=64,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=200,
        max_steps=5000,
        dropout=0.1,
        eval_interval=250,
        eval_batches=20,
    ),
    # GPT-2 124M: context 1024, ~0.5M tokens per step (480 x 1024), 10B tokens in 19073 steps.
    "gpt2": dict(
        arch="gpt2",
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        batch_size=480,
        micro_batch=12,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=715,
        max_steps=19073,
        dtype="bf16",
        compile=True,
        eval_interval=500,
        eval_batches=40,
    ),
}
RUN_CONTROL = (
    "resume",
    "overwrite",
    "allow_config_change",
    "stop_at",
    "quiet",
    "final_eval",
)  # not part of what a run is

PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "4090": 165e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}  # dense bf16/fp16 tensor-core peaks


def peak_flops(device: str, override: float = 0.0) -> float:
    """Peak FLOP/s for MFU: `override`, else the table's value for this GPU's name (0 = unknown, CPU)."""
    if override or not device.startswith("cuda"):
        return override
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


def check_train_config(cfg: TrainConfig, world: int = 1):
    """Raise a UserError for settings that cannot run together (ranges and choices included)."""
    check_config(cfg)
    if not cfg.data:
        raise UserError("--data is required: the run folder runs/<name> with tokens/ from 02_tokenizer")
    if cfg.lr <= 0 or cfg.min_lr > cfg.lr:
        raise UserError(f"--lr {cfg.lr} must be > 0 and --min-lr {cfg.min_lr} at most --lr")
    if cfg.warmup_steps >= cfg.max_steps:
        raise UserError(
            f"--warmup-steps {cfg.warmup_steps} must be fewer than --max-steps {cfg.max_steps}: "
            "the schedule would never leave warmup"
        )
    if cfg.stop_at >= cfg.max_steps:
        raise UserError(f"--stop-at {cfg.stop_at} must be before --max-steps {cfg.max_steps}")
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues the run in the folder and --overwrite replaces it; pass one")
    not_changeable = sorted(set(cfg.allow_config_change) - CHANGEABLE)
    if not_changeable or (cfg.allow_config_change and not cfg.resume):
        raise UserError(
            f"--allow-config-change is for --resume, with fields among {', '.join(sorted(CHANGEABLE))}"
            + (f" (not {', '.join(not_changeable)}: see train_state.py)" if not_changeable else "")
        )
    if cfg.parallel in ("zero1", "zero2") and (cfg.optimizer != "adamw" or cfg.dtype == "fp16"):
        raise UserError(
            f"--parallel {cfg.parallel} shards AdamW's state and has no fp16 loss scaler; "
            "use --optimizer adamw with --dtype fp32 or bf16"
        )
    model_config(cfg, vocab_size=256)  # the model's own checks (n_embd % n_head ...)
    batch_split(cfg, world)


def batch_split(cfg: TrainConfig, world: int):
    """(micro, accum): sequences per forward on one rank, micro-steps per optimizer step."""
    micro = cfg.micro_batch or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % (micro * world):
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by micro_batch {micro} x world "
            f"size {world}; choose --batch-size as a multiple of {max(1, micro) * world}"
        )
    return micro, cfg.batch_size // (micro * world)


def check_device_support(cfg: TrainConfig, device: str):
    if cfg.dtype == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support (pre-Ampere); use --dtype fp16 (loss scaling) or fp32")
    if cfg.compile and device == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        raise UserError("--compile on CPU needs a C++ compiler (g++) and none is installed; drop --compile")


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_kv_head or None,
        n_embd=cfg.n_embd,
        dropout=cfg.dropout,
        attn_backend=cfg.attn_backend,
        **gpt_module.PRESETS[cfg.arch],
    )


def command_for(cfg: TrainConfig, resume=False) -> str:
    """The pretrain.py command that runs `cfg` from the start (or with resume, continues it):
    --preset (the closest one) plus the flags that differ from it."""
    values = dataclasses.asdict(cfg)
    base_of = lambda name: {**dataclasses.asdict(TrainConfig()), **PRESETS[name]}
    preset = min(PRESETS, key=lambda name: sum(values[k] != v for k, v in base_of(name).items()))
    argv = [] if preset == "tiny" else ["--preset", preset]
    for k, v in values.items():
        if k in RUN_CONTROL or v == base_of(preset)[k]:
            continue
        flag = "--" + k.replace("_", "-")
        argv += ([flag] if v else ["--no-" + flag[2:]]) if isinstance(v, bool) else [flag, str(v)]
    if resume:
        argv += ["--resume"] + (
            ["--allow-config-change", *cfg.allow_config_change] if cfg.allow_config_change else []
        )
    return command_line(str(REPO / "04_pretrain" / "pretrain.py"), argv)
