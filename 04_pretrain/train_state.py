"""What a pretraining run keeps on disk, and when `--resume` may continue from it.

pretrain.py writes two checkpoints (03_model/checkpoint_io.py format) into its output folder:

- **ckpt.pt**, at every eval: everything needed to continue exactly where the run was, which is
  the model, the optimizer moments, the step, the loss-scaler state, every rank's RNG state, the
  data position, the training config and the early-stopping record. `--resume` loads it.
- **best.pt**, whenever the val loss improves: the model weights of the best eval so far, with
  their model config, step and val loss (no optimizer: a third of ckpt.pt's size). This is the
  file later stages load (05_sft_lora fine-tunes it), and what early stopping keeps.

best.pt is written before ckpt.pt, each atomically, so a run killed between the two resumes from
the previous ckpt.pt, reaches the same eval with the same weights and writes the same best.pt.

**Resume rules.** A checkpoint continues the run it came from only if nothing that decides which
tokens are seen or how the weights move has changed. `check_resume` compares the saved training
config with the new one, field by field, and sorts each difference:

- free (FREE): the same computation arranged differently (micro_batch: the same global batch
  in other slices; attn_backend, parallel, compile, grad_checkpointing, device: the same math on
  other kernels or processes) or only reporting and run control. Accepted silently; only float
  rounding differs.
- allowed with `--allow-config-change FIELD` (CHANGEABLE): intended changes that keep the saved
  state valid. max_steps trains longer (or shorter). Its cost: a cosine schedule is re-stretched
  to the new end from the resume step on (the lr jumps; WSD exists to avoid exactly that), so the
  result is not the run you would get by starting with the new max_steps. patience, eval_interval
  and eval_batches change when and on what the run is measured and stopped, not the weights; dtype
  changes only the matmul precision; dropout changes the regularization from here on.
- refused: everything else, which changes the data order (batch_size, block_size, seed,
  train_tokens), the schedule (lr, min_lr, warmup_steps, schedule, decay_frac) or the optimizer
  (optimizer, betas, weight_decay, grad_clip), or the model's shape. A field added later is
  refused until someone decides otherwise. The tokens themselves are compared by their manifest id:
  a rewritten tokens/ folder is other data.

**The other trainers (05–07).** DPO, PPO, GRPO, the reward model, RLAIF, distillation and pruning build
their run in a temp folder beside <out> and swap it in when complete, so a killed run would lose all its
work. `RunState` gives each of them the same `--resume`: every few steps it writes
`.<out>.resume.pt` beside <out> (atomically, 03's checkpoint format with its SHA-256) holding the trained
modules, the optimizers' moments, the step, the log records so far, the divergence guard, and every RNG
the loop draws from: torch's (CPU and CUDA), numpy's, Python's `random`, and the trainer's own named
generators (an RL trainer's sampling `torch.Generator`, a data order's `random.Random`). Trainers that
train several things in turn (RLAIF's two policies, distillation's students, pruning's variants) name
each one a *unit* and keep what the finished units produced in `carry`. A resumed run redoes the
deterministic work before training (loading, the baselines' answers), restores the state, and reaches
the same final weights, bit for bit. A state written with other flags is refused: it would not be the run
it continues.

Interview questions it answers:
- What must a checkpoint hold to resume bit-exactly? (above; weights alone only let you fine-tune)
- Why keep the best weights apart from the last ones? (early stopping: the last eval can be worse
  than the best; resuming needs the last, using the model needs the best)
"""

import contextlib
import dataclasses
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from common.layout import RunLayout
from common.runs import fresh_output, write_manifest
from checkpoint_io import (  # 03_model
    check_config_matches,
    config_differences,
    load_checkpoint,
    save_checkpoint,
)

from torch_parallel import full_state, load_full_state, rng_states

CKPT, BEST = "ckpt.pt", "best.pt"

