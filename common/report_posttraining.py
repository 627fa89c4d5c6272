"""The report card's sections for stages 05-07 (SFT and its method comparison, the reward model, DPO,
PPO, GRPO, their comparison, distillation, speculative decoding, pruning, quantization, serving, and the
optional feedback loop and export round trip): one function per stage, (run folder, figure folder) ->
Section, each reading only its stage's files.

    from common.report_posttraining import sft_section
    s = sft_section(Path("runs/tiny"), None)

Laid out by common/report_card.py; the shared pieces are in common/report_parts.py.
"""

from common.files import markdown_table
from common.layout import RunLayout
from common.report_parts import Section, bar_line, figure, num, outcome, stage_block, verdict


def sft_section(run, figs) -> Section:
    s = Section("sft", "05 Supervised fine-tuning")
    o = outcome(run, "sft")
    if o is None or not stage_block(s, run, "sft"):
        return s
    b, t = o["heldout_base"], o["heldout_tuned"]
    rows = [
        {"model": "base + template", **eval_cells(b)},
        {"model": f"after SFT ({o['method']})", **eval_cells(t)},
    ]
    s.body = "\n\n".join(
        [
            markdown_table(rows, ["model", "exact match", "token F1", "answer acc"]),
            f"Trainable parameters {o['params']['trainable']:,} of {o['params']['total']:,} "
            f"({o['params']['percent']:.2f} %); {o['steps']} steps ({o['stopped']}); pretraining val loss "
            f"{o['corpus_val_loss']['before']:.3f} -> {o['corpus_val_loss']['after']:.3f} (forgetting if it rises).",
        ]
    )
    return s


def eval_cells(e) -> dict:
    return {
        "exact match": num(e["exact_match"]),
        "token F1": num(e["token_f1"]),
        "answer acc": num(e.get("answer_acc")),
    }


def sft_compare_section(run, figs) -> Section:
    s = Section("sft_compare", "05 Fine-tuning methods compared (same base, data, steps, seed)")
    o = outcome(run, "sft_compare", "compare.json")
    if o is None or not stage_block(s, run, "sft_compare"):
        return s
    outs = o["outcomes"]
    base = next(iter(outs.values()))["heldout_base"]
    rows = [{"method": "base (template only)", "trainable": "0", **eval_cells(base), "forgetting": "-"}]
    rows += [
        {
            "method": m,
            "trainable": f"{v['params']['trainable']:,} ({v['params']['percent']:.2f} %)",
            **eval_cells(v["heldout_tuned"]),
            "forgetting": num(v["corpus_val_loss"]["change"], sign=True),
            "file KiB": f"{v['file_kib']:.0f}",
            "train CPU s": f"{v['train_cpu_s']:.0f}",
        }
        for m, v in outs.items()
    ]
    s.body = "\n\n".join(
        [
            "Forgetting: change of the pretraining val loss (nats/token) after fine-tuning; higher = more forgotten.",
            markdown_table(
                rows,
                [
                    "method",
                    "trainable",
                    "exact match",
                    "token F1",
                    "answer acc",
                    "forgetting",
                    "file KiB",
                    "train CPU s",
                ],
            ),
            figure(
                run / "sft_compare" / "compare.png", "answers and forgetting per method (compare.py's plot)"
            ),
        ]
    )
    return s


def reward_model_section(run, figs) -> Section:
    s = Section("reward_model", "06 Reward model")
    o = outcome(run, "rm")
    if o is None or not stage_block(s, run, "rm"):
        return s
    h = o["heldout"]
    per = [
        {"rule": k, "accuracy": num(v["accuracy"] if isinstance(v, dict) else v)}
        for k, v in h.get("per_rule", {}).items()
    ]
    s.body = "\n\n".join(
        [markdown_table(per, ["rule", "accuracy"]), figure(RunLayout(run).rm / "rm.png", "reward model")]
    )
    return s


def rl_method_section(name):
    def section(run, figs) -> Section:
        s = Section(name, f"06 {name.upper()}")
        if not stage_block(s, run, name):
            return s
        s.body = figure(run / name / f"{name}.png", f"{name} training")
        return s

    return section


def rl_compare_section(run, figs) -> Section:
    s = Section("rl_compare", "06 Alignment methods against SFT (same held-out prompts, greedy)")
    o = outcome(run, "rl_compare", "compare.json")
    if o is None or not stage_block(s, run, "rl_compare"):
        return s
    columns = list(dict.fromkeys(k for r in o["rows"] for k in r))  # SFT's row has no "own metric" columns
    s.body = "\n\n".join(
        [
            markdown_table(o["rows"], columns),
            "\n".join(f"- {m}" for m in o.get("missing", [])),
            figure(run / "rl_compare" / "compare.png", "alignment comparison"),
        ]
    )
    return s


def distill_section(run, figs) -> Section:
    s = Section("distill", "07 Distillation")
    o = outcome(run, "distill")
    if o is None or not stage_block(s, run, "distill"):
        return s
    rows = o["rows"]
    table = [
        {
            "model": k,
            "params": f"{v['params']:,}",
            "val loss": num(v["val_loss"]),
            "val ppl": num(v["val_ppl"], 2),
            "exact match": num(v.get("exact_match")),
            "gap closed": num(v.get("gap_closed")),
            "gen tok/s": num(v.get("gen_tok_s"), 0),
        }
        for k, v in rows.items()
    ]
    s.body = "\n\n".join(
        [
            markdown_table(
                table, ["model", "params", "val loss", "val ppl", "exact match", "gap closed", "gen tok/s"]
            ),
            figure(RunLayout(run).distill / "distill.png", "distillation"),
        ]
    )
    return s


