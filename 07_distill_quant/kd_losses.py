"""The distillation losses: what a student learns from a teacher, besides the hard labels.

    kd_loss(student_logits, teacher_logits, T)          # T²·KL(softmax(teacher/T) ‖ softmax(student/T))
    feature_loss(h_student, h_teacher, W, "mse")        # ‖W·h_s - h_t‖² / ‖h_t‖² (or 1 - cosine)
    with block_outputs(model, [1, 2]) as h: model(x)    # h[i]: block i's output, (B, T, d)

distill_student.train_student mixes them: loss = α·CE + (1-α)·kd_loss (+ β·feature_loss). The KD
loss is over the full vocabulary (the teacher's whole distribution per position, not a top-k of it).

Interview questions it answers:
- What does a soft target carry that a label does not? (the teacher's ranking of the wrong tokens:
  "dark knowledge"; one example then says how similar the tokens are, a richer signal per token)
- Why multiply the KD loss by T²? (`kd_loss`: the soft-target gradient scales as 1/T²; T² keeps it
  comparable to the CE's at any T, so α keeps its meaning)
- Why KL(teacher ‖ student) and not the reverse? (forward KL is the CE against the soft targets up to
  a constant: mean-seeking, the student spreads mass over everything the teacher allows; reverse KL,
  as in MiniLLM, is mode-seeking and needs samples from the student)
- Why a projection in feature distillation? (student and teacher widths differ; W is trained with
  the student and thrown away after, so the student is not forced into the teacher's basis)
"""

import contextlib
import sys
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from gpt import GPT  # 03_model


def kd_loss(student_logits, teacher_logits, temperature: float):
    """T² · KL(p ‖ q) per position, averaged; p = softmax(teacher/T), q = softmax(student/T), (..., V).

    Why T²: for a student logit z_i, ∂KL/∂z_i = (q_i - p_i) / T. When T is large next to the logits,
    the softmax is nearly uniform and q_i - p_i ≈ (z_i - v_i) / (V·T) (zero-mean logits z, v), so the
    gradient falls as 1/T². Multiplying by T² keeps the soft-target gradient the size it has at T = 1
    whatever T is, so α mixes it with the hard-label gradient in the same proportion at every
    temperature (Hinton et al. 2015, section 2). tests/test_07_distill.py checks the ratio."""
    # >>> exercise: T² times the mean over positions of KL(softmax(teacher/T) ‖ softmax(student/T))
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (...,)
    return temperature**2 * kl.mean()
    # <<< exercise


def layer_pairs(spec: str, n_student: int, n_teacher: int) -> list:
    """[(student block, teacher block)], 1-based block outputs, from 'auto' or 's:t,s:t'.
    auto: student block i -> teacher block round(i·L_t/L_s) (2 of 4: 1:2, 2:4)."""
    if spec == "auto":
        return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
    pairs = []
    for part in spec.split(","):
        try:
            s, t = (int(x) for x in part.split(":"))
        except ValueError:
            raise UserError(
                f"--feature-layers {spec!r}: write student:teacher block pairs, e.g. 1:2,2:4"
            ) from None
        if not (1 <= s <= n_student and 1 <= t <= n_teacher):
            raise UserError(
                f"--feature-layers {part}: the student has blocks 1..{n_student}, the teacher 1..{n_teacher}"
            )
        pairs.append((s, t))
    return pairs


def projections(pairs, d_student: int, d_teacher: int) -> nn.ModuleList:
    """One learned W (d_teacher x d_student) per layer pair: (B, T, d_s) -> (B, T, d_t)."""
    return nn.ModuleList(nn.Linear(d_student, d_teacher, bias=False) for _ in pairs)


def feature_loss(student_h, teacher_h, proj: nn.Module, kind: str):
    """Distance between W·h_student and h_teacher, (B, T, d) each, averaged over positions.

    mse: ‖W·h_s - h_t‖² / ‖h_t‖² over the batch, a relative error: 1 = predicting zeros, whatever the
    scale of the teacher's residual stream (it grows with depth). cosine: 1 - cos(W·h_s, h_t)."""
    # >>> exercise: W·h_student vs h_teacher: mean over positions of 1 - cosine (over features), or MSE over the mean square of h_teacher
    pred, target = proj(student_h).float(), teacher_h.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    return (pred - target).pow(2).mean() / target.pow(2).mean().clamp(min=1e-8)
    # <<< exercise


@contextlib.contextmanager
def block_outputs(model: GPT, layers):
    """Yield a dict that each forward fills with {block (1-based): its output (B, T, d)} (forward hooks:
    03's model is not changed; a Block returns (x, aux))."""
    got = {}
    hooks = [
        model.blocks[i - 1].register_forward_hook(lambda m, args, out, i=i: got.__setitem__(i, out[0]))
        for i in layers
    ]
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()
