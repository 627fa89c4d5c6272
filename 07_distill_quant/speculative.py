"""Speculative decoding, measured: the teacher alone against draft-and-verify with distill.py's students.

    python 07_distill_quant/speculative.py --run runs/tiny                 # after distill.py
    python 07_distill_quant/speculative.py --run runs/tiny --ks 1,2,4,8 --temperature 1 --new-tokens 96

The algorithm (draft k tokens, verify them in one target forward, accept or resample so the output is
exactly the target's distribution) is speculative_decoding.py; this file is the benchmark.

The bench (the command line) runs the teacher alone and speculative decoding with each draft from
distill.py (the logit-distilled and the scratch student) for k = 2, 4, 8 on the same prompts, greedy
by default, and reports the acceptance rate (accepted / drafted), tokens per teacher forward, tokens/s
and the speedup, checking that greedy outputs equal the teacher's. Expected speedup with acceptance
rate a, k drafts and a draft costing c teacher forwards: (1 - a^(k+1)) / ((1 - a)(k·c + 1)).
Writes runs/<name>/speculative/: outcome.json, speculative.png, manifest.json.

Timing: one untimed warm-up of every contender, then --repeats passes in which, prompt by prompt, the
teacher alone and every setting run in turn (a load change hits them alike); a setting's speed ratio is
the geometric mean of t_teacher / t_setting over the (pass, prompt) units with a 95 % bootstrap interval
over prompts (the independent unit; each the mean over its passes).
The bar (outcome.json "bar"): greedy output identical to the teacher's in every setting AND the fastest
setting's speed ratio, interval included, above --speed-bar (1.0: faster than the teacher alone); the
fastest is picked among the settings, so its interval is the Bonferroni-widened one (level
1 - 0.05 / number of settings), lest selection alone clear the bar. At
this size a forward is Python overhead rather than a weight read, so the draft costs a large share of a
teacher forward and the bar can fail honestly; the measured numbers are in the report card.

Interview question it answers:
- When is speculative decoding slower than the target alone? (low acceptance, or a draft forward
  costing a large share of a target forward, as at this size where a forward is Python overhead:
  even the expected speedup (1 - a^(k+1)) / ((1 - a)(k·c + 1)) is then below 1)
"""

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.files import markdown_table, pyplot, save_figure, write_json
from common.layout import RunLayout
from common.runs import check_artifact, claim_output, run_lock, staged_dir, write_manifest
from common.devices import resolve_device
from common.outcome import make_bar
from common.stats import bootstrap_interval
from decoding import KVCache, check_sampling_args, generate  # 03_model
from gpt import GPT  # 03_model
from batches import eval_starts, load_shards  # 04_pretrain

from compress_eval import TEACHER_HELP, load_teacher
from speculative_decoding import expected_speedup, speculative_generate


@dataclass
class SpeculativeConfig:
    run: str = option("", "run folder runs/<name>: reads distill/ (the drafts) and the teacher")
    teacher: str = option("pretrain", TEACHER_HELP + "; the one distill.py used")
    distill: str = option("", "distill.py's output folder; empty = <run>/distill")
    drafts: list = option(["logit", "scratch"], "students of distill.py to use as drafts", sep=",")
    out: str = option("", "output folder; empty = <run>/speculative")
    ks: list = option([2, 4, 8], "draft lengths k to compare", sep=",")
    prompts: int = option(8, "prompts (val windows) per setting", min=1)
    prompt_tokens: int = option(32, "tokens per prompt", min=1)
    new_tokens: int = option(64, "tokens generated per prompt", min=1)
    temperature: float = option(0.0, "0 = greedy (output = the teacher's exact tokens); > 0 samples", min=0.0)
    top_k: int = option(0, "top-k filter for sampling (0 = off)", min=0)
    top_p: float = option(1.0, "top-p filter for sampling (1 = off)", min=0.0, max=1.0)
    seed: int = option(1234, "sampling seed", min=0)
    repeats: int = option(
        3, "timed passes over the prompts (after one untimed warm-up), in alternation", min=1
    )
    speed_bar: float = option(
        1.0,
        "the bar: the best setting's speed ratio to the teacher alone must lie above this (95 % interval)",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(ks=[2], prompts=1, prompt_tokens=8, new_tokens=8)}


