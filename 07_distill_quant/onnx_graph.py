"""03's GPT as an ONNX graph with a KV cache, run in ONNX Runtime: the library of export_onnx.py (the
command), bench_onnx_int8.py and export_roundtrip.py (the `export` stage).

ONNX is a graph of standard operators (MatMul, Softmax, ...) that runtimes other than PyTorch run:
ONNX Runtime on CPUs and phones, TensorRT on NVIDIA GPUs (it builds its engines from ONNX), browsers
through onnxruntime-web. A graph has fixed inputs and outputs, so the KV cache cannot live in a Python
object as in decoding.py: it becomes tensors that go in and come out of every call.

    inputs   idx (B, T)                       the new tokens (the whole prompt first, then 1 per step)
             past_k, past_v (L, B, Hkv, P, hd) every layer's cached keys/values; P = 0 at the start
    outputs  logits (B, V)                    for the last new token only (all a generator needs)
             new_k, new_v (L, B, Hkv, P+T, hd) the cache to feed back next call

B, T and P are dynamic axes: one graph serves the prefill (T = prompt, P = 0) and every decode step
(T = 1, P growing). The step below is 03's GPT.forward with the cache written as a concatenation and
the positions and causal mask computed from P inside the graph.

    python 07_distill_quant/export_onnx.py --ckpt runs/tiny/pretrain/ckpt.pt --out runs/tiny/onnx
    python 07_distill_quant/export_onnx.py --preset-model llama --out /tmp/onnx   # a random tiny model

The command writes model.onnx, checks that ONNX Runtime gives the logits of PyTorch (max |diff|) and
the same greedy tokens, and prints tokens/s of both. Needs the optional packages of
requirements-export.txt (onnx, onnxscript, onnxruntime).

Interview questions it answers:
- How does a KV cache cross a graph boundary? (as explicit inputs and outputs: the runtime returns
  the grown cache and the caller passes it back; serving engines preallocate it and bind it in place)
- Why dynamic axes? (without them the exporter bakes the example's sizes into the graph, and a prompt
  of another length or a later decode step fails or, worse, reshapes silently)
- Why can ONNX Runtime beat PyTorch eager on a small model? (eager pays Python and dispatcher overhead
  per operator, per token; the runtime runs a fused, pre-planned graph; on a large model both are
  bound by the same matmuls and memory bandwidth, and the gap closes)
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "kernels")]
from common.cli import UserError
from common.layout import RunLayout
from checkpoint_io import load_checkpoint  # 03_model
from decoding import KVCache  # 03_model
from gpt import GPT, PRESETS, GPTConfig, config_from_dict  # 03_model
from position_encoding import rope_cos_sin, sinusoidal_positions  # 03_model


class ConcatCache:
    """A cache the graph can express: each layer's keys/values are the past ones concatenated with the
    new ones (decoding.KVCache writes into a preallocated buffer instead, which needs in-place ops)."""

    def __init__(self, past_k, past_v):
        self.past_k, self.past_v = past_k, past_v  # (L, B, Hkv, P, hd)
        self.k, self.v = [], []

    def update(self, layer, k, v):
        self.k.append(torch.cat([self.past_k[layer], k], dim=2))  # (B, Hkv, P+T, hd)
        self.v.append(torch.cat([self.past_v[layer], v], dim=2))
        return self.k[-1], self.v[-1]


class OnnxStep(nn.Module):
    """(idx, past_k, past_v) -> (last logits, new_k, new_v): one GPT call with the cache as tensors."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model.eval()

    def forward(self, idx, past_k, past_v):
        m, cfg = self.model, self.model.cfg
        T, P = idx.shape[1], past_k.shape[3]
        pos = torch.arange(T, device=idx.device)[None] + P  # (1, T) absolute positions
        k_abs = torch.arange(T + P, device=idx.device)[None, :]
        allowed = (k_abs <= pos[0][:, None])[None, None]  # (1, 1, T, P+T) causal over the whole cache
        x = m.tok_emb(idx)
        if cfg.pos_emb == "learned":
            x = x + m.pos_emb(pos)
        elif cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_positions(pos, cfg.n_embd).to(x.dtype)
        rope = None
        if cfg.pos_emb == "rope":
            cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
            rope = (cos[:, None], sin[:, None])
        cache = ConcatCache(past_k, past_v)
        for layer, block in enumerate(m.blocks):
            x, _ = block(x, rope, allowed, cache, layer)
        logits = m.lm_head(m.norm_f(x[:, -1]))  # (B, V)
        return logits, torch.stack(cache.k), torch.stack(cache.v)


