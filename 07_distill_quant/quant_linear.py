"""QuantLinear: a linear layer that stores INT8 / INT4 codes, how it replaces nn.Linear in a model, and the
quantized checkpoint that loads back without re-quantizing.

    from quant_linear import parse_format, quantize_model, save_quantized, load_quantized
    layers = quantize_model(model, parse_format("int4-g32"))            # nn.Linear -> QuantLinear, in place
    layers = quantize_model(model, parse_format("int4-g32-gptq"), calibration=[x1, x2])   # GPTQ (gptq.py)
    save_quantized("model.pt", model, parse_format("int4-g32"), layers)
    model, q = load_quantized("model.pt")                                # rebuilt from the codes, as stored

The formulas of the stored formats (symmetric / asymmetric codes, packing two INT4 per byte, fp16 scales) and the
fused Triton kernel live in kernels/quant_matmul.py; this file is the model side. quantize.py measures them.

## The formats (the names --compare takes)
    fp32, bf16, fp16   the float model cast (bf16 keeps fp32's range with 8 significant bits; fp16 more bits,
                       less range)
    int8               weights only, one scale per output channel; activations stay float
    w8a8               int8 weights and int8 activations with one scale per token, s_x[m] = max_k |x[m, k]| / 127:
                       y[m, n] = s_x[m] · s_w[n] · Σ_k q_x[m, k] q_w[n, k], the sum in int32 (exact: |Σ| ≤ K·127²)
    int4-gG[-asym]     weights only, INT4 in groups of G = 32/64/128 along K, two codes per byte, fp16 scales
                       (-asym: and fp16 zero points)
    <any>-gptq         the same storage, codes chosen by GPTQ on calibration data (gptq.py) instead of rounding
A group size must divide in_features. The tiny model's SwiGLU hidden size is 8·128/3 rounded up to a multiple of
32, 352 (gpt.swiglu_hidden), which 64 and 128 do not divide: pad_groups (the default) zero-pads such a layer's K
to the next multiple of G (the padded weights are exactly 0 and x gets matching zero features; the last group of
a row holds fewer real weights); pad_groups=False makes it an error. Real models pick hidden sizes that are
multiples of 128 or 256 for this reason (Llama-2 7B: 11008 = 86·128).
Embeddings, norms and the LM head stay float by default (targets pick the layers by module-name pattern): the LM
head shares its matrix with the embedding here, and a lookup reads one row per token.

Interview questions it answers:
- Why can W8A8 scale activations per token but not per input channel? (a scale must be constant along the summed
  dimension k to factor out of Σ_k; per-channel activation outliers need SmoothQuant: move them into the weights)
- Why accumulate int8 products in int32? (a product is ≤ 127² < 2¹⁴; K of them need 14 + log2 K bits, exact in
  int32 for K < 2¹⁷; fp16 accumulation would round)
- What must a quantized checkpoint hold to load back without re-quantizing? (the packed codes, scales, zero
  points, and per layer: bits, group size, true and padded in_features; `quantization` in model.pt)
- Why merge LoRA before quantizing? (a quantized layer keeps no float W for BA to be added to; merge, then round
  W + (α/r)BA once. QLoRA goes the other way: it trains the adapter on top of an already quantized base)
"""

import dataclasses
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora"), str(REPO / "kernels")]
from common.cli import UserError
from checkpoint_io import load_checkpoint, save_checkpoint  # 03_model
from gpt import GPT, config_from_dict  # 03_model
from lora import DEFAULT_TARGETS, LoRALinear, matches  # 05_sft_lora
from quant_matmul import (
    QuantizedWeight,
    check_quant_settings,
    dequantize,
    quant_matmul,
    quantize,
    quantize_symmetric,
)  # kernels

from gptq import HessianCollector, gptq_quantize, output_error  # 07_distill_quant (this folder)

FLOAT_FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------
# 1. Formats
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSpec:
    """One format: a float dtype, or bits / group size / zero points / activation bits / how codes are chosen."""

    name: str
    bits: int = 0  # 0 = a float format
    group_size: int | None = None  # INT4 only; INT8 has one scale per output channel
    symmetric: bool = True
    act_bits: int = 0  # 8 = W8A8
    method: str = "rtn"  # rtn (round to nearest) | gptq


def parse_format(name: str) -> QuantSpec:
    """'fp32' | 'bf16' | 'fp16' | 'int8' | 'w8a8' | 'int4-g<32|64|128>[-asym]', each INT one optionally + '-gptq'."""
    if name in FLOAT_FORMATS:
        return QuantSpec(name)
    m = re.fullmatch(r"(int8|w8a8|int4-g(\d+)(-asym)?)(-gptq)?", name)
    if not m:
        raise UserError(
            f"unknown format {name!r}; use fp32, bf16, fp16, int8, w8a8 or int4-g32/64/128, "
            "with -asym (INT4 zero points) and/or -gptq, e.g. int4-g128-asym-gptq"
        )
    method = "gptq" if m[4] else "rtn"
    if m[2] is None:
        return QuantSpec(name, 8, None, True, 8 if m[1] == "w8a8" else 0, method)
    check_quant_settings(4, int(m[2]), int(m[2]))
    return QuantSpec(name, 4, int(m[2]), m[3] is None, 0, method)


