"""Knowledge distillation: a smaller student learns from 04's (or 05's) model; the command.

    python 07_distill_quant/distill.py --run runs/tiny                     # the pipeline's stage (~2.5 min, 2 CPU cores)
    python 07_distill_quant/distill.py --run runs/tiny --preset table      # every method, T sweep, 3 seeds
    python 07_distill_quant/distill.py --run runs/tiny --student-init random --methods scratch,logit
    python 07_distill_quant/distill.py --run runs/tiny --teacher sft --steps 600 --student-embd 64
    python 07_distill_quant/distill.py --run runs/tiny --resume             # continue a killed run, bit-exact

Every student has the same architecture, data order, steps, batch and schedule; seed k of every method
draws the same initial weights and batches as seed k of scratch. Only what it learns from (and, for
--student-init teacher, where it starts) differs; the methods are distill_student.py's:

    scratch   CE on 02's tokens, random init: the baseline
    hard      CE on 02's tokens from --student-init (teacher: the share of the gap the start alone closes)
    logit     α·CE + (1-α)·T²·KL(p_teacher,T ‖ p_student,T), full vocabulary     (Hinton et al. 2015)
              --sweep-temperatures 2,4 adds one logit student per T (rows logit_T2, logit_T4)
    sequence  CE on text the teacher wrote itself (03's sampler)                  (Kim & Rush 2016)
    feature   logit's loss + β·loss(W·h_student, h_teacher) on chosen blocks       (FitNets, TinyBERT)

--student-init teacher (the default) starts every distilled student from the teacher's embeddings,
final norm and evenly spaced blocks (DistilBERT); scratch always starts from random weights, as named.

The outcome (printed, outcome.json, distill.png; distill_outcome.py) gives each model's loss on the
pretraining TEST split (mean over --seeds), the fraction of the teacher–scratch gap it closes, paired by
seed, with a 95 % t interval, and for the first seed's model (the one saved): val perplexity, held-out
answers (05's evaluation), greedy tokens/s (compress_eval.py). Writes runs/<name>/distill/:
student_<method>.pt (03's checkpoint format: speculative.py uses them as drafts), outcome.json,
metrics.jsonl, distill.png, manifest.json. Every --save-interval steps the training state (the student
being trained, AdamW moments, RNG, its log; the students already trained, with their losses) goes to
runs/<name>/.distill.resume.pt: `--resume` continues a killed run from there, bit-exactly (04's
train_state.RunState).

The bar (outcome.json "bar"): the best student, chosen on val, closes at least --gap-goal (50 %) of the
teacher-scratch gap on test, its whole interval included; a run that closes less FAILs, however much
better than scratch it is. When the `hard` row runs (the default with --student-init teacher), the
best student must also beat it, paired by seed: the teacher's start alone closes most of the gap, so
the gap goal by itself would pass a student that learnt nothing from the teacher's outputs. The measured numbers are in the README and the report card (report.py).

Interview questions it answers:
- What is distillation for, and how do you know it worked? (a cheaper model close to the teacher; it
  worked if it beats the same student trained without the teacher on the same budget: the gap closed)
- Why does DistilBERT keep the teacher's width? (so the student can start from the teacher's layers;
  `--student-init teacher` here, and the `hard` row shows how much of the gain that start alone gives)
"""

import dataclasses
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "05_sft_lora")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import write_json, write_jsonl
from common.layout import RunLayout
from common.runs import write_manifest
from train_state import RunState  # 04_pretrain
from checkpoint_io import save_checkpoint  # 03_model
from batches import load_shards, load_test_shard  # 04_pretrain
from finetuned import corpus_loss  # 05_sft_lora

from compress_eval import (
    TEACHER_HELP,
    count_params,
    generation_speeds,
    heldout_conversations,
    load_teacher,
    measure,
    speed_prompt,
)
from distill_outcome import add_gaps, deciding_bar, headline, mean, plot, report
from distill_student import (
    check_student,
    generated_batches,
    make_student,
    param_count,
    real_batches,
    student_config,
    teacher_generations,
    train_student,
)

METHODS = ("scratch", "hard", "logit", "sequence", "feature")