FREE = {
    "data",
    "out",
    "micro_batch",
    "attn_backend",
    "parallel",
    "grad_checkpointing",
    "compile",
    "device",
    "peak_flops",
    "log_interval",
    "eval_train",
    "quiet",
    "stop_at",
    "resume",
    "overwrite",
    "allow_config_change",
}
CHANGEABLE = {"max_steps", "patience", "eval_interval", "eval_batches", "dtype", "dropout"}


# ----------------------------------------------------------------------------------------------
# Writing and reading the two checkpoints


def save_training_state(
    out: Path,
    model,
    opt,
    scaler,
    *,
    header: dict,
    step: int,
    best: dict,
    improved: bool,
    world: int,
    rank: int,
):
    """best.pt (if val improved) then ckpt.pt. Every rank calls it: FSDP gathers the full state.

    header: what both files carry: the model config, the training config, the tokenizer path
    relative to `out` (so the run folder can move) and the data position."""
    model_state, optim_state = full_state(model, opt, world)
    rng = rng_states(world)
    if rank == 0:
        if improved:
            save_checkpoint(
                out / BEST,
                header["config"],
                model_state,
                step=step,
                val_loss=best["val_loss"],
                **{k: v for k, v in header.items() if k != "config"},
            )
        save_checkpoint(
            out / CKPT,
            header["config"],
            model_state,
            optimizer=optim_state,
            step=step,
            rng=rng,
            scaler=scaler.state_dict(),
            best=dict(best),
            **{k: v for k, v in header.items() if k != "config"},
        )
    if world > 1:
        dist.barrier()


def load_resume_checkpoint(out: Path) -> dict:
    """ckpt.pt of the run in `out`, or a UserError saying why there is nothing to resume."""
    path = out / CKPT
    if not path.is_file():
        state = (
            "holds no run"
            if not out.is_dir() or not any(out.iterdir())
            else "has no ckpt.pt yet (the run stopped before its first eval)"
        )
        raise UserError(
            f"--resume: {out} {state}; start it without --resume (add --overwrite to replace what is there)"
        )
    return load_checkpoint(path)


def restore_training_state(ckpt: dict, model, opt, scaler, model_config: dict, rank: int):
    """Load ckpt.pt's weights, optimizer, loss scaler and this rank's RNG; returns (step, best)."""
    check_config_matches(ckpt["config"], model_config, CKPT, ignore=("attn_backend", "dropout"))
    load_full_state(model, opt, ckpt["model"], ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if rank < len(ckpt["rng"]["cpu"]):
        torch.set_rng_state(ckpt["rng"]["cpu"][rank])
        if torch.cuda.is_available() and ckpt["rng"]["cuda"][rank].numel():
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rank])
    return int(ckpt["step"]), dict(ckpt["best"])


# ----------------------------------------------------------------------------------------------
# When a checkpoint may be resumed


def check_resume(ckpt: dict, cfg, tokens_id: str, path: Path) -> str:
    """Raise a UserError naming every field that forbids continuing `ckpt` with `cfg`; else return
    the accepted changes ('max_steps 300 -> 600'), '' if none.

    Fields the checkpoint lacks (written before the field existed) count as their current default."""
    defaults = dataclasses.asdict(type(cfg)())
    saved = {**defaults, **ckpt.get("train_config", {})}
    now = dataclasses.asdict(cfg)
    diffs = {
        k: (saved.get(k), now.get(k))
        for k in sorted(set(saved) | set(now))
        if k not in FREE and saved.get(k) != now.get(k)
    }
    show = lambda ks: ", ".join(f"{k} {diffs[k][0]!r} -> {diffs[k][1]!r}" for k in ks)
    refused = [k for k in diffs if k not in CHANGEABLE]
    if refused:
        raise UserError(
            f"--resume: {path} was trained with other settings ({show(refused)}); these change "
            "the data order, the schedule, the optimizer or the model, so the result would "
            "not be the run it continues. Pass the run's own values, or start a new run "
            "(--overwrite or another --out)"
        )
    unasked = [k for k in diffs if k not in cfg.allow_config_change]
    if unasked:
        raise UserError(
            f"--resume: {path} was trained with other settings ({show(unasked)}); to continue "
            f"with the new values say so: --allow-config-change {' '.join(unasked)}"
        )
    saved_tokens = ckpt.get("data", {}).get("tokens_id")
    if saved_tokens and saved_tokens != tokens_id:
        raise UserError(
            f"--resume: {path} was trained on other tokens (manifest {saved_tokens}, now "
            f"{tokens_id}): tokens/ was rewritten since; start a new run with --overwrite"
        )
    return show(diffs)