def check_speculative_config(cfg: SpeculativeConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder distill.py wrote distill/ into)")
    if not cfg.ks or min(cfg.ks) < 1:
        raise UserError(f"--ks {','.join(map(str, cfg.ks)) or '(none)'}: each draft length k must be >= 1")
    if not cfg.drafts:
        raise UserError("--drafts is empty; name at least one student of distill.py, e.g. logit")
    check_sampling_args(cfg.new_tokens, cfg.temperature, cfg.top_k or None, cfg.top_p, 1.0)


# ----------------------------------------------------------------------------- the bench


def forward_ms(model: GPT, prompt: torch.Tensor, repeats=20) -> float:
    """Milliseconds of one cached single-token forward (what a decoding step costs), best of repeats."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            cache = KVCache(model.cfg.n_layer, prompt.shape[1] + 1)
            model(prompt, cache=cache)
            t0 = time.perf_counter()
            model(prompt[:, -1:], cache=cache)
            best = min(best, time.perf_counter() - t0)
    return 1000 * best


def load_drafts(cfg: SpeculativeConfig, run: Path, device) -> tuple:
    """({name: student GPT}, distill folder) after checking the folder (check_artifact)."""
    folder = Path(cfg.distill) if cfg.distill else RunLayout(run).distill
    check_artifact(folder, made_by=RunLayout(run).made_by("distill"))
    drafts = {}
    for name in cfg.drafts:
        path = folder / f"student_{name}.pt"
        if not path.is_file():
            raise UserError(
                f"{path}: no such student; distill.py --methods {name} makes it "
                f"(the folder has {', '.join(sorted(p.stem[8:] for p in folder.glob('student_*.pt')))})"
            )
        drafts[name] = GPT.from_checkpoint(path, map_location=device).eval()
    return drafts, folder


def bench(cfg: SpeculativeConfig, teacher, drafts, prompts, device) -> dict:
    """The teacher alone and every (draft, k) on the same prompts. One untimed warm-up of each (first
    calls pay for allocation and lazy initialization), then `repeats` passes; within a pass, per prompt,
    the teacher alone and every setting run one after the other, so a load change on a shared machine
    hits all of them alike. The speed ratio of a setting is the geometric mean over (pass, prompt) of
    t_teacher / t_setting, with a 95 % bootstrap interval over prompts (each the mean over passes)."""
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
    settings = [(name, k) for name in drafts for k in cfg.ks]
    stats = {s: {"rounds": 0, "drafted": 0, "accepted": 0, "same_as_teacher": 0} for s in settings}
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    teacher_alone = lambda p: generate(teacher, p[None], cfg.new_tokens, generator=gen, **sampling)[
        0, len(p) :
    ]
    spec = lambda p, name, k: speculative_generate(
        teacher, drafts[name], p.tolist(), cfg.new_tokens, k, generator=gen, **sampling
    )
    teacher_alone(prompts[0])  # warm-up, untimed
    for name, k in settings:
        spec(prompts[0], name, k)
    times = {s: [] for s in [("teacher", 0)] + settings}  # one entry per (pass, prompt)
    for rep in range(cfg.repeats):
        for prompt in prompts:
            t0 = time.perf_counter()
            ref = teacher_alone(prompt).tolist()
            times[("teacher", 0)].append(time.perf_counter() - t0)
            for name, k in settings:
                t0 = time.perf_counter()
                out, st = spec(prompt, name, k)
                times[(name, k)].append(time.perf_counter() - t0)
                if rep == 0:
                    for key in ("rounds", "drafted", "accepted"):
                        stats[(name, k)][key] += st[key]
                    stats[(name, k)]["same_as_teacher"] += int(out == ref)
    n_tokens = cfg.new_tokens * len(prompts)
    teacher_s = times[("teacher", 0)]
    base = n_tokens * cfg.repeats / sum(teacher_s)
    t_ms = forward_ms(teacher, prompts[0][None])
    rows = [{"draft": "(teacher alone)", "k": 0, "tok_s": base, "speedup": 1.0}]
    for name, k in settings:
        st = stats[(name, k)]
        a = st["accepted"] / max(st["drafted"], 1)
        c = forward_ms(drafts[name], prompts[0][None]) / t_ms
        log_ratio = np.log(np.array(teacher_s) / np.array(times[(name, k)]))  # (repeats * prompts,)
        # The independent unit is the prompt (its acceptance pattern repeats in every pass), so the
        # interval resamples prompts, each the mean over its passes. The bar then picks the fastest of
        # len(settings): its interval is widened to level 1 - 0.05/len(settings) (Bonferroni), or the
        # best of many noisy settings would clear 1 by selection alone.
        per_prompt = log_ratio.reshape(cfg.repeats, len(prompts)).mean(axis=0)
        lo, hi = bootstrap_interval(per_prompt)
        lo_sel, hi_sel = bootstrap_interval(per_prompt, level=1 - 0.05 / len(settings))
        rows.append(
            {
                "draft": name,
                "k": k,
                "accept_rate": a,
                "tokens_per_teacher_forward": n_tokens / st["rounds"],
                "tok_s": n_tokens * cfg.repeats / sum(times[(name, k)]),
                "speedup": float(np.exp(log_ratio.mean())),
                "speedup_interval": [float(np.exp(lo)), float(np.exp(hi))],
                "speedup_interval_selected": [float(np.exp(lo_sel)), float(np.exp(hi_sel))],
                "cost_ratio": c,
                "expected_speedup": expected_speedup(a, k, c),
                "identical_to_teacher": f"{st['same_as_teacher']}/{len(prompts)}"
                if cfg.temperature == 0
                else None,
            }
        )
    return {
        "rows": rows,
        "teacher_forward_ms": t_ms,
        "n_tokens": n_tokens,
        "timed_units": len(teacher_s),
        "prompts": len(prompts),
    }


def speculative_bar(rows: list, speed_bar: float, greedy: bool) -> dict:
    """The bar: among the settings whose greedy output equals the teacher's on every prompt, the fastest
    one's speed ratio, its 95 % interval wholly above `speed_bar`. Sampling (no identity to check) or
    any setting that differs from the teacher fails: a fast decoder that changes the output is a bug."""
    drafted = [r for r in rows if r.get("k")]
    same = lambda r: (
        greedy and r["identical_to_teacher"] and len(set(r["identical_to_teacher"].split("/"))) == 1
    )
    identical = [r for r in drafted if same(r)]
    best = max(identical, key=lambda r: r["speedup"]) if identical else None
    note = (
        "greedy output identical to the teacher's in every setting"
        if len(identical) == len(drafted)
        else f"{len(drafted) - len(identical)} of {len(drafted)} settings differ from the teacher's output"
        if greedy
        else "sampling: identical output cannot be checked, so the bar fails; run greedy (--temperature 0)"
    )
    return make_bar(
        "speed ratio to the teacher alone (greedy, identical output; geometric mean over prompts x passes)",
        None if best is None or len(identical) < len(drafted) else best["speedup"],
        threshold=speed_bar,
        direction="higher",
        baseline=1.0,
        baseline_name="the teacher alone, warmed up and timed in alternation",
        interval=None if best is None else best.get("speedup_interval_selected", best["speedup_interval"]),
        n=None,
        note=note + ("" if best is None else f"; fastest: {best['draft']} k={best['k']}"),
    )


def run_bench(cfg: SpeculativeConfig, argv=None) -> dict:
    check_speculative_config(cfg)
    device = resolve_device(cfg.device)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "speculative"
    teacher, _, source = load_teacher(run, cfg.teacher, device)
    drafts, folder = load_drafts(cfg, run, device)
    for name, d in drafts.items():
        if d.cfg.vocab_size != teacher.cfg.vocab_size:
            raise UserError(
                f"draft {name} has {d.cfg.vocab_size} tokens, the teacher {teacher.cfg.vocab_size}; "
                f"rerun distill.py with --teacher {cfg.teacher}"
            )
    if cfg.prompt_tokens + cfg.new_tokens > teacher.cfg.block_size:
        raise UserError(
            f"--prompt-tokens {cfg.prompt_tokens} + --new-tokens {cfg.new_tokens} exceeds the "
            f"context ({teacher.cfg.block_size}); lower one of them"
        )
    _, val, _ = load_shards(run, teacher.cfg.block_size)
    prompts = [
        torch.as_tensor(val[s : s + cfg.prompt_tokens].astype("int64"), device=device)
        for s in eval_starts(len(val), cfg.prompt_tokens, cfg.prompts)
    ]
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        print(
            f"teacher {source}; drafts {', '.join(cfg.drafts)} from {folder}; {cfg.prompts} prompts x "
            f"{cfg.new_tokens} tokens; {'greedy' if cfg.temperature == 0 else f'temperature {cfg.temperature}'}",
            flush=True,
        )
        outcome = {
            "teacher": str(source),
            "distill": str(folder),
            "config": asdict(cfg),
            "device": device,
            **bench(cfg, teacher, drafts, prompts, device),
        }
        outcome["bar"] = speculative_bar(outcome["rows"], cfg.speed_bar, cfg.temperature == 0)
        outcome["bar"]["n"] = outcome["prompts"]  # the unit the interval resamples
        outcome["headline"] = outcome_block(outcome["rows"])["headline"]
        with staged_dir(out) as tmp:
            write_json(tmp / "outcome.json", outcome)
            plot(outcome["rows"], tmp / "speculative.png")
            write_manifest(
                tmp,
                stage="07_distill_quant/speculative",
                command=command_line(__file__, argv),
                config=asdict(cfg),
                inputs=[source, folder, RunLayout(run).tokens],
            )
    report(outcome, out)
    return outcome


COLUMNS = [
    "draft",
    "k",
    "accept rate",
    "tokens/teacher fwd",
    "tok/s",
    "speedup",
    "expected",
    "c",
    "same as teacher",
]


def table_rows(o: dict) -> list:
    rows = []
    for r in o["rows"]:
        row = {
            "draft": r["draft"],
            "k": r["k"] or "-",
            "tok/s": f"{r['tok_s']:.0f}",
            "speedup": f"{r['speedup']:.2f}",
        }
        if r["k"]:
            row["speedup"] += f" [{r['speedup_interval'][0]:.2f}, {r['speedup_interval'][1]:.2f}]"
            row.update(
                {
                    "accept rate": f"{r['accept_rate']:.2f}",
                    "tokens/teacher fwd": f"{r['tokens_per_teacher_forward']:.2f}",
                    "expected": f"{r['expected_speedup']:.2f}",
                    "c": f"{r['cost_ratio']:.2f}",
                    "same as teacher": r["identical_to_teacher"] or "-",
                }
            )
        rows.append(row)
    return rows


def report(o, out):
    print(markdown_table(table_rows(o), COLUMNS))
    print(
        f"accept rate = accepted / drafted; c = draft forward / teacher forward ({o['teacher_forward_ms']:.2f} ms); "
        f"expected = (1 - a^(k+1)) / ((1 - a)(k·c + 1)); same = greedy outputs identical to the teacher's; "
        f"speedup [95 % interval over {o.get('prompts', '?')} prompts, each the mean of its passes] from "
        f"{o['timed_units']} (pass, prompt) timings after a warm-up; the bar's interval is Bonferroni-widened"
    )
    b = o["bar"]
    value = "-" if b["value"] is None else f"{b['value']:.2f}x"
    print(
        f"bar: {b['note']}; speed {value} against > {b['threshold']:.2f}x: {'PASS' if b['passed'] else 'FAIL'}; wrote {out}/"
    )


def plot(rows, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["draft"] for r in rows if r["k"]):
        rs = [r for r in rows if r["draft"] == name]
        ax1.plot([r["k"] for r in rs], [r["accept_rate"] for r in rs], "o-", label=f"draft: {name} student")
        ax2.plot([r["k"] for r in rs], [r["speedup"] for r in rs], "o-", label=f"{name}: measured")
        ax2.plot([r["k"] for r in rs], [r["expected_speedup"] for r in rs], "x--", label=f"{name}: expected")
    ax1.set(xlabel="k (drafted tokens per round)", ylabel="acceptance rate", ylim=(0, 1), title="acceptance")
    ax2.axhline(1.0, color="gray", lw=1)
    ax2.set(xlabel="k", ylabel="tokens/s relative to the teacher alone", title="speedup")
    ax1.legend()
    ax2.legend(fontsize=8)
    save_figure(fig, path)


def outcome_block(rows) -> dict:
    """{"headline", "bar"}: the headline of outcome.json, and a count of the draft settings whose greedy
    output differs from the teacher's (run_bench writes speculative_bar as the stage's bar instead)."""
    drafted = [r for r in rows if r.get("k")]
    same = [r.get("identical_to_teacher") for r in drafted]
    bar = None
    if same and all(x is not None for x in same):
        differ = sum(a != b for a, b in (x.split("/") for x in same))
        bar = make_bar(
            "draft settings whose greedy output differs from the teacher's",
            differ,
            threshold=0,
            direction="lower",
            inclusive=True,
            n=len(same),
            note="greedy speculative output identical to the teacher's on every prompt",
        )
    best = max(drafted, key=lambda r: r["speedup"]) if drafted else None
    headline = (
        f"best {best['draft']} k={best['k']}: {best['speedup']:.2f}x the teacher alone, acceptance "
        f"{best['accept_rate']:.2f}"
        if best
        else "no draft setting in this run"
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    cfg, _ = parse_config(SpeculativeConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    run_bench(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
