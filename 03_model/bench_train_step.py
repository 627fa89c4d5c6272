"""Training-step throughput of the GPT: attention backends side by side, and optionally another GPT
implementation (nanoGPT's model.py, say) at the same shape and parameter count.

    python 03_model/bench_train_step.py                                    # 6 x 256, contexts 256 and 128
    python 03_model/bench_train_step.py --reference ~/nanoGPT/model.py --threads 2

Our model is configured as GPT-2 (learned positions, LayerNorm, GELU, biases, tied weights, no
dropout), which is what nanoGPT's model is, so both have the same parameters. A step is forward,
backward and torch's AdamW on random tokens. The models take their steps in turn, one step each,
again and again, so a change in machine load hits all of them alike. The table gives tokens/s of the
median step (wall-clock), of the fastest step (the least disturbed, as timeit reports) and of the
median step's process CPU time (on a shared machine wall-clock includes waiting for a core; CPU time
does not). Prints the table and saves
runs/bench/train_step.png and train_step.json (--out to change them).

--reference loads a file defining `GPT` and `GPTConfig(block_size, vocab_size, n_layer, n_head,
n_embd, dropout, bias)`, with `model(idx, targets) -> (logits, loss)`, as nanoGPT's model.py does.

Interview question it answers:
- Why is naive attention slow on a CPU too? (it writes and rereads B·H·T² scores and probabilities
  and builds a T×T mask per call; a fused kernel keeps a tile at a time in cache: the gap grows with T)
"""

import importlib.util
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "kernels")]
from common.devices import set_threads
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from attention_backends import BACKENDS  # kernels
from gpt import GPT, GPTConfig, PRESETS  # 03_model (this folder)


@dataclass
class StepBenchConfig:
    contexts: list[int] = option([256, 128], "context lengths to time", sep=",")
    tokens: int = option(2048, "tokens per step (batch = tokens / context)", min=1)
    n_layer: int = option(6, "layers", min=1)
    n_embd: int = option(256, "width", min=1)
    n_head: int = option(4, "heads", min=1)
    vocab_size: int = option(2048, "vocabulary", min=2)
    backends: list[str] = option(["auto", "torch"], "our attention backends to time (torch = naive)", sep=",")
    steps: int = option(10, "timed steps per model and context (after one warm-up step)", min=1)
    threads: int = option(0, "torch CPU threads; 0 = torch's default", min=0)
    reference: str = option("", "another GPT's model.py to time beside ours (see above)")
    out: str = option("runs/bench/train_step.png", "plot path; the table goes beside it as .json")


def load_reference(path):
    """(GPT, GPTConfig) classes from a model file outside the repository."""
    if not Path(path).is_file():
        raise UserError(f"--reference {path}: no such file; give the path of a model.py such as nanoGPT's")
    spec = importlib.util.spec_from_file_location("reference_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT, module.GPTConfig


def build_models(cfg: StepBenchConfig, T: int) -> dict:
    """name -> (model, optimizer), all from the same seed, AdamW with the same settings."""
    shape = dict(
        block_size=T,
        vocab_size=cfg.vocab_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        dropout=0.0,
    )
    models = {}
    if cfg.reference:
        ref_gpt, ref_config = load_reference(cfg.reference)
        torch.manual_seed(0)
        models["reference"] = ref_gpt(ref_config(**shape, bias=True))
    for backend in cfg.backends:
        torch.manual_seed(0)
        models[f"ours ({backend})"] = GPT(
            GPTConfig(**shape, attn_backend=backend, tie_weights=True, **PRESETS["gpt2"])
        )
    return {k: (m, torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.1)) for k, m in models.items()}


def one_step(model, opt, x, y):
    """(wall seconds, CPU seconds) of forward + backward + optimizer step."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_context(cfg: StepBenchConfig, T: int) -> list:
    B = max(1, cfg.tokens // T)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    models = build_models(cfg, T)
    times = {k: [] for k in models}
    for m, opt in models.values():
        one_step(m, opt, x, y)  # warm-up
    for step in range(cfg.steps):
        order = list(models) if step % 2 == 0 else list(reversed(models))  # neither always goes first
        for k in order:
            times[k].append(one_step(*models[k], x, y))
    rows = []
    for k, (m, _) in models.items():
        wall, cpu = [t[0] for t in times[k]], [t[1] for t in times[k]]
        rows.append(
            {
                "model": k,
                "context": T,
                "batch": B,
                "params": sum(p.numel() for p in m.parameters()),
                "wall_tok_s": B * T / statistics.median(wall),
                "best_tok_s": B * T / min(wall),
                "cpu_tok_s": B * T / statistics.median(cpu),
            }
        )
    return rows


def save_plot(path, rows):
    plt = pyplot()
    names = list(dict.fromkeys(r["model"] for r in rows))
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [
            next(r["cpu_tok_s"] for r in rows if r["model"] == name and r["context"] == T) for T in contexts
        ]
        ax.bar([j + i * width for j in range(len(contexts))], values, width, label=name)
    ax.set_xticks(
        [j + width * (len(names) - 1) / 2 for j in range(len(contexts))], [f"context {T}" for T in contexts]
    )
    ax.set(ylabel="training tokens / s (CPU time)", title="one optimizer step, GPT-2 configuration")
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(StepBenchConfig, argv, doc=__doc__)
    if not set(cfg.backends) <= set(BACKENDS) or not cfg.backends:
        raise UserError(f"--backends {cfg.backends}: choose from {', '.join(BACKENDS)}")
    if not cfg.contexts or min(cfg.contexts) < 1:
        raise UserError(f"--contexts {cfg.contexts}: give positive context lengths, e.g. 256,128")
    if cfg.reference:
        load_reference(cfg.reference)  # a bad path fails before any timing
    set_threads(cfg.threads)  # pins decoding too (common/devices.py)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {cfg.n_layer} layers x {cfg.n_embd}, "
        f"{cfg.n_head} heads, vocab {cfg.vocab_size}, {cfg.tokens} tokens/step; median of {cfg.steps} steps"
    )
    first = "reference" if cfg.reference else f"ours ({cfg.backends[0]})"
    print(
        f"{'context':>7} {'batch':>5} {'model':<14} {'params':>10} {'wall tok/s':>10} {'best':>6} {'cpu':>6}   "
        f"ratio to {first}: wall, best, cpu"
    )
    rows = []
    for T in cfg.contexts:
        new = time_context(cfg, T)
        base = next(r for r in new if r["model"] == first)
        for r in new:
            r["ratios"] = {k: r[k] / base[k] for k in ("wall_tok_s", "best_tok_s", "cpu_tok_s")}
            print(
                f"{T:>7} {r['batch']:>5} {r['model']:<14} {r['params']:>10,} {r['wall_tok_s']:>10.0f} "
                f"{r['best_tok_s']:>6.0f} {r['cpu_tok_s']:>6.0f}   "
                + ", ".join(f"{v:.2f}x" for v in r["ratios"].values()),
                flush=True,
            )
        rows += new
    out = Path(cfg.out)
    write_json(out.with_suffix(".json"), {"config": asdict(cfg), "torch": torch.__version__, "rows": rows})
    save_plot(out, rows)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    run_cli(main)