def finished_reason(ckpt: dict, cfg) -> str:
    """Why the run in `ckpt` has nothing left to do under `cfg` ('' if it has)."""
    step, best = int(ckpt["step"]), ckpt.get("best", {})
    if step >= cfg.max_steps:
        return (
            f"finished at step {step} (max_steps {cfg.max_steps}), nothing to do; to train longer "
            "add --max-steps N --allow-config-change max_steps"
        )
    if cfg.patience and best.get("bad_evals", 0) >= cfg.patience:
        return (
            f"stopped early at step {step} (no val improvement in {cfg.patience} evals; best "
            f"{best.get('val_loss'):.4f} at step {best.get('step')}), nothing to do; to go on raise "
            "--patience with --allow-config-change patience"
        )
    return ""


# ----------------------------------------------------------------------------------------------
# The rest of the run folder: manifest and metrics


def write_run_manifest(out: Path, cfg, command: str, status: str, resume_command: str, files=None):
    """manifest.json with the run's status: "running" from the start, then "complete" or "diverged".
    A later stage's check_artifact refuses anything but "complete", naming resume_command."""
    write_manifest(
        out,
        stage="04_pretrain",
        command=command,
        config=dataclasses.asdict(cfg),
        inputs=[RunLayout(cfg.data).tokens],
        files=files,
        extra={"status": status, "resume_command": resume_command, "weights": BEST},
    )


def read_metrics(out: Path, upto_step: int) -> list:
    """metrics.jsonl records with step <= upto_step (a killed run may leave later or partial lines)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            if rec.get("step", upto_step + 1) <= upto_step:
                records.append(rec)
    return records


# ----------------------------------------------------------------------------------------------
# The resume file of a 05-07 trainer (module docstring, "The other trainers")


def resume_path(out: Path) -> Path:
    """Where a run in progress keeps its training state: beside <out>, which only ever holds complete runs
    (the run is built in a temp folder that a kill -9 leaves behind and the next run deletes)."""
    out = Path(out)
    return out.parent / f".{out.name}.resume.pt"


def python_rng_state(r) -> dict:
    """random.Random's state (a tuple of 625 ints) as checkpoint-safe values: a tensor and numbers."""
    version, internal, gauss = r.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def set_python_rng_state(r, s: dict):
    r.setstate((s["version"], tuple(int(x) for x in s["internal"].tolist()), s["gauss"]))