@dataclass
class DistillConfig:
    run: str = option("", "run folder runs/<name>: reads pretrain/ (or sft/), tokenizer/, tokens/, data/")
    teacher: str = option("pretrain", TEACHER_HELP)
    out: str = option("", "output folder; empty = <run>/distill")
    methods: list = option(["scratch", "hard", "logit"], "students to train: " + ", ".join(METHODS), sep=",")
    seeds: int = option(
        3, "seeds per method (seed, seed+1, ...: init draw and data order, paired across methods)", min=1
    )
    student_layers: int = option(2, "student blocks", min=1)
    student_embd: int = option(0, "student width (0 = the teacher's)", min=0)
    student_heads: int = option(0, "student attention heads (0 = keep the teacher's head size)", min=0)
    student_init: str = option(
        "teacher",
        "teacher (copy the embeddings and evenly spaced teacher blocks: needs the teacher's width); "
        "random; or the .pt checkpoint of a smaller model with the teacher's vocabulary",
    )
    # 2, not 1: with α = 0.5 on the 200-person world T = 2 had the lowest val loss of the settings measured
    # (README, "Measured"); T = 1 stays in the table preset's sweep.
    temperature: float = option(2.0, "softmax temperature T of the soft targets (> 0; 1 = the plain softmax)")
    sweep_temperatures: list[float] = option(
        [], "more logit students, one per T (rows logit_T<T>), e.g. 2,4", sep=","
    )
    # 0.5, not 0: on the 200-person world (README, "Measured") pure soft targets (α = 0) did not beat the
    # hard-label control reliably; half hard labels, half teacher did, on every seed, at T = 1 and T = 2.
    alpha: float = option(
        0.5, "weight of the hard-label CE; 1 - alpha goes to the soft targets", min=0.0, max=1.0
    )
    feature_layers: str = option(
        "auto", "student:teacher block pairs, 1-based, e.g. 1:2,2:4 (auto = evenly spaced)"
    )
    feature_loss: str = option(
        "mse", "hidden-state loss: relative MSE or 1 - cosine", choices=("mse", "cosine")
    )
    feature_weight: float = option(1.0, "β, weight of the hidden-state loss", min=0.0)
    seq_pool: int = option(256, "teacher generations for sequence-level KD (cycled through)", min=1)
    seq_prompt: int = option(16, "real tokens that start each teacher generation", min=1)
    seq_temperature: float = option(
        1.0, "sampling temperature of the teacher's generations (0 = greedy)", min=0.0
    )
    # 100, not 150, for the pipeline's budget: on the 1.5 M-character world, 3 seeds, gap closed 0.911
    # [0.904, 0.917] and logit - hard +0.041 [+0.038, +0.043] nats at 100 steps (0.939 and +0.029 at 150)
    steps: int = option(100, "optimizer steps per student (the same budget for every one)", min=1)
    batch_size: int = option(16, "sequences per step", min=1)
    lr: float = option(2e-3, "peak learning rate", min=0.0)
    min_lr: float = option(2e-4, "learning rate at the end of the cosine decay", min=0.0)
    warmup_steps: int = option(15, "linear warmup steps", min=0)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on matrices", min=0.0)
    eval_windows: int = option(64, "val windows for the perplexity (the same for every model)", min=1)
    test_windows: int = option(128, "test windows for the gap closed (the same for every model)", min=1)
    eval_limit: int = option(50, "held-out conversations answered greedily (0 = all)", min=0)
    max_new_tokens: int = option(24, "longest held-out answer", min=1)
    speed_tokens: int = option(64, "tokens generated for the tokens/s measurement", min=1)
    speed_repeats: int = option(3, "timing repeats (best kept)", min=1)
    log_interval: int = option(25, "steps between log lines", min=1)
    save_interval: int = option(50, "steps between saved training states (what --resume continues)", min=1)
    seed: int = option(1337, "first seed (student init and data order, the same for every method)", min=0)
    gap_goal: float = option(0.5, "the bar: share of the teacher-scratch gap the best student must close")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --save-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds (run_all.py --preset micro); `table` is the
# README's table: every method and the temperature sweep, over the same 3 seeds.
PRESETS = {
    "tiny": {},
    "micro": dict(  # micro's teacher has one block: a smaller student must be narrower, so it starts random
        student_layers=1,
        student_embd=16,
        student_init="random",
        steps=3,
        batch_size=4,
        warmup_steps=1,
        seeds=2,
        eval_windows=2,
        test_windows=2,
        eval_limit=2,
        max_new_tokens=4,
        speed_tokens=4,
        speed_repeats=1,
    ),
    "table": dict(methods=list(METHODS), sweep_temperatures=[1.0, 4.0]),
}


