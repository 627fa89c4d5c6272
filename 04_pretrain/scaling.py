"""A scaling-law sweep you can run on a laptop: model sizes x token budgets, then fit L(N, D).

    python 04_pretrain/scaling.py --data runs/tiny              # 5 sizes x 3 budgets, <= 10 min CPU

Trains every (size, budget) pair with the tiny setup (cosine schedule to the end of each budget, so
each run is a finished run, as in the Chinchilla paper's approach 3), reads its final val loss and fits

    L(N, D) = E + A / N^alpha + B / D^beta        N = non-embedding parameters, D = training tokens

with numpy: for fixed (alpha, beta) the model is linear in (E, A, B), so a grid over the two
exponents with a least-squares solve at each point finds the global best fit without an iterative
optimizer or a starting guess. It also fits the simpler power law L = A' N^-alpha' at the largest
budget (a straight line in log-log). Prints the loss table, the fitted exponents and the fit's RMS
error; saves scaling.png and scaling.json under runs/<name>/scaling/.

The bar is predictive: each run is left out in turn, the law is fitted on the others and predicts
its loss. Its leave-one-out RMS error must be below that of the cheap baseline L = c0 + c1 log N +
c2 log D (fitted and left out the same way), with a 95 % bootstrap interval over the runs. A law
that cannot predict a run it did not see, or predicts it no better than a plane in log N and log D,
does not pass; no fit at all (losses that do not fall) is a FAIL, not a crash.

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
from common.stats import bootstrap_interval

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

    Returns dict(E, A, B, alpha, beta, rms), or None when no fit has E, A, B >= 0 (no law of this form
    fits: losses that do not fall with N or D). A negative coefficient is rejected, not clipped."""
    a, b = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))  # every grid point at once
    X = np.stack([np.ones((a.size, L.size)), N[None] ** -a[:, None], D[None] ** -b[:, None]], axis=2)
    coef = np.linalg.pinv(X) @ L  # (grid, 3): the least-squares (E, A, B) at each (alpha, beta)
    rms = np.sqrt(np.mean((np.einsum("grk,gk->gr", X, coef) - L) ** 2, axis=1))  # (grid,)
    rms[(coef < 0).any(axis=1)] = np.inf  # not a law: rejected, not clipped
    i = int(np.argmin(rms))
    if not np.isfinite(rms[i]):
        return None
    E, A, B = (float(x) for x in coef[i])
    return {"E": E, "A": A, "B": B, "alpha": float(a[i]), "beta": float(b[i]), "rms": float(rms[i])}


def predict_law(fit, N, D):
    return fit["E"] + fit["A"] * N ** -fit["alpha"] + fit["B"] * D ** -fit["beta"]


def fit_log_linear(N, D, L):
    """The cheap baseline: L = c0 + c1 log N + c2 log D by least squares; returns a predictor."""
    X = lambda n, d: np.stack([np.ones_like(n), np.log(n), np.log(d)], axis=-1)
    coef, *_ = np.linalg.lstsq(X(N, D), L, rcond=None)
    return lambda n, d: X(np.asarray(n, float), np.asarray(d, float)) @ coef


def fit_power_law_in_n(N, L):
    """L = A' N^-alpha' by a straight-line fit of log L on log N. Returns (alpha', A')."""
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return float(-slope), float(np.exp(intercept))


def leave_one_out(N, D, L) -> dict:
    """Each run left out in turn: the law and the log-linear baseline fitted on the others predict it.

    Returns {"law_error", "baseline_error": per-run prediction minus measured loss (nan where no law
    fits the rest), "alpha", "beta": the range of the law's exponents over the refits}."""
    law, base, alphas, betas = [], [], [], []
    for i in range(len(L)):
        keep = np.arange(len(L)) != i
        f = fit_chinchilla(N[keep], D[keep], L[keep])
        law.append(float(predict_law(f, N[i], D[i]) - L[i]) if f else float("nan"))
        base.append(float(fit_log_linear(N[keep], D[keep], L[keep])(N[i], D[i]) - L[i]))
        if f:
            alphas.append(f["alpha"])
            betas.append(f["beta"])
    rng = lambda v: [min(v), max(v)] if v else None
    return {"law_error": law, "baseline_error": base, "alpha": rng(alphas), "beta": rng(betas)}


