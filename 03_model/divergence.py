"""The one divergence guard every training loop runs after each step: stop a run that has blown up.

    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})", vocab_size=model.cfg.vocab_size)
    for step in ...:
        loss.backward(); grad_norm = clip_grad_norm(params, 1.0)
        guard.check(step, loss, grad_norm)        # before opt.step(): the weights are still the last good ones
        opt.step()

Three signs of a diverged run, each cheap to see:
  - the loss is nan or inf (an overflow, a log of 0, a 0/0 in the loss);
  - the gradient norm is nan or inf (the weights would become nan at the next step);
  - a language-model loss stuck at ln(vocab), the loss of the uniform distribution, for `patience` steps
    after it had been well below: the model has forgotten everything it knew (too large a step threw the
    weights where every logit is the same, e.g. all-dead ReLUs or saturated softmax).
On any of them `check` raises a UserError naming the step, what it saw and the flag to lower; the stage's
`fresh_output` block then discards the run, so the previous result stays. A huge but finite loss is not
caught here: it is the loss curve's job to show it, and a learning-rate sweep may pass through one.

Interview questions it answers:
- What do you do when the loss becomes nan? (stop, keep the last good weights, lower the learning rate or
  raise warmup, check for log(0), use fp32 or a loss scaler; never train on)
- Why is ln(V) a special loss value? (the cross-entropy of the uniform prediction over V tokens: an untrained
  model starts there, and a collapsed one returns there)
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError


@dataclass
class DivergenceGuard:
    lower: str = "--lr"  # the flag to lower, with its value: "--lr (now 1e+09)"
    vocab_size: int = 0  # > 0 for a language-model loss: also stop on a loss stuck at ln(vocab)
    patience: int = 20  # steps at ln(vocab) that count as stuck
    best: float = math.inf
    stuck: int = 0

    def problem(self, loss, grad_norm=None) -> str:
        """What is wrong with this step, or "" when nothing is."""
        loss = float(loss.detach() if hasattr(loss, "detach") else loss)
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            return f"the gradient norm is {float(grad_norm)} (loss {loss:.4g})"
        self.best = min(self.best, loss)
        if self.vocab_size > 1:
            chance = math.log(self.vocab_size)
            # within 1 % of ln V, having once been below 80 % of it: learned, then lost
            at_chance = abs(loss - chance) < 0.01 * chance and self.best < 0.8 * chance
            self.stuck = self.stuck + 1 if at_chance else 0
            if self.stuck >= self.patience:
                return (
                    f"the loss has been {loss:.4f} ≈ ln({self.vocab_size}) = {chance:.4f}, the loss of a uniform "
                    f"guess, for {self.stuck} steps (it was {self.best:.4f}): the model has forgotten what it knew"
                )
        return ""

    def check(self, step, loss, grad_norm=None):
        """Raise a UserError when the step shows divergence (see `problem`)."""
        what = self.problem(loss, grad_norm)
        if what:
            raise UserError(
                f"training diverged at step {step}: {what}; stopped without writing this run "
                f"(the previous result, if any, is kept); lower {self.lower}"
            )