def check_distill_config(cfg: DistillConfig):
    """Ranges (common.check_config) and what they cannot say; a UserError otherwise."""
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 04_pretrain wrote pretrain/ into)")
    for t in [cfg.temperature, *cfg.sweep_temperatures]:
        if not t > 0:
            raise UserError(
                f"--temperature {t} must be > 0 (softmax(z/T): T = 1 is the plain "
                "softmax, T > 1 softens it; T -> 0 would be an argmax with no gradient)"
            )
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise UserError(f"--methods {','.join(cfg.methods) or '(none)'}: choose among {', '.join(METHODS)}")
    if cfg.sweep_temperatures and "logit" not in cfg.methods:
        raise UserError("--sweep-temperatures trains more logit students: add logit to --methods")
    if cfg.min_lr > cfg.lr or cfg.warmup_steps >= cfg.steps:
        raise UserError(
            f"need --min-lr <= --lr and --warmup-steps < --steps (got {cfg.min_lr}, {cfg.lr}, "
            f"{cfg.warmup_steps}, {cfg.steps})"
        )


def students_to_train(cfg: DistillConfig) -> list:
    """[(row name, method, temperature)]: each method once, plus a logit student per swept T."""
    todo = [(m, m, cfg.temperature) for m in cfg.methods]
    todo += [(f"logit_T{t:g}", "logit", t) for t in cfg.sweep_temperatures if t != cfg.temperature]
    return todo


# ----------------------------------------------------------------------------- the run


def train_one(cfg, name, method, temperature, s_cfg, init_state, teacher, train, pools, device, state=None):
    """One student of one seed (cfg.seed), trained; returns (student, training record). state: the run's
    RunState, which this student (the unit "<name> seed <seed>") continues from and saves to."""
    init = "random" if method == "scratch" else cfg.student_init  # scratch: random init, as named
    start = None if method == "scratch" else init_state
    student = make_student(s_cfg, init, start, teacher, cfg.seed, device)
    if method == "sequence":
        batches = generated_batches(pools["pool"], cfg.batch_size)
    else:
        batches = real_batches(train, teacher.cfg.block_size, cfg, device)
    record = train_student(
        student,
        teacher,
        method,
        cfg,
        batches,
        device,
        temperature=temperature,
        name=name,
        state=state,
        unit=f"{name} seed {cfg.seed}",
    )
    return student, record


def trained_student(
    cfg, name, method, temperature, s_cfg, init_state, teacher, train, val, test, pools, device, state
):
    """(student, record, val loss, test loss) of one student of one seed: trained and measured, or, when
    the interrupted run had finished it, as it was (its weights are kept for the first seed only: the
    others are needed for their losses alone)."""
    unit, T = f"{name} seed {cfg.seed}", teacher.cfg.block_size
    if unit in state.carry:  # finished before the run was interrupted
        done = state.carry[unit]
        student = make_student(s_cfg, "random", done["student"] or None, teacher, cfg.seed, device)
        return student, done["record"], done["val"], done["test"]
    student, record = train_one(
        cfg, name, method, temperature, s_cfg, init_state, teacher, train, pools, device, state
    )
    val_loss = corpus_loss(student, val, T, cfg.eval_windows, device)
    test_loss = corpus_loss(student, test, T, cfg.test_windows, device)
    weights = student.state_dict() if cfg.seed == state.config["seed"] else {}
    state.carry = {
        **state.carry,
        unit: {"student": weights, "record": record, "val": val_loss, "test": test_loss},
    }
    return student, record, val_loss, test_loss


