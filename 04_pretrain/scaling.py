"""A scaling-law sweep you can run on a laptop: model sizes x token budgets, then fit L(N, D).

    python 04_pretrain/scaling.py --data runs/tiny              # 5 sizes x 3 budgets, <= 10 min CPU

Trains every (size, budget) pair with the tiny setup (cosine schedule to the end of each budget, so
each run is a finished run, as in the Chinchilla paper's approach 3), reads its final val loss and fits

    L(N, D) = E + A / N^alpha + B / D^beta        N = non-embedding parameters, D = training tokens

with numpy: for fixed (alpha, beta) the model is linear in (E, A, B), so a grid over the two
exponents with a least-squares solve at each point finds the global best fit without an iterative
optimizer or a starting guess. It also fits the simpler power law L = A' N^-alpha' at the largest
budget (a straight line in log-log). Prints the loss table, the fitted exponents, the fit's RMS
error and a leave-one-out check; saves scaling.png and scaling.json under runs/<name>/scaling/.

How far to trust it: a few minutes of CPU is 4-5 orders of magnitude below the smallest runs in the
scaling-law papers. Budgets are short, so the small models are not converged and the big ones are
undertrained; the exponents move noticeably when one point is left out (the leave-one-out column
shows by how much). Read it as the method, not as a measurement of the constants.

Interview questions it answers:
- What do Kaplan et al. and Chinchilla say? (loss falls as a power law in N and D; compute-optimal
  training uses ~20 tokens per parameter, so N and D should grow together, roughly N ~ C^0.5)
- Why non-embedding parameters? (embedding tables add parameters but almost no FLOPs per token;
  counting them bends the small-model end of the curve)
- Why is a fit with an irreducible term E needed? (the data has entropy: loss cannot go to 0)
"""

import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from common.layout import RunLayout
from common.outcome import make_bar
from common.runs import check_artifact, fresh_output, write_manifest

from pretrain_loop import TrainConfig, train

# (n_layer, n_embd, n_head): non-embedding params from ~6k to ~0.8M with the swiglu/rmsnorm model
SIZES = [(1, 32, 2), (2, 48, 2), (2, 64, 4), (3, 96, 4), (4, 128, 4), (4, 160, 4)]


@dataclasses.dataclass
class ScalingConfig:
    data: str = option("", "run folder runs/<name> holding tokens/ from 02_tokenizer (required)")
    steps: list[int] = option(
        [50, 100, 200], "token budgets as optimizer steps (D = steps x batch x block)", sep=","
    )
    sizes: int = option(5, "how many of SIZES, smallest first", min=3, max=len(SIZES))
    block_size: int = option(64, "context length", min=2)
    batch_size: int = option(16, "sequences per step", min=1)
    lr: float = option(3e-3, "peak learning rate (cosine to lr/10, warmup a tenth of each budget)", min=0.0)
    seed: int = option(1337, "initial weights and data order", min=0)
    overwrite: bool = option(False, "replace the results already in runs/<name>/scaling")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(steps=[10, 12], sizes=3, block_size=32, batch_size=4)}


def check_scaling_config(c: ScalingConfig):
    if not c.data:
        raise UserError("--data is required: the run folder runs/<name> with tokens/ from 02_tokenizer")
    if len(c.steps) < 2 or min(c.steps) < 10 or len(set(c.steps)) != len(c.steps):
        raise UserError(
            f"--steps {','.join(map(str, c.steps))}: give at least 2 different budgets of >= 10 "
            "steps each, e.g. 50,100,200 (a fit in D needs more than one D)"
        )
    if c.lr <= 0:
        raise UserError(f"--lr {c.lr} must be > 0")


def fit_chinchilla(N, D, L, alphas=np.linspace(0.05, 1.5, 59), betas=np.linspace(0.05, 1.5, 59)):
    """Least-squares fit of L = E + A N^-alpha + B D^-beta: grid over (alpha, beta), linear solve inside.

    Returns dict(E, A, B, alpha, beta, rms). Fits with a negative E, A or B are rejected (not a law).
    """
    best = None
    for a, b in itertools.product(alphas, betas):
        X = np.stack([np.ones_like(L), N**-a, D**-b], axis=1)  # (runs, 3)
        coef, *_ = np.linalg.lstsq(X, L, rcond=None)
        if coef[0] < 0 or coef[1] < 0 or coef[2] < 0:
            continue
        rms = float(np.sqrt(np.mean((X @ coef - L) ** 2)))
        if best is None or rms < best["rms"]:
            best = {
                "E": float(coef[0]),
                "A": float(coef[1]),
                "B": float(coef[2]),
                "alpha": float(a),
                "beta": float(b),
                "rms": rms,
            }
    if best is None:
        raise UserError(
            "no power law with positive coefficients fits these losses; "
            "train longer (--steps) or use more sizes"
        )
    return best


def fit_power_law_in_n(N, L):
    """L = A' N^-alpha' by a straight-line fit of log L on log N. Returns (alpha', A')."""
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return float(-slope), float(np.exp(intercept))


def leave_one_out(N, D, L):
    """The spread of the fitted exponents when each run is left out in turn: (alpha range, beta range)."""
    fits = [fit_chinchilla(np.delete(N, i), np.delete(D, i), np.delete(L, i)) for i in range(len(L))]
    return (
        [min(f["alpha"] for f in fits), max(f["alpha"] for f in fits)],
        [min(f["beta"] for f in fits), max(f["beta"] for f in fits)],
    )


