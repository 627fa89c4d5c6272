"""Quantize a trained GPT to INT8 / INT4, save it in a format that loads back as it is, and measure the cost.

    python 07_distill_quant/quantize.py --run runs/tiny            # INT4-g32 GPTQ model.pt + the comparison table
    python 07_distill_quant/quantize.py --run runs/tiny --bits 8 --method rtn --compare ""      # INT8 only
    python 07_distill_quant/quantize.py --run runs/tiny --load runs/tiny/quant/model.pt         # use a saved one

    from quantize import QuantLinear, parse_format, quantize_model, save_quantized, load_quantized
    layers = quantize_model(model, parse_format("int4-g32"))     # nn.Linear -> QuantLinear, in place

Reads <run>/sft/ when it holds a finished fine-tuned model (a LoRA adapter is merged first), else
<run>/pretrain/best.pt; tokens/ (validation windows for perplexity, training windows for calibration) and
data/tasks/sft_heldout.jsonl (exact match, for a fine-tuned model only). Writes <run>/quant/: model.pt (the
quantized checkpoint), outcome.json, quant.png, manifest.json.

## One number (the formulas and code live in kernels/quant_matmul.py; this file reuses them)
    symmetric    s = max|w| / qmax (qmax = 2^(b-1) - 1)     q = clamp(round(w / s), -qmax, qmax)        ŵ = q·s
    asymmetric   s = (max w - min w) / (2^b - 1)   z = round(-min w / s)   q = clamp(round(w/s) + z, 0, 2^b - 1)
                 ŵ = (q - z)·s    (min and max widened to include 0, so a 0 weight stays exactly 0)
Rounding to nearest moves each weight by at most s/2, and no weight is clipped (s comes from the max). For a
layer y = x·Ŵᵀ that bounds the error of every output exactly:
    |y_n - ŷ_n| = |Σ_k x_k (W_nk - Ŵ_nk)| ≤ Σ_k |x_k| · s(n, k) / 2      (what tests/test_07_quant.py checks)

## Who shares a scale: the tensor, an output channel, a group
The largest |w| of a set sets the step for every weight in it, so the typical error, ~s/√12 ∝ max|w| / qmax,
is large relative to a typical |w| when max|w| / mean|w| is large (an outlier).
    per tensor    one s for all N·K weights: one outlier coarsens the grid of the whole matrix;
    per channel   one s per output row n: a large row hurts only itself, and s_n factors out of the dot product
                  (y_n = s_n · Σ_k x_k q_nk): one multiply per output;
    per group     one s per G consecutive inputs k of a row: an outlier *input* feature (the same k in every row,
                  the pattern LLM weights show) is confined to one group per row. INT4 needs it: 15 levels are too
                  few for a whole row. It costs 2 bytes per G weights (G = 128: 0.016 bytes/weight).
`weight_stats` shows max|w| / mean|w| and the per-tensor vs per-channel error for every layer of the model.

## The formats (names for --compare)
    fp32, bf16, fp16   the float model cast (bf16 keeps fp32's range with 8 significant bits; fp16 more bits,
                       less range)
    int8               weights only, one scale per output channel; activations stay float
    w8a8               int8 weights and int8 activations with one scale per token, s_x[m] = max_k |x[m, k]| / 127:
                       y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] q_w[n, k], the sum in int32 (exact: |Σ| ≤ K·127²)
    int4-gG[-asym]     weights only, INT4 in groups of G = 32/64/128 along K, two codes per byte, fp16 scales
                       (-asym: and fp16 zero points)
    <any>-gptq         the same storage, codes chosen by GPTQ on calibration data (gptq.py) instead of rounding
A group size must divide in_features. The tiny model's SwiGLU hidden size is 8·128/3 rounded up to a multiple of
32, 352 (gpt.swiglu_hidden), which 64 and 128 do not divide: `--pad-groups` (the default) zero-pads such a layer's
K to the next multiple of G (the padded weights are exactly 0 and x gets matching zero features; the last group of
a row holds fewer real weights); --no-pad-groups makes it an error. Real models pick hidden sizes that are
multiples of 128 or 256 for this reason (Llama-2 7B: 11008 = 86·128).
Embeddings, norms and the LM head stay float by default (--targets picks the layers): the LM head shares its
matrix with the embedding here, and a lookup reads one row per token, so it gains little from fewer bits.

Interview questions it answers:
- Symmetric or asymmetric, per tensor, channel or group: what does each cost and buy? (sections above)
- Why do outliers hurt per-tensor scales? (the max sets the step for all; see max|w|/mean|w| in the table)
- Why can W8A8 scale activations per token but not per input channel? (a scale must be constant along the summed
  dimension k to factor out of Σ_k; per-channel activation outliers need SmoothQuant: move them into the weights)
- Why is the INT4 model slower than fp32 on a CPU here? (the CPU path is the readable reference: it dequantizes the
  whole weight on every call; the GPU kernel reads the int bytes and wins because decoding is memory-bound,
  bench_quant_decode.py)
- What must a quantized checkpoint hold to load back without re-quantizing? (the packed codes, scales, zero
  points, and per layer: bits, group size, true and padded in_features; `quantization` in model.pt)
- Why merge LoRA before quantizing? (a quantized layer keeps no float W for BA to be added to; merge, then round
  W + (α/r)BA once. QLoRA goes the other way: it trains the adapter on top of an already quantized base)
"""
import copy
import dataclasses
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "01_data"), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "04_pretrain"),
                str(REPO / "05_sft_lora"), str(REPO / "kernels")]