def distill(cfg: DistillConfig, argv=None) -> dict:
    """Train the students over seeds, measure everything, write <out>/ (module docstring); returns the
    outcome."""
    check_distill_config(cfg)
    device = resolve_device(cfg.device)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else RunLayout(run).distill
    teacher, tok, source = load_teacher(run, cfg.teacher, device)
    s_cfg, init_state = student_config(teacher.cfg, cfg)
    check_student(s_cfg, teacher.cfg, cfg.student_init)
    T = teacher.cfg.block_size
    train, val, meta = load_shards(run, T)
    test = load_test_shard(run, meta)
    split = "test" if test is not None and len(test) > T + 1 else "val"
    test = test if split == "test" else val  # an older run without tokens/test.bin: val stands in
    heldout = heldout_conversations(run, cfg.eval_limit)
    todo = students_to_train(cfg)
    state = RunState(out, cfg, cfg.save_interval, RunLayout(run).made_by("distill"))
    with state.claimed(cfg.overwrite) as tmp:  # refused now, not after training; built beside <out>
        print(
            f"teacher {source} ({count_params(teacher):,} params, {teacher.cfg.n_layer} x {teacher.cfg.n_embd}); "
            f"student {param_count(s_cfg):,} params ({s_cfg.n_layer} x {s_cfg.n_embd}, {s_cfg.n_head} heads), "
            f"init {cfg.student_init if cfg.student_init in ('random', 'teacher') else 'from ' + cfg.student_init}; "
            f"{cfg.steps} steps x {cfg.batch_size} x {T} tokens each; {len(todo)} students x {cfg.seeds} seeds"
        )
        students, training, pools = {}, {}, {}
        if any(method == "sequence" for _, method, _ in todo):  # the teacher writes once, with the first
            t0 = time.time()  # seed; every seed (and a resumed run) reads the same text
            pools["pool"] = teacher_generations(teacher, train, cfg, device)
            print(
                f"sequence: the teacher wrote {len(pools['pool'])} sequences of {pools['pool'].shape[1]} "
                f"tokens in {time.time() - t0:.1f}s",
                flush=True,
            )
        losses = {name: {"val": [], "test": []} for name, _, _ in todo}
        for k in range(cfg.seeds):
            cfg_k = dataclasses.replace(cfg, seed=cfg.seed + k)
            for name, method, temperature in todo:
                student, record, val_loss, test_loss = trained_student(
                    cfg_k,
                    name,
                    method,
                    temperature,
                    s_cfg,
                    init_state,
                    teacher,
                    train,
                    val,
                    test,
                    pools,
                    device,
                    state,
                )
                losses[name]["val"].append(val_loss)
                losses[name]["test"].append(test_loss)
                print(f"{name}, seed {cfg_k.seed}: {split} loss {losses[name]['test'][-1]:.4f}", flush=True)
                if k == 0:  # the first seed's students are the ones measured further and saved
                    students[name], training[name] = student, record

        print("measuring: val perplexity, held-out answers, generation speed (first seed)", flush=True)
        models = {"teacher": teacher, **students}
        rows = {
            name: measure(
                m,
                tok,
                val,
                heldout,
                eval_windows=cfg.eval_windows,
                max_new_tokens=cfg.max_new_tokens,
                device=device,
            )
            for name, m in models.items()
        }
        speeds = generation_speeds(models, speed_prompt(val, 16), cfg.speed_tokens, cfg.speed_repeats, device)
        teacher_test = corpus_loss(teacher, test, T, cfg.test_windows, device)
        rows["teacher"].update(test_loss=teacher_test, test_loss_seeds=[teacher_test])
        for name, row in rows.items():
            row["gen_tok_s"] = speeds[name]
            if name in losses:
                row["val_loss_seeds"], row["test_loss_seeds"] = losses[name]["val"], losses[name]["test"]
                row["test_loss"] = mean(losses[name]["test"])
            row.update({k: v for k, v in training.get(name, {}).items() if k != "records"})
        add_gaps(rows)

        for name, student in students.items():
            save_checkpoint(
                tmp / f"student_{name}.pt",
                asdict(student.cfg),
                student.state_dict(),
                tokenizer=os.path.relpath(RunLayout(run).tokenizer, out),
                distill={"method": name, "teacher": str(source)},
            )
        outcome = {
            "teacher": str(source),
            "teacher_config": asdict(teacher.cfg),
            "student_config": asdict(s_cfg),
            "student_init": cfg.student_init,
            "budget": {
                "steps": cfg.steps,
                "batch_size": cfg.batch_size,
                "tokens": cfg.steps * cfg.batch_size * T,
            },
            "seeds": cfg.seeds,
            "split": split,
            "heldout_n": len(heldout),
            "device": device,
            "rows": rows,
            **dict(zip(("bar", "bars"), deciding_bar(rows, cfg.gap_goal, split))),
            "headline": headline(rows, split),
        }
        write_json(tmp / "outcome.json", outcome)
        write_jsonl(tmp / "metrics.jsonl", [r for t in training.values() for r in t["records"]])
        plot(rows, training, tmp / "distill.png", cfg.gap_goal)
        inputs = [source, RunLayout(run).tokenizer, RunLayout(run).tokens, RunLayout(run).data]
        if cfg.student_init not in ("random", "teacher"):
            inputs.append(Path(cfg.student_init))
        write_manifest(
            tmp,
            stage="07_distill_quant/distill",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=inputs,
        )
    report(outcome, out)
    return outcome


def main(argv=None):
    cfg, _ = parse_config(DistillConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    distill(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