def scaling_bar(loo: dict) -> dict:
    """The bar: the law's leave-one-out RMS prediction error below the log-linear baseline's, with a 95 %
    bootstrap interval over the runs (both errors of a resampled run are taken together: paired)."""
    e_law, e_base = np.asarray(loo["law_error"]), np.asarray(loo["baseline_error"])
    rms = lambda e: float(np.sqrt(np.mean(e**2)))
    value, base = rms(e_law), rms(e_base)
    interval = None
    if np.isfinite(value) and len(e_law) >= 3:
        idx = np.arange(len(e_law), dtype=np.float64)
        diff = lambda rows: rms(e_law[rows.astype(int)]) - rms(e_base[rows.astype(int)])
        lo, hi = bootstrap_interval(idx, diff)
        interval = [base + lo, base + hi]
    return make_bar(
        "leave-one-out RMS error of the fitted law's predicted val loss (nats/token)",
        value if np.isfinite(value) else None,
        threshold=base,
        direction="lower",
        baseline=base,
        baseline_name="L = c0 + c1 log N + c2 log D, fitted and left out the same way",
        interval=interval,
        n=len(e_law),
        note=(
            "each run is predicted by the law fitted on the others"
            + ("" if np.isfinite(value) else "; for some left-out run no law with E, A, B >= 0 fits the rest")
        ),
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
            final_eval=False,
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
    loo = leave_one_out(N, D, L)
    bar = scaling_bar(loo)
    headline = (
        f"leave-one-out prediction error {bar['value'] if bar['value'] is not None else float('nan'):.4f} "
        f"nats vs log-linear {bar['baseline']:.4f} over {len(rows)} runs"
    )
    if fit is None:
        print("no power law with E, A, B >= 0 fits these losses (train longer or use more sizes)")
        fit = {
            "E": float("nan"),
            "A": float("nan"),
            "B": float("nan"),
            "alpha": float("nan"),
            "beta": float("nan"),
            "rms": float("nan"),
        }

    print(f"{'layers':>6} {'d':>5} {'N (non-emb)':>12} {'D tokens':>10} {'val loss':>9} {'fit':>7} {'s':>5}")
    for r, pred in zip(rows, predict_law(fit, N, D)):
        print(
            f"{r['n_layer']:6d} {r['n_embd']:5d} {r['N']:12,d} {r['D']:10,d} {r['val_loss']:9.4f} "
            f"{pred:7.4f} {r['seconds']:5.0f}"
        )
    print(
        f"fit: L(N, D) = {fit['E']:.3f} + {fit['A']:.3g} / N^{fit['alpha']:.3f} + {fit['B']:.3g} / D^{fit['beta']:.3f}"
        f"   (RMS error {fit['rms']:.4f} nats)"
    )
    if loo["alpha"]:
        a, b = loo["alpha"], loo["beta"]
        print(f"leave-one-out refits: alpha in [{a[0]:.2f}, {a[1]:.2f}], beta in [{b[0]:.2f}, {b[1]:.2f}]")
    print(f"{headline}: {'PASS' if bar['passed'] else 'FAIL'}")
    print(
        f"power law in N at D = {int(D.max()):,}: L ~ N^-{alpha_n:.3f}   "
        f"(Kaplan et al. 2020: alpha_N ~ 0.076; Chinchilla: alpha ~ 0.34, beta ~ 0.28)"
    )
    plot(rows, fit, out / "scaling.png")  # nan curves when no law fits: the points alone
    write_json(out / "outcome.json", {"headline": headline, "bar": bar})  # what report.py lays out
    write_json(
        out / "scaling.json",
        {
            "config": dataclasses.asdict(c),
            "runs": rows,
            "fit": fit,
            "power_law_alpha_N": alpha_n,
            "loo_alpha": loo["alpha"],
            "loo_beta": loo["beta"],
            "leave_one_out": loo,
            "headline": headline,
            "bar": bar,
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