def speculative_section(run, figs) -> Section:
    s = Section("speculative", "07 Speculative decoding")
    o = outcome(run, "speculative")
    if o is None or not stage_block(s, run, "speculative"):
        return s
    rows = o["rows"]
    table = [
        {
            "draft": r["draft"],
            "k": r["k"],
            "accept rate": num(r.get("accept_rate")),
            "tok/s": num(r["tok_s"], 0),
            "speedup": num(r["speedup"], 2),
            "identical": r.get("identical_to_teacher") or "-",
        }
        for r in rows
    ]
    s.body = "\n\n".join(
        [
            markdown_table(table, ["draft", "k", "accept rate", "tok/s", "speedup", "identical"]),
            figure(run / "speculative" / "speculative.png", "speculative decoding"),
        ]
    )
    return s


def prune_section(run, figs) -> Section:
    s = Section("prune", "07 Pruning")
    o = outcome(run, "prune")
    if o is None or not stage_block(s, run, "prune"):
        return s
    rows = o["rows"]
    table = [
        {
            "variant": r["variant"],
            "removed": r["removed"],
            "nonzero params": f"{r['nonzero_params']:,}",
            "ppl pruned": num(r["ppl_pruned"], 2),
            "ppl recovered": num(r["ppl_recovered"], 2),
            "file KiB": num(r["file_kib"], 0),
        }
        for r in rows
    ]
    s.body = "\n\n".join(
        [
            markdown_table(
                table, ["variant", "removed", "nonzero params", "ppl pruned", "ppl recovered", "file KiB"]
            ),
            figure(run / "prune" / "prune.png", "pruning"),
        ]
    )
    return s


def quantize_section(run, figs) -> Section:
    s = Section("quantize", "07 Quantization")
    o = outcome(run, "quant")
    if o is None or not stage_block(s, run, "quant"):
        return s
    table = [
        {
            "format": r["format"],
            "bytes": f"{r['bytes']:,}",
            "x fp32": num(r["vs_fp32_bytes"]),
            "val ppl": num(r["val_ppl"], 3),
            "change": num(r["ppl_change_pct"], 2, sign=True) + " %",
            "exact match": num(r.get("exact_match")),
            "tok/s": num(r.get("tok_s"), 0),
        }
        for r in o["rows"]
    ]
    s.body = "\n\n".join(
        [
            markdown_table(table, ["format", "bytes", "x fp32", "val ppl", "change", "exact match", "tok/s"]),
            *[f"- {g}" for g in o.get("goals", [])],
            figure(RunLayout(run).quant / "quant.png", "quantization"),
        ]
    )
    return s


def serve_section(run, figs) -> Section:
    s = Section("serve", "07 Serving: batching policies on one request stream")
    o = outcome(run, "serve", "bench_serve.json")
    if o is None or not stage_block(s, run, "serve"):
        return s
    table = [
        {
            "policy": r["policy"],
            "tokens/s": num(r["tokens_per_s"], 0),
            "tokens/s per pass": ", ".join(f"{x:.0f}" for x in r.get("tokens_per_s_passes", [])) or "-",
            "requests/s": num(r["requests_per_s"], 2),
            "TTFT p50 s": num(r["ttft_p50"]),
            "latency p95 s": num(r["latency_p95"]),
            "mean batch": num(r["mean_batch"], 2),
            "same tokens": "yes" if r["same_tokens"] else "NO",
        }
        for r in o["rows"]
    ]
    s.body = "\n\n".join(
        [
            f"Setup: {o.get('setup', '')}",
            markdown_table(table, list(table[0]) if table else []),
            figure(RunLayout(run).serve / "bench_serve.png", "serving"),
        ]
    )
    return s


def feedback_loop_section(run, figs) -> Section:
    s = Section(
        "feedback_loop",
        "05 Feedback loop: rate the SFT model, train on the ratings (optional: `--add feedback_loop`)",
    )
    o = outcome(run, "feedback_loop")
    if o is None or not stage_block(s, run, "feedback_loop"):
        return s
    r = o["ratings"]
    s.body = "\n\n".join(
        [
            f"A simulated user who knows the world asked {r['ratings']} questions: {r['up']} answers rated up, "
            f"{r['down']} down, each with the right answer (feedback/feedback.jsonl, written by the server's "
            "append function). loop: sft.py --feedback from the served model; control: the same round "
            "without the feedback; majority: the commonest value of the attribute, said for everyone.",
            o["table"],
            "\n".join(f"- {bar_line(b)}: {verdict(b['passed'])}" for b in o.get("bars", [])),
        ]
    )
    return s


def export_section(run, figs) -> Section:
    s = Section("export", "07 Export: Hugging Face and ONNX files loaded back (optional: `--add export`)")
    o = outcome(run, "export")
    if o is None or not stage_block(s, run, "export"):
        return s
    hf = o.get("transformers")
    lines = [f"- {k}: skipped ({v})" for k, v in o.get("skipped", {}).items()]
    if hf:
        lossy = ", ".join(f"{k}-rounded {v:.1e}" for k, v in hf["lossy_max_abs_logit_diff"].items())
        tok = hf.get("tokenizer_equal")
        lines.append(
            f"- transformers ({hf['architecture']}): max |Δ logit| {hf['max_abs_logit_diff']:.1e} over "
            f"{hf['logits_compared']:,} logits (tolerance {o['tolerance']:g}; the same weights {lossy}); "
            f"greedy tokens equal on {hf['greedy_equal']}/{hf['prompts']} prompts"
            + (f"; tokenizer.json ids equal on {tok['equal']}/{tok['texts']} texts" if tok else "")
        )
    lines += [f"- {bar_line(b)}: {verdict(b['passed'])}" for b in o.get("bars", [])]
    s.body = "\n\n".join([o.get("data", ""), o.get("table", ""), "\n".join(lines)])
    return s