def format_name(bits, group_size, symmetric, act_bits, method) -> str:
    base = (
        ("w8a8" if act_bits else "int8") if bits == 8 else f"int4-g{group_size}{'' if symmetric else '-asym'}"
    )
    return base + ("-gptq" if method == "gptq" else "")


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
    # >>> exercise: per-token scale s_x = max_k |x| / 127, int8 codes of x, int32 Σ_k q_x q_w, then both scales
    x2 = x.reshape(-1, x.shape[-1]).float()  # (M, K)
    s_x = (x2.abs().amax(dim=-1) / 127).clamp(min=1e-12)  # (M,)
    q_x = quantize_symmetric(x2, s_x, 8)  # (M, K) int8
    acc = int8_matmul(q_x, qw.qweight)  # (M, N) int32
    y = acc.float() * s_x[:, None] * qw.scales.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], qw.out_features)
    # <<< exercise


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
        self.bits, self.group_size, self.act_bits, self.padded_in = (
            qw.bits,
            qw.group_size,
            act_bits,
            qw.in_features,
        )
        self.register_buffer("qweight", qw.qweight)
        self.register_buffer("scales", qw.scales)
        self.register_buffer("zeros", qw.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def empty(cls, meta: dict, device="cpu"):
        """A layer of the shapes `meta` describes (a checkpoint's layer entry), to load the saved buffers into."""
        N, Kp, G, bits = meta["out_features"], meta["padded_in"], meta["group_size"], meta["bits"]
        codes = (
            torch.zeros(N, Kp, dtype=torch.int8) if bits == 8 else torch.zeros(N, Kp // 2, dtype=torch.uint8)
        )
        groups = (N,) if bits == 8 else (N, Kp // G)
        zeros = None if meta["symmetric"] else torch.zeros(groups, dtype=torch.float16)
        qw = QuantizedWeight(codes, torch.ones(groups, dtype=torch.float16), zeros, bits, G, Kp)
        bias = torch.zeros(N) if meta["bias"] else None
        return cls(qw, meta["in_features"], bias, meta["act_bits"]).to(device)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(
            self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.padded_in
        )

    def meta(self) -> dict:
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.zeros is None,
            "act_bits": self.act_bits,
            "in_features": self.in_features,
            "padded_in": self.padded_in,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }

    def forward(self, x):
        if self.padded_in != self.in_features:  # zero features for the zero-padded columns
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
            raise UserError(
                f"{name} has LoRA adapter(s) {sorted(set(m.lora_A) - set(m.merged))} not merged into its "
                "weight; merge first (lora.merge_lora, or `python 05_sft_lora/lora.py --base ... --adapter "
                "... --out merged.pt`): a quantized layer has no float weight for an adapter to add to"
            )


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
    names = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and matches(n, targets)
    ]
    if not names:
        have = sorted(
            {re.sub(r"\.\d+\.", ".*.", n) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise UserError(
            f"--targets {','.join(targets)} match no linear layer; the model has {', '.join(have)}"
        )
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
    H = F.pad(H, (0, padded_in - H.shape[0], 0, padded_in - H.shape[0]))  # padded inputs: "dead", weight 0
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
def quantize_model(
    model, spec: QuantSpec, targets=DEFAULT_TARGETS, pad_groups=True, calibration=(), damp=0.01
):
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
    save_checkpoint(
        path, asdict(model.cfg), model.state_dict(), quantization={**asdict(spec), "layers": layers}, **extra
    )


def load_weights(model, state: dict, path):
    """model.load_state_dict(state), refused in one line when one side is quantized and the other float."""
    in_model = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    in_file = sorted(k.removesuffix(".qweight") for k in state if k.endswith(".qweight"))
    if in_file and not in_model:
        raise UserError(
            f"{path} holds a quantized model ({len(in_file)} quantized layers); a float model cannot "
            "load it: use quantize.load_quantized"
        )
    if in_model and not in_file:
        raise UserError(
            f"{path} holds float weights; a quantized model cannot load them: load them into a float "
            "GPT (GPT.from_checkpoint) and quantize that"
        )
    if in_model != in_file:
        raise UserError(
            f"{path} quantizes other layers than this model ({sorted(set(in_model) ^ set(in_file))[:3]} "
            "differ); load it with quantize.load_quantized, which builds the layers it describes"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"{path}: weights do not fit the model ({str(e).splitlines()[1].strip()}); the file was "
            "written for another config"
        ) from None


def load_quantized(path, device="cpu"):
    """(model, quantization dict) of a checkpoint written by save_quantized: a GPT of the saved config whose
    quantized layers are rebuilt as QuantLinear and filled with the saved codes and scales."""
    ckpt = load_checkpoint(path, map_location=device)
    q = ckpt.get("quantization")
    if not isinstance(q, dict):
        raise UserError(
            f"{path}: a float checkpoint, not a quantized one; quantize it first (`python "
            f"07_distill_quant/quantize.py --run runs/<name> --ckpt {path}`) or load it with GPT.from_checkpoint"
        )
    model = GPT(config_from_dict(ckpt["config"], path))
    for name, meta in q["layers"].items():
        replace_module(model, name, QuantLinear.empty(meta))
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval(), q


def load_float_model(path, device="cpu"):
    """A float GPT from a plain model checkpoint; a quantized model or a PEFT adapter file is refused."""
    ckpt = load_checkpoint(path)
    if "quantization" in ckpt:
        raise UserError(
            f"{path} holds a quantized model ({ckpt['quantization'].get('name')}); it cannot be loaded "
            "as a float model or quantized again: pass the float checkpoint it was made from"
        )
    if "peft" in ckpt:
        raise UserError(
            f"{path} holds a {ckpt['peft'].get('kind')} adapter, not a model; merge first: `python "
            f"05_sft_lora/lora.py --base <its base checkpoint> --adapter {path} --out "
            f"{Path(path).parent / 'merged.pt'}`, then pass --ckpt {Path(path).parent / 'merged.pt'}"
        )
    return GPT.from_checkpoint(path, map_location=device)


def model_bytes(model) -> int:
    """Bytes of every parameter and buffer, a shared (tied) tensor counted once: the weights' memory."""
    sizes = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(sizes.values())