def empty_cache(cfg: GPTConfig, batch: int = 1):
    shape = (cfg.n_layer, batch, cfg.n_kv_head, 0, cfg.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


def export_onnx(model: GPT, path) -> Path:
    """Write model.onnx with dynamic batch, new-token and cache-length axes."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UserError(
            "the ONNX export needs the onnx package; pip install -r requirements-export.txt"
        ) from None
    cfg = model.cfg
    idx = torch.zeros(1, 3, dtype=torch.long)
    pk = torch.zeros(cfg.n_layer, 1, cfg.n_kv_head, 2, cfg.head_dim)  # P = 2 in the example; dynamic below
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_axes = {1: "batch", 3: "past"}
    backend, cfg.attn_backend = cfg.attn_backend, "torch"  # the naive softmax(QKᵀ)V traces to plain ops
    try:
        _trace(model, idx, pk, path, cache_axes)
    finally:
        cfg.attn_backend = backend
    return path


def _trace(model, idx, pk, path, cache_axes):
    with torch.no_grad():
        torch.onnx.export(
            OnnxStep(model),
            (idx, pk, pk.clone()),
            str(path),
            input_names=["idx", "past_k", "past_v"],
            output_names=["logits", "new_k", "new_v"],
            dynamic_axes={
                "idx": {0: "batch", 1: "new"},
                "past_k": cache_axes,
                "past_v": cache_axes,
                "logits": {0: "batch"},
                "new_k": {1: "batch", 3: "total"},
                "new_v": {1: "batch", 3: "total"},
            },
            opset_version=18,  # the dynamo exporter's own opset: no version conversion afterwards
            dynamo=True,  # torch.export: the graph is captured from Python, sizes stay symbolic
        )


def onnx_session(path, threads: int = 1):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running ONNX needs onnxruntime; pip install -r requirements-export.txt") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_greedy(session, cfg: GPTConfig, prompt: list, n_new: int) -> list:
    """Greedy tokens from ONNX Runtime: the prompt in one call (P = 0), then one token per call."""
    import numpy as np

    k, v = (t.numpy() for t in empty_cache(cfg))
    idx, out = np.array([prompt], dtype=np.int64), []
    for _ in range(n_new):
        logits, k, v = session.run(None, {"idx": idx, "past_k": k, "past_v": v})
        out.append(int(logits[0].argmax()))
        idx = np.array([[out[-1]]], dtype=np.int64)
    return out


@torch.no_grad()
def eager_greedy(model: GPT, prompt: list, n_new: int) -> list:
    """The same greedy loop in PyTorch eager with 03's preallocated KVCache."""
    cache = KVCache(model.cfg.n_layer, len(prompt) + n_new)
    idx, out = torch.tensor([prompt]), []
    for _ in range(n_new):
        logits, _ = model(idx, cache=cache)
        out.append(int(logits[0, -1].argmax()))
        idx = torch.tensor([[out[-1]]])
    return out


def random_model(preset: str) -> GPT:
    """A seeded random GPT of 03's `preset` (4 layers, width 128, vocab 512): a demo when there is no run."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=512, block_size=256, n_layer=4, n_head=4, n_embd=128)
    return GPT(GPTConfig(**sizes, **PRESETS[preset])).eval()


def checkpoint_model(path) -> GPT:
    """03's GPT of a checkpoint file, in eval mode."""
    ckpt = load_checkpoint(path, made_by=RunLayout(Path(path).parent.parent).made_by("pretrain"))
    model = GPT(config_from_dict(ckpt["config"], source=str(path)))
    model.load_state_dict(ckpt["model"])
    return model.eval()
