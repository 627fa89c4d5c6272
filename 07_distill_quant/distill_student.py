"""The student: its shape, its start, its data and its training loop (distill.py runs it).

    s_cfg, state = student_config(teacher.cfg, cfg)      # the teacher's vocabulary, fewer/narrower blocks
    student = make_student(s_cfg, "teacher", state, teacher, seed, device)   # DistilBERT's start
    train_student(student, teacher, "logit", cfg, real_batches(train, T, cfg, device), device)

`cfg` is distill.py's DistillConfig (steps, lr, batch_size, temperature, alpha, feature_* ...). What a
student learns from, by method:

    scratch   CE on 02's tokens, random init: the baseline
    hard      CE on 02's tokens from --student-init: with `teacher`, the share of the gap the start alone closes
    logit     α·CE + (1-α)·T²·KL(p_teacher,T ‖ p_student,T) on the same tokens        (Hinton et al. 2015)
    sequence  CE on text the teacher wrote itself (03's sampler)                     (Kim & Rush 2016)
    feature   logit's loss + β·loss(W·h_student, h_teacher) on chosen blocks' outputs (FitNets, TinyBERT)

Interview questions it answers:
- How does DistilBERT initialize its student? (`init_from_teacher`: the teacher's embeddings and one
  block in two; the student starts inside the teacher's representation instead of learning the
  embedding table again, which in a small model is a large share of the parameters)
- When is sequence-level KD the right choice? (when only the teacher's outputs are available (an
  API), or when the student should imitate its decoding; it costs a generation pass, not logits)
- Why run the teacher under no_grad, once per batch? (its logits and hidden states are constants of
  the student's loss: no graph, no activations kept, one forward gives both)
"""

import dataclasses
import time
from pathlib import Path
import sys

import torch
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, set_interrupt_hint
from decoding import generate  # 03_model
from checkpoint_io import load_checkpoint  # 03_model
from divergence import DivergenceGuard  # 03_model
from gpt import GPT, GPTConfig, config_from_dict  # 03_model
from batches import batch_starts, get_batch  # 04_pretrain
from optimizers import Schedule, clip_grad_norm, lr_at, make_optimizer, param_groups, set_lr  # 04_pretrain

from compress_eval import count_params, peak_memory_mb, timed
from kd_losses import block_outputs, feature_loss, kd_loss, layer_pairs, projections


# ----------------------------------------------------------------------------- the student


def param_count(cfg: GPTConfig) -> int:
    """Parameters of a GPT with this config (built once on the CPU: a student is never larger than the
    teacher already in memory; the meta device would avoid the memory but costs seconds to set up)."""
    return count_params(GPT(cfg))