from common import (UserError, check_artifact, check_config, claim_output, command_line, option, parse_config,  # 01_data
                    pyplot, read_json, run_cli, run_lock, save_figure, staged_dir, write_json, write_manifest)
from bpe import BPETokenizer  # 02_tokenizer
from tokenizer_eval import format_table  # 02_tokenizer
from checkpoint_io import load_checkpoint, save_checkpoint  # 03_model
from devices import resolve_device  # 03_model
from gpt import GPT, config_from_dict  # 03_model
from batches import eval_starts, get_batch, load_shards  # 04_pretrain
from pretrain import evaluate  # 04_pretrain
from lora import DEFAULT_TARGETS, LoRALinear, matches, merge_lora  # 05_sft_lora
from metrics import perplexity  # 05_sft_lora
from sft import generate_answers, load_finetuned, score  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora
from quant_matmul import (QuantizedWeight, check_quant_settings, dequantize, quant_matmul, quantize,  # kernels
                          quantize_symmetric, symmetric_scale)

from gptq import HessianCollector, gptq_quantize, output_error  # 07_distill_quant (this folder)

FLOAT_FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_COMPARE = ["fp32", "bf16", "int8", "w8a8", "int4-g128", "int4-g32", "int4-g32-gptq"]
GOALS = {"int8": 1.0, "int4-g32": 5.0}          # issue 14: perplexity change ≤ 1 % (INT8), ≤ 5 % (INT4-g32)


# ----------------------------------------------------------------------------------------------------
# 1. Formats, and why the granularity of the scale matters
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSpec:
    """One format: a float dtype, or bits / group size / zero points / activation bits / how codes are chosen."""
    name: str
    bits: int = 0                  # 0 = a float format
    group_size: int | None = None  # INT4 only; INT8 has one scale per output channel
    symmetric: bool = True
    act_bits: int = 0              # 8 = W8A8
    method: str = "rtn"            # rtn (round to nearest) | gptq


def parse_format(name: str) -> QuantSpec:
    """'fp32' | 'bf16' | 'fp16' | 'int8' | 'w8a8' | 'int4-g<32|64|128>[-asym]', each INT one optionally + '-gptq'."""
    if name in FLOAT_FORMATS:
        return QuantSpec(name)
    m = re.fullmatch(r"(int8|w8a8|int4-g(\d+)(-asym)?)(-gptq)?", name)
    if not m:
        raise UserError(f"unknown format {name!r}; use fp32, bf16, fp16, int8, w8a8 or int4-g32/64/128, "
                        "with -asym (INT4 zero points) and/or -gptq, e.g. int4-g128-asym-gptq")
    method = "gptq" if m[4] else "rtn"
    if m[2] is None:
        return QuantSpec(name, 8, None, True, 8 if m[1] == "w8a8" else 0, method)
    check_quant_settings(4, int(m[2]), int(m[2]))
    return QuantSpec(name, 4, int(m[2]), m[3] is None, 0, method)


def format_name(bits, group_size, symmetric, act_bits, method) -> str:
    base = ("w8a8" if act_bits else "int8") if bits == 8 else f"int4-g{group_size}{'' if symmetric else '-asym'}"
    return base + ("-gptq" if method == "gptq" else "")


