"""Export 03's GPT to ONNX with a KV cache, run it in ONNX Runtime, and time it beside PyTorch eager (the
graph, its cache as tensors and the interview questions are in onnx_graph.py).

    python 07_distill_quant/export_onnx.py --ckpt runs/tiny/pretrain/ckpt.pt --out runs/tiny/onnx
    python 07_distill_quant/export_onnx.py --preset-model llama --out /tmp/onnx   # a random tiny model

It writes model.onnx, checks that ONNX Runtime gives the logits of PyTorch (max |diff|) and the same
greedy tokens, and prints tokens/s of both, interleaved, minimum time of --repeats runs.
Needs the optional packages of requirements-export.txt (onnx, onnxruntime).
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "kernels")]
from common.cli import UserError, option, parse_config, run_cli
from gpt import GPT, PRESETS  # 03_model

from onnx_graph import (
    checkpoint_model,
    eager_greedy,
    empty_cache,
    export_onnx,
    onnx_greedy,
    onnx_session,
    random_model,
)


@dataclass
class OnnxConfig:
    ckpt: str = option("", "03/04 checkpoint; empty = a random model of --preset-model (a demo)")
    preset_model: str = option("gpt2", "architecture of the random demo model", choices=tuple(PRESETS))
    out: str = option("runs/onnx", "folder for model.onnx")
    prompt_len: int = option(16, "prompt tokens", min=1)
    new_tokens: int = option(64, "greedy tokens per run", min=1)
    repeats: int = option(5, "timed runs per contender, interleaved; the minimum is reported", min=1)
    threads: int = option(1, "CPU threads for both PyTorch and ONNX Runtime", min=1)


def demo_model(cfg: OnnxConfig) -> GPT:
    return checkpoint_model(cfg.ckpt) if cfg.ckpt else random_model(cfg.preset_model)


def main(argv=None):
    cfg, _ = parse_config(OnnxConfig, argv, doc=__doc__)
    model = demo_model(cfg)
    if cfg.prompt_len + cfg.new_tokens > model.cfg.block_size:
        raise UserError(
            f"--prompt-len + --new-tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the model's "
            f"block_size {model.cfg.block_size}; lower them"
        )
    torch.set_num_threads(cfg.threads)
    path = export_onnx(model, Path(cfg.out) / "model.onnx")
    session = onnx_session(path, cfg.threads)
    prompt = torch.randint(
        0, model.cfg.vocab_size, (cfg.prompt_len,), generator=torch.Generator().manual_seed(0)
    )
    prompt = prompt.tolist()
    import numpy as np

    k, v = (t.numpy() for t in empty_cache(model.cfg))
    ort_logits, _, _ = session.run(None, {"idx": np.array([prompt]), "past_k": k, "past_v": v})
    with torch.no_grad():
        eager_logits = model(torch.tensor([prompt]))[0][0, -1]
    diff = float(np.abs(ort_logits[0] - eager_logits.numpy()).max())
    same = onnx_greedy(session, model.cfg, prompt, cfg.new_tokens) == eager_greedy(
        model, prompt, cfg.new_tokens
    )
    size = sum(f.stat().st_size for f in path.parent.glob("model.onnx*"))  # + model.onnx.data (weights)
    print(f"wrote {path} ({size / 1e6:.1f} MB); max |logit diff| {diff:.2e}; "
          f"greedy tokens {'equal' if same else 'DIFFERENT'}")  # fmt: skip
    times = {"pytorch eager (KVCache)": [], "onnxruntime (cache as tensors)": []}
    for _ in range(cfg.repeats):  # interleaved, so a load spike hits both
        for name, fn in (
            ("pytorch eager (KVCache)", lambda: eager_greedy(model, prompt, cfg.new_tokens)),
            (
                "onnxruntime (cache as tensors)",
                lambda: onnx_greedy(session, model.cfg, prompt, cfg.new_tokens),
            ),
        ):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"\n{'runtime':<34}{'tokens/s (best of ' + str(cfg.repeats) + ')':>24}")
    for name, ts in times.items():
        print(f"{name:<34}{cfg.new_tokens / min(ts):>24.1f}")
    print(f"(B=1, {cfg.prompt_len}-token prompt, {cfg.new_tokens} new tokens, {cfg.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    return {"max_abs_diff": diff, "tokens_equal": same, "times": times}


if __name__ == "__main__":
    run_cli(main)