def run_sweep(c: ScalingConfig, out: Path) -> list:
    rows = []
    for (n_layer, n_embd, n_head), steps in itertools.product(SIZES[: c.sizes], c.steps):
        cfg = TrainConfig(
            data=c.data,
            out=str(out / f"L{n_layer}_d{n_embd}_s{steps}"),
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            block_size=c.block_size,
            batch_size=c.batch_size,
            lr=c.lr,
            min_lr=c.lr / 10,
            warmup_steps=max(1, steps // 10),
            max_steps=steps,
            eval_interval=steps,
            eval_batches=8,
            log_interval=steps,
            seed=c.seed,
            quiet=True,
        )
        t = time.time()
        res = train(cfg)
        n = res["params_non_embedding"]
        rows.append(
            {
                "n_layer": n_layer,
                "n_embd": n_embd,
                "N": n,
                "steps": steps,
                "D": steps * c.batch_size * c.block_size,
                "val_loss": res["val_loss"],
                "seconds": time.time() - t,
            }
        )
    return rows


def plot(rows, fit, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({r["D"] for r in rows})
    n_grid = np.geomspace(min(r["N"] for r in rows) * 0.8, max(r["N"] for r in rows) * 1.2, 100)
    for D, color in zip(budgets, ["C0", "C1", "C2", "C3"]):
        pts = sorted((r["N"], r["val_loss"]) for r in rows if r["D"] == D)
        ax.plot(*zip(*pts), "o", color=color, label=f"D = {D / 1e6:.2f}M tokens")
        ax.plot(
            n_grid,
            fit["E"] + fit["A"] * n_grid ** -fit["alpha"] + fit["B"] * D ** -fit["beta"],
            "-",
            color=color,
            lw=1,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="non-embedding parameters N",
        ylabel="final val loss",
        title=f"L = {fit['E']:.2f} + {fit['A']:.3g}/N^{fit['alpha']:.2f} + {fit['B']:.3g}/D^{fit['beta']:.2f}",
    )
    ax.legend()
    save_figure(fig, path)


def sweep(c: ScalingConfig, out: Path, command: str):
    """Train every (size, budget), fit the laws, print and save the results."""
    t0 = time.time()
    rows = run_sweep(c, out)
    N, D, L = (np.array([r[k] for r in rows], dtype=np.float64) for k in ("N", "D", "val_loss"))
    fit = fit_chinchilla(N, D, L)
    alpha_n, _ = fit_power_law_in_n(N[D == D.max()], L[D == D.max()])
    loo_alpha, loo_beta = leave_one_out(N, D, L)

    print(f"{'layers':>6} {'d':>5} {'N (non-emb)':>12} {'D tokens':>10} {'val loss':>9} {'fit':>7} {'s':>5}")
    for r, pred in zip(rows, fit["E"] + fit["A"] * N ** -fit["alpha"] + fit["B"] * D ** -fit["beta"]):
        print(
            f"{r['n_layer']:6d} {r['n_embd']:5d} {r['N']:12,d} {r['D']:10,d} {r['val_loss']:9.4f} "
            f"{pred:7.4f} {r['seconds']:5.0f}"
        )
    print(
        f"fit: L(N, D) = {fit['E']:.3f} + {fit['A']:.3g} / N^{fit['alpha']:.3f} + {fit['B']:.3g} / D^{fit['beta']:.3f}"
        f"   (RMS error {fit['rms']:.4f} nats)"
    )
    print(
        f"leave-one-out: alpha in [{loo_alpha[0]:.2f}, {loo_alpha[1]:.2f}], beta in [{loo_beta[0]:.2f}, {loo_beta[1]:.2f}]"
    )
    print(
        f"power law in N at D = {int(D.max()):,}: L ~ N^-{alpha_n:.3f}   "
        f"(Kaplan et al. 2020: alpha_N ~ 0.076; Chinchilla: alpha ~ 0.34, beta ~ 0.28)"
    )
    plot(rows, fit, out / "scaling.png")
    write_json(out / "outcome.json", outcome_block(fit, rows))
    write_json(
        out / "scaling.json",
        {
            "config": dataclasses.asdict(c),
            "runs": rows,
            "fit": fit,
            "power_law_alpha_N": alpha_n,
            "loo_alpha": loo_alpha,
            "loo_beta": loo_beta,
            "seconds": time.time() - t0,
        },
    )
    write_manifest(
        out,
        stage="04_scaling",
        command=command,
        config=dataclasses.asdict(c),
        inputs=[RunLayout(c.data).tokens],
    )
    print(f"sweep took {time.time() - t0:.0f}s")


def outcome_block(fit, rows) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): the fit's exponents must be positive
    (loss falls with N and with D); the bar's value is the smaller of the two."""
    headline = (
        f"L = {fit['E']:.2f} + {fit['A']:.3g}/N^{fit['alpha']:.2f} + {fit['B']:.3g}/D^{fit['beta']:.2f}, "
        f"RMS error {fit['rms']:.4f} nats over {len(rows)} runs"
    )
    bar = make_bar(
        "min(alpha, beta) of the fitted L(N, D)",
        min(fit["alpha"], fit["beta"]),
        threshold=0.0,
        direction="higher",
        n=len(rows),
        note="the fit's exponents alpha and beta are positive (loss falls with N and with D)",
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    c, _ = parse_config(ScalingConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    check_scaling_config(c)
    run_dir = Path(c.data)
    check_artifact(RunLayout(run_dir).tokens, made_by=RunLayout(run_dir).made_by("tokenizer"))
    out = run_dir / "scaling"
    with fresh_output(out, c.overwrite) as tmp:  # the old result stays until this one succeeds
        sweep(c, tmp, command_line(__file__, argv))
    print(f"wrote {out}/scaling.json and scaling.png")


if __name__ == "__main__":
    run_cli(main)