def student_config(teacher_cfg: GPTConfig, cfg) -> tuple:
    """(student GPTConfig, initial state dict or None) from the flags or from --student-init's checkpoint.
    The student keeps the teacher's vocabulary, context and architecture flavour."""
    t = teacher_cfg
    if cfg.student_init not in ("random", "teacher"):
        ckpt = load_checkpoint(cfg.student_init)
        return config_from_dict(ckpt["config"], cfg.student_init), ckpt["model"]
    d = cfg.student_embd or t.n_embd
    H = cfg.student_heads or max(1, d // t.head_dim)
    Hkv = max(1, H * t.n_kv_head // t.n_head)
    return dataclasses.replace(
        t,
        n_layer=cfg.student_layers,
        n_embd=d,
        n_head=H,
        n_kv_head=Hkv,
        dropout=0.0,
        head_size=0,
        mlp_hidden=0,
    ), None


def check_student(s: GPTConfig, t: GPTConfig, init: str):
    """A UserError unless the student can learn from this teacher: the same token ids (soft targets are
    distributions over one vocabulary), a context at least the teacher's, and no larger than it."""
    if s.vocab_size != t.vocab_size:
        raise UserError(
            f"the student's vocabulary ({s.vocab_size} tokens) is not the teacher's ({t.vocab_size}); "
            "distillation matches distributions over the same token ids: use a student made with "
            "the teacher's tokenizer"
        )
    if s.block_size < t.block_size:
        raise UserError(
            f"the student's context ({s.block_size}) is shorter than the teacher's ({t.block_size}), "
            "whose windows it trains on; use a student with block_size >= the teacher's"
        )
    n_s, n_t = param_count(s), param_count(t)
    if s.n_layer > t.n_layer or s.n_embd > t.n_embd or n_s > n_t:
        raise UserError(
            f"the student ({n_s:,} parameters, {s.n_layer} layers x {s.n_embd} wide) is larger than "
            f"the teacher ({n_t:,}, {t.n_layer} x {t.n_embd}); a student must be smaller: lower "
            "--student-layers / --student-embd"
        )
    if init == "teacher" and (s.n_embd, s.n_head, s.n_kv_head) != (t.n_embd, t.n_head, t.n_kv_head):
        raise UserError(
            f"--student-init teacher copies teacher blocks, so the student needs the teacher's width "
            f"and heads ({t.n_embd} wide, {t.n_head} heads); drop --student-embd/--student-heads"
        )


def evenly_spaced(n_student: int, n_teacher: int) -> list:
    """Teacher block indices (0-based) for student blocks: the first and the last and evenly between."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def init_from_teacher(student: GPT, teacher: GPT):
    """DistilBERT's initialization: embeddings, final norm and evenly spaced blocks copied from the teacher."""
    with torch.no_grad():
        student.tok_emb.weight.copy_(teacher.tok_emb.weight)
        student.norm_f.load_state_dict(teacher.norm_f.state_dict())
        if hasattr(teacher, "pos_emb"):
            student.pos_emb.weight.copy_(teacher.pos_emb.weight)
        if not student.cfg.tie_weights:
            student.lm_head.weight.copy_(teacher.lm_head.weight)
        for s_block, i in zip(student.blocks, evenly_spaced(len(student.blocks), len(teacher.blocks))):
            s_block.load_state_dict(teacher.blocks[i].state_dict())


def make_student(s_cfg: GPTConfig, init: str, init_state, teacher: GPT, seed: int, device) -> GPT:
    torch.manual_seed(seed)  # every student starts from the same weights
    student = GPT(s_cfg).to(device)
    if init_state is not None:
        student.load_state_dict(init_state)
    elif init == "teacher":
        init_from_teacher(student, teacher)
    return student


# ----------------------------------------------------------------------------- the data


def real_batches(train, block_size, cfg, device):
    """step -> (x, y): 04's windows, a pure function of (seed, step), so every student sees the same."""
    return lambda step: get_batch(
        train, batch_starts(len(train), block_size, cfg.batch_size, cfg.seed, step), block_size, device
    )


@torch.no_grad()
def teacher_generations(teacher: GPT, train, cfg, device, chunk=64) -> torch.Tensor:
    """(seq_pool, block_size) token ids: each row `seq_prompt` real tokens from the train shard, then
    the teacher's continuation sampled with 03's decoding.generate (KV cache) at seq_temperature."""
    T = teacher.cfg.block_size
    if cfg.seq_prompt >= T:
        raise UserError(
            f"--seq-prompt {cfg.seq_prompt} leaves nothing to generate in a context of {T}; lower it"
        )
    starts = batch_starts(len(train), T, cfg.seq_pool, cfg.seed + 1, 0)
    prompts = get_batch(train, starts, T, device)[0][:, : cfg.seq_prompt]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = [
        generate(
            teacher,
            prompts[i : i + chunk],
            T - cfg.seq_prompt,
            temperature=cfg.seq_temperature,
            generator=gen,
        )
        for i in range(0, len(prompts), chunk)
    ]
    return torch.cat(rows)


def generated_batches(pool: torch.Tensor, batch_size: int):
    """step -> (x, y) from the teacher's generations, cycling through the pool (windows of T - 1)."""

    def batch(step):
        rows = pool[[(step * batch_size + i) % len(pool) for i in range(batch_size)]]
        return rows[:, :-1], rows[:, 1:]

    return batch


# ----------------------------------------------------------------------------- training


def train_student(
    student: GPT,
    teacher: GPT,
    method: str,
    cfg,
    next_batch,
    device,
    log=print,
    temperature=None,
    name=None,
    state=None,
    unit="student",
) -> dict:
    """Train `student` in place for cfg.steps; returns {"records", "s_per_step", "teacher_ms", "student_ms",
    "peak_mb"}. The teacher runs once per batch under no_grad (logit and feature methods only).
    `temperature` overrides cfg.temperature (the sweep); `name` labels the log lines and records.
    state: the run's RunState (04's train_state): `unit` is continued from it and saved every
    cfg.save_interval steps (the student, its feature projections, AdamW, RNG, log)."""
    soft = method in ("logit", "feature")
    T_soft = cfg.temperature if temperature is None else temperature
    name = name or method
    pairs = (
        layer_pairs(cfg.feature_layers, student.cfg.n_layer, teacher.cfg.n_layer)
        if method == "feature"
        else []
    )
    proj = projections(pairs, student.cfg.n_embd, teacher.cfg.n_embd).to(device)
    trainable = nn.ModuleList([student, proj])
    opt = make_optimizer("adamw", param_groups(trainable, cfg.weight_decay), cfg.lr, (0.9, 0.95))
    sched = Schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps, "cosine")
    params = [p for p in trainable.parameters() if p.requires_grad]
    student.train()
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})", vocab_size=student.cfg.vocab_size)
    objects = ({"student": trainable}, {"adamw": opt}, {}, guard)
    start, records, _ = state.restore(unit, *objects) if state else (0, [], {})
    times, t0 = {}, time.time()
    for step in range(start, cfg.steps):
        set_interrupt_hint(f"at step {step} of the {name} student; nothing was written; rerun to start again")
        x, y = next_batch(step)
        set_lr(opt, lr_at(step, sched))
        rec = {"method": name, "step": step + 1}
        if soft:
            with (
                timed(times, "teacher", device),
                torch.no_grad(),
                block_outputs(teacher, [t for _, t in pairs]) as t_h,
            ):
                t_logits, _ = teacher(x)  # once per batch: soft targets and hidden states together
        with timed(times, "student", device):
            with block_outputs(student, [s for s, _ in pairs]) as s_h:
                logits, ce = student(x, y)
            loss = ce
            rec["ce"] = ce.item()
            if soft:
                kd = kd_loss(logits, t_logits, T_soft)
                loss = cfg.alpha * ce + (1 - cfg.alpha) * kd
                rec["kd"] = kd.item()
            if pairs:
                feat = sum(
                    feature_loss(s_h[s], t_h[t], w, cfg.feature_loss) for (s, t), w in zip(pairs, proj)
                ) / len(pairs)
                loss = loss + cfg.feature_weight * feat
                rec["feature"] = feat.item()
            loss.backward()
            guard.check(step + 1, loss, clip_grad_norm(params, 1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
        records.append(rec)
        if (step + 1) % cfg.log_interval == 0 or step + 1 == cfg.steps:
            n = step + 1 - start  # steps timed in this process
            parts = " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("method", "step"))
            log(
                f"{name:<9} step {step + 1}/{cfg.steps} | {parts} | {1000 * (time.time() - t0) / n:.0f} ms/step "
                f"(teacher {1000 * times.get('teacher', 0) / n:.0f}, student {1000 * times['student'] / n:.0f}) | "
                f"peak memory {peak_memory_mb(device):.0f} MB",
                flush=True,
            )
        if state and state.due(step + 1) and step + 1 < cfg.steps:
            state.save(unit, step + 1, *objects, records=records)
    student.eval()
    ran = cfg.steps - start  # the steps this process timed (all of them unless resumed)
    return {
        "records": records,
        "s_per_step": (time.time() - t0) / ran,
        "teacher_ms": 1000 * times.get("teacher", 0) / ran,
        "student_ms": 1000 * times["student"] / ran,
        "peak_mb": peak_memory_mb(device),
    }