def rng_snapshot(generators: dict) -> dict:
    """Every RNG a training loop may draw from: torch's global ones, numpy's, Python's, and the named
    generators (torch.Generator or random.Random) the loop owns."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    snap = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": python_rng_state(random),
        "named": {
            k: g.get_state() if isinstance(g, torch.Generator) else python_rng_state(g)
            for k, g in generators.items()
        },
    }
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap: dict, generators: dict):
    """Set every RNG `rng_snapshot` saved (the named ones into the given generators)."""
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    n = snap["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    set_python_rng_state(random, snap["python"])
    for k, g in generators.items():
        if isinstance(g, torch.Generator):
            g.set_state(snap["named"][k])
        else:
            set_python_rng_state(g, snap["named"][k])


class RunState:
    """The `--resume` state of one run of a 05-07 trainer:

        state = RunState(out, cfg, every=cfg.eval_interval, made_by=...)  # refuses --resume with nothing saved
        with state.claimed(cfg.overwrite) as tmp:           # common.runs.fresh_output, then load the state
            step, records, extra = state.restore("policy", modules, optimizers, generators, guard)
            while step < steps: ...; state.save("policy", step, modules, ...) when state.due(step)
                                                            # complete: swapped in, the state deleted

    modules, optimizers and generators are dicts {name: object}, the same names at save and restore.
    `carry` holds what the units finished before the saved one produced (the caller's to fill and read)."""

    def __init__(self, out, cfg, every: int, made_by: str):
        self.out, self.path = Path(out), resume_path(out)
        self.config = dataclasses.asdict(cfg)
        self.resume, self.every, self.made_by = bool(cfg.resume), every, made_by
        self.saved, self.carry = {}, {}
        if self.resume and not self.path.is_file():
            raise UserError(f"--resume: no interrupted run of {out} to continue; start one without --resume")

    @contextlib.contextmanager
    def claimed(self, overwrite: bool):
        """common.runs.fresh_output for a resumable run (its folder locked and claimed before any work, the
        run built beside it), with `begin` once locked. A run that completes deletes its state (`finish`);
        one that diverges too (resuming it would diverge again at the same step); one that is killed,
        interrupted or fails otherwise (a full disk) keeps it for --resume."""
        with fresh_output(self.out, overwrite or self.resume) as tmp:
            self.begin()
            try:
                yield tmp
            except UserError as e:
                if str(e).startswith("training diverged"):
                    self.path.unlink(missing_ok=True)
                raise
        self.finish()

    def begin(self):
        """Load the saved state (--resume; not yet applied: see `restore`) or, for a fresh run, delete an
        older interrupted one. Call it once the run's folder is locked."""
        if not self.resume:
            self.path.unlink(missing_ok=True)
            return
        state = load_checkpoint(self.path, made_by=f"{self.made_by} (without --resume)")
        diffs = config_differences(state["config"], self.config, ignore=("resume", "overwrite"))
        if diffs:
            raise UserError(
                f"--resume: the interrupted run of {self.out} used other settings ({'; '.join(diffs)}); "
                "pass the same flags, or start again without --resume"
            )
        self.saved, self.carry = state, state["carry"]
        print(f"--resume: continuing {state['unit']} at step {state['step']}", flush=True)

    def restore(self, unit, modules: dict, optimizers=None, generators=None, guard=None) -> tuple:
        """(step, records, extra) to continue `unit` from. When the saved state is this unit's: its step, log
        and the loop's other state (`extra`, e.g. a data order), after loading its weights, optimizer
        moments, RNG and guard into the given objects. Else (0, [], {}) and nothing changes (a fresh run,
        or a unit the interrupted run had not reached)."""
        s = self.saved
        if not s or s["unit"] != unit:
            return 0, [], {}
        for k, m in modules.items():
            m.load_state_dict(s["model"][k])
        for k, opt in (optimizers or {}).items():
            opt.load_state_dict(s["optimizer"][k])
        restore_rng(s["rng"], generators or {})
        if guard is not None:
            guard.best, guard.stuck = s["guard"]
        self.saved = {}  # restored once: a later unit of the same name starts fresh
        return int(s["step"]), list(s["records"]), dict(s["extra"])

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def save(
        self,
        unit,
        step,
        modules,
        optimizers=None,
        generators=None,
        guard=None,
        records=(),
        extra=None,
        carry=None,
    ):
        """Write the state after `step` of `unit` (call it at the end of the step, after any evaluation:
        the RNG must be where the next step starts)."""
        if carry is not None:
            self.carry = carry
        save_checkpoint(
            self.path,
            self.config,
            {k: m.state_dict() for k, m in modules.items()},
            optimizer={k: o.state_dict() for k, o in (optimizers or {}).items()},
            unit=unit,
            step=step,
            rng=rng_snapshot(generators or {}),
            guard=[guard.best, guard.stuck] if guard is not None else [0.0, 0],
            records=list(records),
            extra=extra or {},
            carry=self.carry,
        )

    def finish(self):
        """The run is complete (swapped into <out>): nothing is left to resume."""
        self.path.unlink(missing_ok=True)