def fake_quantize(w, bits, per):
    """Ŵ (N, K) after symmetric round-to-nearest with one scale per `per`: "tensor", "channel" (a row of W) or
    a group size G (G consecutive inputs of a row). The same functions as the stored formats, any grouping."""
    N, K = w.shape
    sets = w.reshape(1, N * K) if per == "tensor" else w if per == "channel" else w.reshape(N, K // per, per)
    s = symmetric_scale(sets, bits)
    return (quantize_symmetric(sets, s, bits).float() * s.float()[..., None]).reshape(N, K)


def relative_error(w, w_hat) -> float:
    return float((w_hat - w.float()).norm() / w.float().norm())


@torch.no_grad()
def weight_stats(model, targets) -> list:
    """One row per target layer: max|w| / mean|w| and the relative error ‖Ŵ - W‖ / ‖W‖ per scale granularity."""
    rows = []
    for name in target_layers(model, targets):
        w = model.get_submodule(name).weight.detach().float()
        row = {"layer": name, "shape": list(w.shape), "max_over_mean": float(w.abs().max() / w.abs().mean())}
        for bits, per in ((8, "tensor"), (8, "channel"), (4, "channel"), (4, 32)):
            ok = per in ("tensor", "channel") or w.shape[1] % per == 0
            row[f"int{bits}_{per if isinstance(per, str) else f'g{per}'}"] = (
                relative_error(w, fake_quantize(w, bits, per)) if ok else None)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# 2. QuantLinear: the layer that stores codes and calls the kernel
# ----------------------------------------------------------------------------------------------------
def int8_matmul(a, b):
    """(M, K) int8 · ((N, K) int8)ᵀ -> (M, N) int32, exact. Where an int8 GEMM kernel goes: on CUDA,
    torch._int_mm (cuBLASLt's; it takes M > 16 and K, N multiples of 8), else the same sums in float64
    (exact while |Σ| < 2⁵³); on a CPU, plain int32 arithmetic."""
    if not a.is_cuda:
        return a.to(torch.int32) @ b.to(torch.int32).T
    if a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[0] % 8 == 0:
        return torch._int_mm(a, b.T)
    return (a.double() @ b.double().T).to(torch.int32)


def w8a8_matmul(x, qw: QuantizedWeight, bias=None):
    """y = x·Ŵᵀ (+ bias) with x quantized too, one scale per token (row of x): x (..., K) -> (..., N), x's dtype.

    The activation scale is computed on the fly and never stored, so it stays fp32 (no fp16 rounding).
    A fused kernel would quantize x, run the int8 GEMM and apply both scales in its epilogue in one pass."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    s_x = (x2.abs().amax(dim=-1) / 127).clamp(min=1e-12)                 # (M,)
    q_x = quantize_symmetric(x2, s_x, 8)                                 # (M, K) int8
    acc = int8_matmul(q_x, qw.qweight)                                   # (M, N) int32
    y = acc.float() * s_x[:, None] * qw.scales.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], qw.out_features)


class QuantLinear(nn.Module):
    """y = x·Ŵᵀ + b with Ŵ stored as packed integer codes + fp16 scales (a kernels/quant_matmul.QuantizedWeight).

    Buffers (what the checkpoint holds): qweight int8 (N, K) or uint8 (N, K/2), scales fp16, zeros fp16 or
    absent, bias or absent. forward calls quant_matmul: the Triton kernel on CUDA, dequantize-then-matmul
    elsewhere; act_bits = 8 quantizes x per token too (W8A8). in_features < the stored K when K was padded."""

    def __init__(self, qw: QuantizedWeight, in_features: int, bias=None, act_bits=0):
        super().__init__()
        if act_bits and qw.bits != 8:
            raise UserError("int8 activations (W8A8) need int8 weights; use --bits 8")
        self.in_features, self.out_features = in_features, qw.out_features
        self.bits, self.group_size, self.act_bits, self.padded_in = qw.bits, qw.group_size, act_bits, qw.in_features
        self.register_buffer("qweight", qw.qweight)
        self.register_buffer("scales", qw.scales)
        self.register_buffer("zeros", qw.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def empty(cls, meta: dict, device="cpu"):
        """A layer of the shapes `meta` describes (a checkpoint's layer entry), to load the saved buffers into."""
        N, Kp, G, bits = meta["out_features"], meta["padded_in"], meta["group_size"], meta["bits"]
        codes = torch.zeros(N, Kp, dtype=torch.int8) if bits == 8 else torch.zeros(N, Kp // 2, dtype=torch.uint8)
        groups = (N,) if bits == 8 else (N, Kp // G)
        zeros = None if meta["symmetric"] else torch.zeros(groups, dtype=torch.float16)
        qw = QuantizedWeight(codes, torch.ones(groups, dtype=torch.float16), zeros, bits, G, Kp)
        bias = torch.zeros(N) if meta["bias"] else None
        return cls(qw, meta["in_features"], bias, meta["act_bits"]).to(device)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.padded_in)

    def meta(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.zeros is None,
                "act_bits": self.act_bits, "in_features": self.in_features, "padded_in": self.padded_in,
                "out_features": self.out_features, "bias": self.bias is not None}

    def forward(self, x):
        if self.padded_in != self.in_features:                  # zero features for the zero-padded columns
            x = F.pad(x, (0, self.padded_in - self.in_features))
        if self.act_bits:
            return w8a8_matmul(x, self.quantized_weight(), self.bias)
        return quant_matmul(x, self.quantized_weight(), self.bias)

    def _apply(self, fn, recurse=True):
        """model.to(torch.bfloat16) casts every floating tensor; the fp16 scales and zero points are part of the
        stored format (fp16 -> bf16 would drop 3 bits of each), so they follow the device but keep their dtype."""
        kept = {n: self._buffers.pop(n) for n in ("scales", "zeros")}
        super()._apply(fn, recurse)
        for n, t in kept.items():
            self._buffers[n] = None if t is None else t.to(self.qweight.device)
        return self

    def extra_repr(self):
        fmt = f"int{self.bits}" + (f" g{self.group_size}" if self.group_size else " per-channel")
        pad = f" (padded to {self.padded_in})" if self.padded_in != self.in_features else ""
        return f"in={self.in_features}{pad}, out={self.out_features}, {fmt}{', int8 activations' if self.act_bits else ''}"


# ----------------------------------------------------------------------------------------------------
# 3. Swapping layers in a model, with round-to-nearest or GPTQ
# ----------------------------------------------------------------------------------------------------
def check_no_unmerged_lora(model):
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear) and set(m.lora_A) - set(m.merged):
            raise UserError(f"{name} has LoRA adapter(s) {sorted(set(m.lora_A) - set(m.merged))} not merged into its "
                            "weight; merge first (lora.merge_lora, or `python 05_sft_lora/lora.py --base ... --adapter "
                            "... --out merged.pt`): a quantized layer has no float weight for an adapter to add to")


def unwrap_merged_lora(model):
    """A LoRALinear whose adapters are all merged is a plain linear layer: make it one, so the state dict has
    exactly a GPT's keys (no lora_A/lora_B left for a loader to trip over)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            linear.weight, linear.bias = m.weight, m.bias
            replace_module(model, name, linear)


def target_layers(model, targets) -> list:
    """Names of the linear layers (nn.Linear, or LoRALinear with merged adapters) matching `targets` (lora.matches)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and matches(n, targets)]
    if not names:
        have = sorted({re.sub(r"\.\d+\.", ".*.", n) for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"--targets {','.join(targets)} match no linear layer; the model has {', '.join(have)}")
    return names


def padded_in_features(name, K, spec: QuantSpec, pad_groups: bool) -> int:
    """K itself, or with pad_groups the next multiple of the group size; UserError when the group cannot fit."""
    G = spec.group_size if spec.bits == 4 else None
    if G and K % G and pad_groups:
        return G * math.ceil(K / G)
    try:
        check_quant_settings(spec.bits, G, K)
    except UserError as e:
        raise UserError(f"{name}: {e}{', or --pad-groups to zero-pad K' if G and K % G else ''}") from None
    return K


def quantize_weight(weight, spec: QuantSpec, padded_in: int, H=None, damp=0.01) -> QuantizedWeight:
    """Round-to-nearest (H None) or GPTQ with H; zero columns appended up to padded_in (rows of H too)."""
    W = weight.detach().float()
    W = F.pad(W, (0, padded_in - W.shape[1]))
    G = spec.group_size if spec.bits == 4 else None
    if H is None:
        return quantize(W, spec.bits, G, spec.symmetric)
    H = F.pad(H, (0, padded_in - H.shape[0], 0, padded_in - H.shape[0]))    # padded inputs: "dead", weight 0
    return gptq_quantize(W, H, spec.bits, G, spec.symmetric, damp)


def calibration_groups(names) -> list:
    """Layers quantized together, after one calibration pass: those of one numbered block ('blocks.3.attn.wq',
    'blocks.3.ffn.down' -> 'blocks.3'), in model order; a layer outside numbered blocks is a group alone."""
    groups = {}
    for n in names:
        m = re.match(r"(.*?\.\d+)\.", n)
        groups.setdefault(m[1] if m else n, []).append(n)
    return list(groups.values())


def replace_module(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def quantize_model(model, spec: QuantSpec, targets=DEFAULT_TARGETS, pad_groups=True, calibration=(), damp=0.01):
    """Replace every target linear layer by a QuantLinear of format `spec`, in place; returns {name: meta}.

    GPTQ (spec.method "gptq") goes block by block: one pass of the `calibration` token batches (B, T) through
    the model, whose earlier blocks are already quantized, collects each layer's H = 2/n Σ x xᵀ on the inputs
    it will really see; the block's layers are then quantized. meta also records the layer's relative output
    error on the calibration inputs for RTN and GPTQ (gptq.output_error)."""
    check_no_unmerged_lora(model)
    unwrap_merged_lora(model)
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise UserError("the model is already quantized; quantize the float model it came from")
    if spec.bits not in (4, 8):
        raise UserError(f"{spec.name} is not an integer format; cast float formats with model.to(dtype)")
    names = target_layers(model, targets)
    padded = {n: padded_in_features(n, model.get_submodule(n).in_features, spec, pad_groups) for n in names}
    calibration = list(calibration)
    if spec.method == "gptq" and not calibration:
        raise UserError("GPTQ needs calibration batches (token windows of real text); pass calibration=...")
    meta = {}
    for group in calibration_groups(names) if spec.method == "gptq" else [names]:
        H = {}
        if spec.method == "gptq":
            with HessianCollector({n: model.get_submodule(n) for n in group}) as hc:
                for x in calibration:
                    model(x)
            H = hc.hessians()
        for n in group:
            old = model.get_submodule(n)
            qw = quantize_weight(old.weight, spec, padded[n], H.get(n), damp)
            new = QuantLinear(qw, old.in_features, old.bias, spec.act_bits).to(old.weight.device)
            replace_module(model, n, new)
            meta[n] = new.meta()
            if n in H:
                W = F.pad(old.weight.detach().float(), (0, padded[n] - old.in_features))
                Hp = F.pad(H[n], (0, padded[n] - old.in_features) * 2)
                rtn = quantize_weight(W, dataclasses.replace(spec, method="rtn"), padded[n])
                meta[n]["calib_error_rtn"] = output_error(W, dequantize(rtn), Hp)
                meta[n]["calib_error_gptq"] = output_error(W, dequantize(qw), Hp)
    return meta



# ----------------------------------------------------------------------------------------------------
# 4. The quantized checkpoint: 03's format with the packed tensors and the quantization config
# ----------------------------------------------------------------------------------------------------
def save_quantized(path, model, spec: QuantSpec, layers: dict, **extra):
    """checkpoint_io's dict: "config" (the GPTConfig), "model" (the state dict: qweight/scales/zeros/bias
    buffers in place of each quantized layer's weight), and "quantization" (the format and every layer's meta),
    which is all load_quantized needs to rebuild the layers: nothing is re-quantized on loading."""
    save_checkpoint(path, asdict(model.cfg), model.state_dict(), quantization={**asdict(spec), "layers": layers},
                    **extra)


def load_weights(model, state: dict, path):
    """model.load_state_dict(state), refused in one line when one side is quantized and the other float."""
    in_model = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    in_file = sorted(k.removesuffix(".qweight") for k in state if k.endswith(".qweight"))
    if in_file and not in_model:
        raise UserError(f"{path} holds a quantized model ({len(in_file)} quantized layers); a float model cannot "
                        "load it: use quantize.load_quantized")
    if in_model and not in_file:
        raise UserError(f"{path} holds float weights; a quantized model cannot load them: load them into a float "
                        "GPT (GPT.from_checkpoint) and quantize that")
    if in_model != in_file:
        raise UserError(f"{path} quantizes other layers than this model ({sorted(set(in_model) ^ set(in_file))[:3]} "
                        "differ); load it with quantize.load_quantized, which builds the layers it describes")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the model ({str(e).splitlines()[1].strip()}); the file was "
                        "written for another config") from None


def load_quantized(path, device="cpu"):
    """(model, quantization dict) of a checkpoint written by save_quantized: a GPT of the saved config whose
    quantized layers are rebuilt as QuantLinear and filled with the saved codes and scales."""
    ckpt = load_checkpoint(path, map_location=device)
    q = ckpt.get("quantization")
    if not isinstance(q, dict):
        raise UserError(f"{path}: a float checkpoint, not a quantized one; quantize it first (`python "
                        f"07_distill_quant/quantize.py --run runs/<name> --ckpt {path}`) or load it with GPT.from_checkpoint")
    model = GPT(config_from_dict(ckpt["config"], path))
    for name, meta in q["layers"].items():
        replace_module(model, name, QuantLinear.empty(meta))
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval(), q


def load_float_model(path, device="cpu"):
    """A float GPT from a plain model checkpoint; a quantized model or a PEFT adapter file is refused."""
    ckpt = load_checkpoint(path)
    if "quantization" in ckpt:
        raise UserError(f"{path} holds a quantized model ({ckpt['quantization'].get('name')}); it cannot be loaded "
                        "as a float model or quantized again: pass the float checkpoint it was made from")
    if "peft" in ckpt:
        raise UserError(f"{path} holds a {ckpt['peft'].get('kind')} adapter, not a model; merge first: `python "
                        f"05_sft_lora/lora.py --base <its base checkpoint> --adapter {path} --out "
                        f"{Path(path).parent / 'merged.pt'}`, then pass --ckpt {Path(path).parent / 'merged.pt'}")
    return GPT.from_checkpoint(path, map_location=device)


# ----------------------------------------------------------------------------------------------------
# 5. Measuring a variant: bytes, perplexity, exact match, tokens/s
# ----------------------------------------------------------------------------------------------------
def model_bytes(model) -> int:
    """Bytes of every parameter and buffer, a shared (tied) tensor counted once: the weights' memory."""
    sizes = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(sizes.values())


@dataclass
class EvalData:
    val: object                    # validation token shard (04's memmap)
    calibration: list              # GPTQ: (B, T) token batches from the training shard
    tok: BPETokenizer
    heldout: list                  # conversations for exact match; [] = not measured
    windows: int
    max_new_tokens: int
    device: str


def build_variant(float_model, spec: QuantSpec, cfg, data: EvalData):
    """(model, layer metas, seconds): a copy of the float model cast or quantized to `spec`."""
    t0 = time.perf_counter()
    model = copy.deepcopy(float_model)
    if spec.bits == 0:
        return model.to(FLOAT_FORMATS[spec.name]).eval(), {}, time.perf_counter() - t0
    layers = quantize_model(model, spec, cfg.targets, cfg.pad_groups, data.calibration if spec.method == "gptq" else (),
                            cfg.damp)
    return model.eval(), layers, time.perf_counter() - t0


@torch.no_grad()
def measure(model, spec: QuantSpec, data: EvalData) -> dict:
    """Size, validation perplexity on 04's fixed windows, and (for a chat model) held-out exact match."""
    T = model.cfg.block_size
    loss = evaluate(model, data.val, T, data.windows, 16, data.device)   # token mean over the fixed windows
    n = data.windows * T
    row = {"format": spec.name, "bytes": model_bytes(model), "val_ppl": perplexity(loss * n, n)}
    if data.heldout:
        answers = generate_answers(model, data.tok, [r["messages"] for r in data.heldout], data.max_new_tokens,
                                   data.device)
        row.update({k: v for k, v in score(answers, data.heldout).items() if k != "n"})
    return row


@torch.no_grad()
def tokens_per_second(model, prompt, n_new) -> float:
    """Greedy generation with 03's KV cache: new tokens per wall-clock second (batch of len(prompt))."""
    if prompt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, n_new, temperature=0)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return prompt.shape[0] * n_new / (time.perf_counter() - t0)


def compare_formats(float_model, specs, cfg, data: EvalData, rounds=3):
    """(rows, models, layer metas) for each format; tokens/s is the best of `rounds` passes over all the models,
    interleaved, so a busy spell of a shared machine hits every format alike."""
    rows, models, metas = [], {}, {}
    for spec in specs:
        model, layers, seconds = build_variant(float_model, spec, cfg, data)
        row = {**measure(model, spec, data), "quantize_s": seconds}
        if layers and "calib_error_gptq" in next(iter(layers.values())):
            for key in ("calib_error_rtn", "calib_error_gptq"):
                row[key] = sum(m[key] for m in layers.values()) / len(layers)
        rows.append(row)
        models[spec.name], metas[spec.name] = model, layers
        print(f"{spec.name:>14}: perplexity {row['val_ppl']:.4f}"
              + (f", exact match {row['exact_match']:.3f}" if "exact_match" in row else ""), flush=True)
    T = float_model.cfg.block_size
    prompt = torch.as_tensor(data.val[:16].astype("int64"), device=data.device)[None]
    n_new = min(cfg.gen_tokens, T - prompt.shape[1])
    for r in range(rounds):
        for row in rows:
            row["tok_s"] = max(row.get("tok_s", 0.0), tokens_per_second(models[row["format"]], prompt, n_new))
    base = next((r for r in rows if r["format"] == "fp32"), rows[0])
    for row in rows:
        row["vs_fp32_bytes"] = row["bytes"] / base["bytes"]
        row["ppl_change_pct"] = 100 * (row["val_ppl"] / base["val_ppl"] - 1)
    return rows, models, metas


def goal_lines(rows) -> list:
    by_name = {r["format"]: r for r in rows}
    lines = [f"goal {name} perplexity change <= {limit:g}%: {by_name[name]['ppl_change_pct']:+.2f}% -> "
             f"{'met' if by_name[name]['ppl_change_pct'] <= limit else 'NOT met'}"
             for name, limit in GOALS.items() if name in by_name and "fp32" in by_name]
    return lines


def plot_outcome(rows, stats, path, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = [r["format"] for r in rows]
    axes[0].bar(names, [r["ppl_change_pct"] for r in rows], color="tab:blue")
    for name, limit in GOALS.items():
        axes[0].axhline(limit, ls="--", lw=0.8, color="gray")
        axes[0].text(len(names) - 0.5, limit, f"goal {name}", fontsize=7, ha="right", va="bottom")
    axes[0].set(ylabel="validation perplexity change vs fp32 (%)", title=title)
    axes[1].bar(names, [r["bytes"] / 2**20 for r in rows], color="tab:green")
    axes[1].set(ylabel="MiB of weights (parameters + buffers)", title="model size")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    ratio = [s["max_over_mean"] for s in stats]
    axes[2].scatter(ratio, [s["int8_tensor"] for s in stats], label="INT8, one scale per tensor")
    axes[2].scatter(ratio, [s["int8_channel"] for s in stats], label="INT8, one scale per output channel")
    axes[2].set(xlabel="max|w| / mean|w| of the layer", ylabel="‖Ŵ - W‖ / ‖W‖", yscale="log",
                title="why outliers hurt a per-tensor scale")
    axes[2].legend(fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------
# 6. Command line
# ----------------------------------------------------------------------------------------------------
@dataclass
class QuantConfig:
    run: str = option("", "run folder runs/<name> with pretrain/ (or sft/), tokens/, tokenizer/")
    ckpt: str = option("", "float checkpoint to quantize; empty = <run>/sft when it is a finished run, "
                           "else <run>/pretrain/best.pt")
    out: str = option("", "output folder; empty = <run>/quant")
    load: str = option("", "only evaluate this saved quantized checkpoint (perplexity, tokens/s); writes nothing")
    bits: int = option(4, "bits per weight of the saved model: 4 (group-wise) or 8 (per output channel)")
    group_size: int = option(32, "INT4: weights sharing one scale along in_features: 32, 64 or 128")
    symmetric: bool = option(True, "symmetric codes; --no-symmetric: INT4 with fp16 zero points")
    activation_bits: int = option(0, "0 = weight-only; 8 = W8A8 (int8 activations, one scale per token; --bits 8)")
    method: str = option("gptq", "how codes are chosen: round to nearest, or GPTQ on calibration data",
                         choices=("rtn", "gptq"))
    targets: list = option(DEFAULT_TARGETS, "module-name patterns of the layers to quantize", sep=",")
    pad_groups: bool = option(True, "zero-pad in_features to a multiple of the group size when it does not "
                                    "divide (--no-pad-groups: an error)")
    compare: list = option(DEFAULT_COMPARE, "formats measured side by side (empty = only the saved one)", sep=",")
    calib_windows: int = option(32, "GPTQ: training windows of block_size tokens for the Hessians", min=1)
    damp: float = option(0.01, "GPTQ: fraction of mean(diag H) added to H's diagonal", min=0.0)
    val_windows: int = option(64, "validation windows of block_size tokens for perplexity", min=1)
    eval_limit: int = option(100, "held-out conversations answered greedily for exact match (0 = skip)", min=0)
    max_new_tokens: int = option(24, "longest generated answer", min=1)
    gen_tokens: int = option(64, "new tokens (batch 1, greedy) timed for tokens/s", min=1)
    seed: int = option(1337, "seed (nothing here is random but ties in generation)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


def check_quant_config(cfg: QuantConfig):
    """(the saved format, the compared formats), or a UserError for a setting that cannot work."""
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder holding pretrain/ and tokens/)")
    check_quant_settings(cfg.bits, cfg.group_size if cfg.bits == 4 else None, cfg.group_size)
    if cfg.activation_bits not in (0, 8):
        raise UserError(f"--activation-bits {cfg.activation_bits}: use 0 (weight-only) or 8 (W8A8)")
    if cfg.activation_bits and cfg.bits != 8:
        raise UserError("--activation-bits 8 (W8A8) needs --bits 8")
    if cfg.bits == 8 and not cfg.symmetric:
        raise UserError("INT8 here is symmetric only; drop --no-symmetric, or use --bits 4 for zero points")
    if not cfg.targets:
        raise UserError("--targets is empty; name the layers to quantize, e.g. wq,wk,wv,wo,up,gate,down")
    spec = parse_format(format_name(cfg.bits, cfg.group_size, cfg.symmetric, cfg.activation_bits, cfg.method))
    return spec, [parse_format(name) for name in dict.fromkeys(cfg.compare)]


def load_source(cfg, run: Path, device):
    """(float model, tokenizer, checkpoint path, folder read, is_chat): --ckpt, else the run's SFT model, else
    its pretrained one. A LoRA SFT run is merged (exact); prefix/adapter PEFT cannot be, so the base is used."""
    tok_dir = run / "tokenizer"
    check_artifact(tok_dir, made_by=f"python 02_tokenizer/bpe.py --data {run}")
    if cfg.ckpt:
        path = Path(cfg.ckpt)
        manifest = check_artifact(path.parent, made_by=f"the stage that wrote {path}")
        return load_float_model(path, device), BPETokenizer.load(tok_dir), path, path.parent, \
            manifest.get("stage") == "05_sft_lora"
    sft_dir = run / "sft"
    if sft_dir.is_dir():
        model, tok, peft = load_finetuned(sft_dir, device)
        if peft is None or isinstance(peft, str):
            if isinstance(peft, str):
                merge_lora(model)
                print(f"{sft_dir}: merged LoRA adapter {peft!r} into the weights (W += (α/r)·B·A) before quantizing")
            return model, tok, sft_dir / ("ckpt.pt" if peft is None else "adapter.pt"), sft_dir, True
        print(f"{sft_dir}: a prefix/adapter run cannot be merged into the weights; quantizing the pretrained base")
    pre = run / "pretrain"
    check_artifact(pre, made_by=f"python 04_pretrain/pretrain.py --data {run}")
    path = pre / "best.pt" if (pre / "best.pt").is_file() else pre / "ckpt.pt"
    return load_float_model(path, device), BPETokenizer.load(tok_dir), path, pre, False


def eval_data(cfg, run: Path, model, tok, chat: bool, device) -> EvalData:
    T = model.cfg.block_size
    train, val, _ = load_shards(run, T)
    starts = eval_starts(len(train), T, cfg.calib_windows)
    calibration = [get_batch(train, starts[i:i + 16], T, device)[0] for i in range(0, len(starts), 16)]
    heldout = []
    if chat and cfg.eval_limit:
        check_artifact(run / "data", made_by=f"python 01_data/prepare.py --out {run}")
        heldout = read_conversations(run / "data" / "tasks" / "sft_heldout.jsonl")[:cfg.eval_limit]
    return EvalData(val, calibration, tok, heldout, cfg.val_windows, cfg.max_new_tokens, device)


def machine(device) -> str:
    import os
    import platform
    where = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    return f"{platform.node()} ({where}), torch {torch.__version__}"


def show_table(rows, stats):
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    print(format_table([{"layer": s["layer"], "max/mean": fmt(s["max_over_mean"], ".1f"),
                         **{k: fmt(s[k], ".4f") for k in ("int8_tensor", "int8_channel", "int4_channel", "int4_g32")}}
                        for s in stats], ["layer", "max/mean", "int8_tensor", "int8_channel", "int4_channel", "int4_g32"]))
    print()
    print(format_table([{"format": r["format"], "MiB": fmt(r["bytes"] / 2**20, ".3f"), "x fp32": fmt(r["vs_fp32_bytes"], ".3f"),
                         "val ppl": fmt(r["val_ppl"], ".4f"), "change": fmt(r["ppl_change_pct"], "+.2f") + "%",
                         "exact match": fmt(r.get("exact_match"), ".3f"), "answer acc": fmt(r.get("answer_acc"), ".3f"),
                         "tok/s": fmt(r["tok_s"], ".0f")} for r in rows],
                       ["format", "MiB", "x fp32", "val ppl", "change", "exact match", "answer acc", "tok/s"]))


def evaluate_saved(cfg, device):
    """--load: rebuild a saved quantized model (no re-quantizing), print its perplexity and tokens/s."""
    path = Path(cfg.load)
    check_artifact(path.parent, made_by=f"python 07_distill_quant/quantize.py --run {cfg.run}")
    model, q = load_quantized(path, device)
    data = EvalData(load_shards(Path(cfg.run), model.cfg.block_size)[1], [], None, [], cfg.val_windows,
                    cfg.max_new_tokens, device)
    row = measure(model, parse_format(q["name"]), data)
    prompt = torch.as_tensor(data.val[:16].astype("int64"), device=device)[None]
    tok_s = tokens_per_second(model, prompt, min(cfg.gen_tokens, model.cfg.block_size - 16))
    print(f"{path}: {q['name']}, {len(q['layers'])} quantized layers, {row['bytes']:,} bytes, "
          f"val perplexity {row['val_ppl']:.4f}, {tok_s:.0f} tokens/s ({device})")


def main(argv=None):
    cfg, _ = parse_config(QuantConfig, argv, doc=__doc__)
    spec, compare = check_quant_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.load:
        return evaluate_saved(cfg, device)
    run = Path(cfg.run)
    model, tok, source, source_dir, chat = load_source(cfg, run, device)
    model.eval()
    specs = [s for s in dict.fromkeys([*compare, spec]) if s.bits]        # every shape check before any work
    for s in specs:
        for name in target_layers(model, cfg.targets):
            padded_in_features(name, model.get_submodule(name).in_features, s, cfg.pad_groups)
    out = Path(cfg.out) if cfg.out else run / "quant"
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        data = eval_data(cfg, run, model, tok, chat, device)
        stats = weight_stats(model, cfg.targets)
        print(f"{source}: {model_bytes(model):,} bytes; measuring {', '.join(s.name for s in dict.fromkeys([*compare, spec]))}"
              + ("" if chat else " (a pretrained model: perplexity only, no exact match)"), flush=True)
        rows, models, metas = compare_formats(model, list(dict.fromkeys([*compare, spec])), cfg, data)
        saved = models[spec.name]
        with staged_dir(out) as tmp:
            save_quantized(tmp / "model.pt", saved, spec, metas[spec.name],
                           tokenizer=str(Path("..") / "tokenizer"), source=str(source))
            reloaded, _ = load_quantized(tmp / "model.pt", device)        # the format must load back as it is
            x = data.calibration[0][:2]
            if not torch.equal(saved(x)[0], reloaded(x)[0]):
                raise RuntimeError("the reloaded quantized model computes other logits than the saved one")
            goals = goal_lines(rows)
            outcome = {"source": str(source), "chat_model": chat, "saved_format": spec.name, "rows": rows,
                       "goals": goals, "weight_stats": stats, "layers": metas[spec.name], "device": device,
                       "machine": machine(device), "date": time.strftime("%Y-%m-%d"),
                       "exact_match": "measured on the held-out task set" if chat else
                                      "not measured: no finished SFT run, the model is a pretrained one"}
            write_json(tmp / "outcome.json", outcome)
            plot_outcome(rows, stats, tmp / "quant.png", f"{source} (saved: {spec.name})")
            write_manifest(tmp, stage="07_quantize", command=command_line(__file__, argv), config=asdict(cfg),
                           inputs=[source_dir, run / "tokens", run / "tokenizer", *([run / "data"] if chat else [])])
    show_table(rows, stats)
    for line in goals:
        print(line)
    print(f"reloaded model.pt without re-quantizing: identical logits; wrote {out}/ (model.pt "
          f"{(out / 'model.pt').stat().st_size:,} bytes)")
    return outcome


if __name__ == "__main__":
    run_cli(main)
