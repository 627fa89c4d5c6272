"""Training memory per GPU, by arithmetic: weights, gradients, optimizer state and activations.

For a GPT config (03_model's GPTConfig), a micro-batch, a sequence length, dtypes and a parallel layout
(data parallel with DDP or ZeRO-1/2/3, a tensor-parallel degree, a pipeline degree, activation
checkpointing) it prints the bytes each GPU holds, and the same for every ZeRO stage side by side:

    python 04_pretrain/memory_estimate.py --preset gpt2 --micro-batch 12           # 124M on one GPU
    python 04_pretrain/memory_estimate.py --preset llama-7b --dp 8 --strategy zero3 --checkpointing
    python 04_pretrain/memory_estimate.py --preset llama-7b --tp 4 --pp 2 --micro-batches 8 --out runs/memory

The model state, P parameters on this GPU (after TP and PP split them):
    --weights fp32   (what pretrain.py does: fp32 weights, autocast for the matmuls)
                     weights 4P, gradients 4P, AdamW m and v 8P                       = 16 bytes/param
    --weights mixed  (Megatron / DeepSpeed: bf16 weights and gradients, fp32 master copy in the optimizer)
                     weights 2P, gradients 2P, fp32 master + m + v 12P                = 16 bytes/param
    ZeRO over dp ranks divides: stage 1 the optimizer state, 2 also the gradients, 3 also the weights
    (plus, for stage 3, the full weights of what runs: one block at a time, and the root unit, i.e. the
    embedding, head and final norm, gathered from the start of forward to the end of backward).

Activations: what autograd saves for backward, counted tensor by tensor from 03_model's code, per
token and layer (d = n_embd, kv = Hkv·hd, h = MLP hidden, H heads, T tokens):
    norms        RMSNorm: its input and x/rms (fp32, 2d) and 1 statistic; LayerNorm: input and 2
                 statistics; the output is saved by the linear layers that read it (d; under autocast
                 each linear saves its own bf16 copy: 3 for wq, wk, wv, 2 for SwiGLU's gate and up)
    attention    flash (the Triton kernel, and kernels' tiled reference): q, k, v, o, the log-sum-exp (H,
                 fp32) and wo's input y: 3d + 2kv + H.  naive: q, Kᵀ, V (GQA: repeated to H heads), the
                 T x T probabilities (H·T per token) and y, plus a T x T mask per layer
    MLP          SwiGLU: gate(x), silu(gate(x)), up(x), their product = 4h;  GELU/ReLU: 2h
    head         the final norm, the log-softmax (V, fp32), the targets, and the logits the loop still
                 holds (V); RoPE saves only its cos/sin tables
Tensor parallelism divides the attention and MLP terms by tp (the norms stay replicated: no sequence
parallelism); activation checkpointing keeps only each block's input (d per token and layer) plus one
block's full activations while it is recomputed; a pipeline stage holds its layers' activations for every
micro-batch in flight (1F1B: up to p on stage 0; GPipe: all m); the fullest stage is reported.
Under autocast with fp32 weights, each weight also gets a bf16 copy for the forward (2P, under "weights").

How exact is it? tests/test_04_parallel.py checks: parameter counts equal GPT.num_params for GPT-2 and
Llama shapes; weight, gradient and AdamW-state bytes equal the real tensors; ZeRO state bytes equal
zero_sharding.py's shards, ZeRO-3 weight bytes equal what zero3_by_hand.py holds at its peak (shards +
gathered units), TP and PP parameter counts equal tensor_parallel.py's and pipeline_parallel.py's
modules; activations equal the bytes autograd really saves in a forward on CPU (fp32 and bf16 autocast,
naive and tiled-flash attention) to within 2% (the rest: RoPE tables; QK-norm under autocast is ~6% high).
On a GPU, a skip-if-no-CUDA test compares the total with torch.cuda.max_memory_allocated.

Interview questions it answers:
- How much memory does training a 7B model need? (16 bytes/param of model state = 112 GB before
  activations: more than one 80 GB GPU, hence ZeRO/FSDP, TP or PP)
- Why 16 bytes per parameter with Adam? (weights + gradients + m + v, each fp32; or the mixed-precision
  2 + 2 + 4 + 4 + 4 with an fp32 master copy: also 16)
- Where does activation memory come from, and what removes it? (every saved tensor above, linear in
  the micro-batch and the layers; the T² term in naive attention is what FlashAttention removes;
  checkpointing trades it for one more forward)
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from gpt import GPTConfig, swiglu_hidden  # 03_model
import gpt as gpt_module  # 03_model: the gpt2 / llama architecture presets

from pipeline_parallel import check_pipeline, stage_layers
from tensor_parallel import check_tensor_parallel

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
# bytes per parameter of (weights, gradients, optimizer state) for each --weights choice
STATE_BYTES = {"fp32": (4, 4, 8), "mixed": (2, 2, 12)}
ACT_BYTES = {"fp32": 4, "bf16": 2}


# ----------------------------------------------------------------------------------------------
# Parameters: where they are, and which ones tensor parallelism splits


def mlp_hidden(cfg: GPTConfig) -> int:
    return swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd


def block_params(cfg: GPTConfig) -> tuple:
    """(split, replicated) parameter counts of one block under tensor parallelism.

    split: wq, wk, wv, wo and the MLP matrices, and the column layers' biases
    replicated: the two norms (and QK-norms), and the row layers' biases (wo, down)."""
    d, hd, H, Hkv = cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_kv_head
    h, n_mats = mlp_hidden(cfg), 3 if cfg.mlp == "swiglu" else 2
    norm = d if cfg.norm == "rmsnorm" else 2 * d  # RMSNorm: weight; LayerNorm: weight + bias
    split = d * H * hd + 2 * d * Hkv * hd + H * hd * d + n_mats * d * h  # wq, wk, wv, wo; MLP
    replicated = 2 * norm + (2 * hd if cfg.qk_norm else 0)
    if cfg.bias:
        split += H * hd + 2 * Hkv * hd + (n_mats - 1) * h  # column biases: wq, wk, wv; up (, gate)
        replicated += 2 * d  # row biases: wo, down
    if cfg.n_experts:  # E expert MLPs and the router
        mlp = n_mats * d * h + ((n_mats - 1) * h + d if cfg.bias else 0)
        split += (cfg.n_experts - 1) * mlp + d * cfg.n_experts
    return split, replicated


def param_counts(cfg: GPTConfig) -> dict:
    """Parameters by place: embedding (tokens, learned positions), one block, final norm, LM head."""
    d = cfg.n_embd
    norm = d if cfg.norm == "rmsnorm" else 2 * d
    return {
        "embedding": cfg.vocab_size * d + (cfg.block_size * d if cfg.pos_emb == "learned" else 0),
        "block": sum(block_params(cfg)),
        "final_norm": norm if cfg.pre_norm else 0,
        "head": 0 if cfg.tie_weights else cfg.vocab_size * d,
    }


def total_params(cfg: GPTConfig) -> int:
    """= GPT(cfg).num_params(non_embedding=False) (tied weights once)."""
    c = param_counts(cfg)
    return c["embedding"] + cfg.n_layer * c["block"] + c["final_norm"] + c["head"]


def stage_params(cfg: GPTConfig, tp: int, pp: int, stage: int) -> int:
    """Parameters on one GPU of pipeline stage `stage` with tensor-parallel degree tp (embeddings and
    head replicated across TP ranks, as in tensor_parallel.py; a tied head is a copy on the last stage)."""
    c, (split, replicated) = param_counts(cfg), block_params(cfg)
    n = len(stage_layers(cfg.n_layer, pp, stage)) * (split // tp + replicated)
    if stage == 0:
        n += c["embedding"]
    if stage == pp - 1:
        n += c["final_norm"] + (c["head"] or (cfg.vocab_size * cfg.n_embd if pp > 1 else 0))
    return n


# ----------------------------------------------------------------------------------------------
# Activations


def norm_activation_values(cfg: GPTConfig) -> tuple:
    """(values in the activation dtype, values always fp32) saved per token by one norm and the layer
    that reads its output. RMSNorm saves its input and x/rms (before the gain) and 1 statistic, all fp32;
    LayerNorm (torch's fused op) its input and 2 statistics; the next linear saves the output."""
    d = cfg.n_embd
    return (d, 2 * d + 1) if cfg.norm == "rmsnorm" else (d, d + 2)


def block_activation_values(cfg: GPTConfig, seq_len: int, tp=1, attention="flash", autocast=False) -> tuple:
    """(values in the activation dtype, values always fp32) that autograd saves per token in one block.

    Counted from 03_model's code (module docstring); under autocast the norms' internals stay fp32, and
    each linear saves its own bf16 copy of its input: norm1's output 3 times (wq, wk, wv), norm2's twice
    for SwiGLU (gate, up). RoPE saves only its cos/sin tables (they need no gradient)."""
    d, hd, H = cfg.n_embd, cfg.head_dim, cfg.n_head
    kv, h = cfg.n_kv_head * hd, mlp_hidden(cfg)
    norm_act, norm_fp32 = norm_activation_values(cfg)
    readers = (3 + (2 if cfg.mlp == "swiglu" else 1)) if autocast else 2
    qk_norm = 2 * (d + kv) + H + cfg.n_kv_head if cfg.qk_norm else 0  # input, x/rms, stats per head
    if attention == "naive":  # q, K^T and V (GQA: repeated to H heads), probabilities, y (wo's input)
        kv_saved = 2 * d if cfg.n_kv_head != H else 2 * kv
        attn_act, attn_fp32 = d + kv_saved + H * seq_len + d, 0
    elif attention == "flash":  # the kernel saves q, k, v, its output o and the log-sum-exp; wo saves y
        attn_act, attn_fp32 = d + 2 * kv + d + d, H
    else:
        raise UserError(f"unknown attention {attention!r}; choose flash or naive")
    mlp = 4 * h if cfg.mlp == "swiglu" else 2 * h  # SwiGLU: gate, silu, up, product
    return readers * norm_act + (attn_act + mlp) / tp, 2 * norm_fp32 + (qk_norm + attn_fp32) / tp


def activation_bytes(
    cfg: GPTConfig,
    micro_batch: int,
    seq_len: int,
    layers: int,
    dtype="fp32",
    tp=1,
    attention="flash",
    checkpointing=False,
    first=True,
    last=True,
) -> dict:
    """Bytes of activations of one micro-batch through `layers` blocks (and the embedding / head when
    first / last): {"blocks", "head", "logits"}; "logits" is what the caller still holds (V per token,
    in the activation dtype: the lm_head's output)."""
    tokens, a = micro_batch * seq_len, ACT_BYTES[dtype]
    act, fp32 = block_activation_values(cfg, seq_len, tp, attention, autocast=dtype != "fp32")
    one_block = tokens * (act * a + fp32 * 4)
    if checkpointing:  # each block's input, plus one block recomputed in backward
        blocks = layers * tokens * cfg.n_embd * 4 + (one_block if layers else 0)
    else:
        blocks = layers * one_block
        if attention == "naive":
            blocks += layers * seq_len**2  # the causal mask, one byte per (query, key)
    norm_act, norm_fp32 = norm_activation_values(cfg) if cfg.pre_norm else (cfg.n_embd, 0)
    head = (
        tokens * (norm_act * a + norm_fp32 * 4 + cfg.vocab_size * 4 + 8) if last else 0
    )  # + log-softmax, targets
    embed = tokens * 8 if first else 0  # the token ids (int64)
    return {"blocks": blocks, "head": head + embed, "logits": tokens * cfg.vocab_size * a if last else 0}


# ----------------------------------------------------------------------------------------------
# Everything on one GPU


def check_layout(cfg: GPTConfig, strategy: str, dp: int, tp: int, pp: int, micro_batches: int):
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if tp > 1:
        check_tensor_parallel(cfg, tp)
    if pp > 1:
        check_pipeline(cfg.n_layer, pp, micro_batches)


def memory_per_gpu(
    cfg: GPTConfig,
    micro_batch: int,
    seq_len: int,
    dtype="bf16",
    weights="fp32",
    strategy="ddp",
    dp=1,
    tp=1,
    pp=1,
    micro_batches=1,
    schedule="1f1b",
    checkpointing=False,
    attention="flash",
) -> dict:
    """Bytes per GPU on the fullest pipeline stage: {"weights", "gradients", "optimizer",
    "activations", "total", "params", "stage"}. dp: data-parallel ranks that ZeRO shards over."""
    check_layout(cfg, strategy, dp, tp, pp, micro_batches)
    w_b, g_b, o_b = STATE_BYTES[weights]
    level = STRATEGIES.index(strategy)  # 0 DDP, 1-3 the ZeRO stage
    best = None
    for stage in range(pp):
        P = stage_params(cfg, tp, pp, stage)
        layers = len(stage_layers(cfg.n_layer, pp, stage))
        in_flight = micro_batches if schedule == "gpipe" else min(pp - stage, micro_batches)
        act = activation_bytes(
            cfg,
            micro_batch,
            seq_len,
            layers,
            dtype,
            tp,
            attention,
            checkpointing,
            first=stage == 0,
            last=stage == pp - 1,
        )
        mem = {
            "weights": P * w_b / (dp if level >= 3 else 1),
            "gradients": P * g_b / (dp if level >= 2 else 1),
            "optimizer": P * o_b / (dp if level >= 1 else 1),
            "activations": in_flight * act["blocks"] + act["head"] + act["logits"],
            "params": P,
            "stage": stage,
        }
        if level >= 3:
            # ZeRO-3 holds full weights for what runs: one block at a time, and the root unit (embedding,
            # head, final norm), gathered at the start of forward and kept until backward ends (FSDP2 and
            # zero3_by_hand.py both do; measured there, tests/test_04_parallel.py)
            block = block_params(cfg)[0] // tp + block_params(cfg)[1]
            mem["weights"] += ((block if layers else 0) + P - layers * block) * w_b
        if dtype == "bf16" and weights == "fp32":
            # autocast casts each weight to bf16 once per forward and the matmuls save those copies for
            # backward: 2P more, under ZeRO-3 too (the saved copies are not freed when the fp32 shards
            # are resharded; FSDP's own mixed precision, param_dtype=bf16, gathers bf16 weights instead)
            mem["weights"] += P * 2
        mem["total"] = mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
        if best is None or mem["total"] > best["total"]:
            best = mem
    return best


# ----------------------------------------------------------------------------------------------
# Command line


@dataclass
class MemoryConfig:
    arch: str = option(
        "llama",
        "03_model flavour (gpt2: learned positions, LayerNorm, GELU, biases)",
        choices=("llama", "gpt2"),
    )
    n_layer: int = option(12, "blocks", min=1)
    n_head: int = option(12, "query heads", min=1)
    n_kv_head: int = option(0, "key/value heads (0 = n_head)", min=0)
    n_embd: int = option(768, "model width d", min=1)
    vocab_size: int = option(50304, "vocabulary size", min=1)
    tie_weights: bool = option(True, "LM head shares the token embedding")
    seq_len: int = option(1024, "tokens per sequence", min=1)
    micro_batch: int = option(8, "sequences per forward on one GPU", min=1)
    dtype: str = option("bf16", "activation dtype (bf16 = autocast)", choices=tuple(ACT_BYTES))
    weights: str = option(
        "fp32",
        "fp32: this repo's fp32 weights + autocast; mixed: bf16 weights, fp32 master",
        choices=tuple(STATE_BYTES),
    )
    strategy: str = option("ddp", "data parallelism: ddp, or the ZeRO stage", choices=STRATEGIES)
    dp: int = option(1, "data-parallel ranks (ZeRO shards over them)", min=1)
    tp: int = option(1, "tensor-parallel degree", min=1)
    pp: int = option(1, "pipeline stages", min=1)
    micro_batches: int = option(1, "pipeline micro-batches per step", min=1)
    schedule: str = option("1f1b", "pipeline schedule", choices=("1f1b", "gpipe"))
    checkpointing: bool = option(False, "activation checkpointing (recompute each block in backward)")
    attention: str = option("flash", "flash (no T x T matrix) or naive", choices=("flash", "naive"))
    out: str = option("", "folder for memory.json and memory.png (empty: print only)")


PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=512, seq_len=128, micro_batch=16),
    "gpt2": dict(
        arch="gpt2", n_layer=12, n_head=12, n_embd=768, vocab_size=50304, seq_len=1024, micro_batch=12
    ),
    "gpt2-xl": dict(
        arch="gpt2", n_layer=48, n_head=25, n_embd=1600, vocab_size=50304, seq_len=1024, micro_batch=4
    ),
    "llama-7b": dict(
        n_layer=32, n_head=32, n_embd=4096, vocab_size=32000, seq_len=4096, micro_batch=1, tie_weights=False
    ),
}


def gpt_config(cfg: MemoryConfig) -> GPTConfig:
    return GPTConfig(
        vocab_size=cfg.vocab_size,
        block_size=cfg.seq_len,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_kv_head or None,
        n_embd=cfg.n_embd,
        tie_weights=cfg.tie_weights,
        **gpt_module.PRESETS[cfg.arch],
    )


def estimate(cfg: MemoryConfig, gcfg: GPTConfig, strategy: str) -> dict:
    return memory_per_gpu(
        gcfg,
        cfg.micro_batch,
        cfg.seq_len,
        cfg.dtype,
        cfg.weights,
        strategy,
        cfg.dp,
        cfg.tp,
        cfg.pp,
        cfg.micro_batches,
        cfg.schedule,
        cfg.checkpointing,
        cfg.attention,
    )


def table(cfg: MemoryConfig, gcfg: GPTConfig) -> tuple:
    rows = {s: estimate(cfg, gcfg, s) for s in STRATEGIES}
    gib = lambda b: f"{b / 2**30:>10.2f}"
    head = f"{'strategy':<10}{'weights':>10}{'grads':>10}{'optimizer':>10}{'activations':>12}{'total':>10}"
    lines = [
        f"{total_params(gcfg) / 1e6:,.1f}M parameters; on the fullest GPU {rows['ddp']['params'] / 1e6:,.1f}M "
        f"(pipeline stage {rows['ddp']['stage']}); dp={cfg.dp} tp={cfg.tp} pp={cfg.pp}, micro-batch "
        f"{cfg.micro_batch} x {cfg.seq_len} tokens, {cfg.dtype} activations, {cfg.weights} weights"
        f"{', checkpointing' if cfg.checkpointing else ''}; GiB per GPU",
        head,
        "-" * len(head),
    ]
    for s, m in rows.items():
        mark = " <-" if s == cfg.strategy else ""
        lines.append(
            f"{s:<10}{gib(m['weights'])}{gib(m['gradients'])}{gib(m['optimizer'])}  "
            f"{gib(m['activations'])}{gib(m['total'])}{mark}"
        )
    return "\n".join(lines), rows


def plot(rows: dict, path: Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(rows)
    for part in ("weights", "gradients", "optimizer", "activations"):
        vals = [m[part] / 2**30 for m in rows.values()]
        ax.bar(list(rows), vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(ylabel="GiB per GPU", title="training memory per GPU")
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(MemoryConfig, argv, doc=__doc__, presets=PRESETS, default_preset="gpt2")
    gcfg = gpt_config(cfg)
    if cfg.dp == 1 and cfg.strategy != "ddp":
        print(
            f"note: --strategy {cfg.strategy} with --dp 1 shards over one rank, i.e. not at all",
            file=sys.stderr,
        )
    text, rows = table(cfg, gcfg)
    print(text)
    if cfg.out:
        write_json(Path(cfg.out) / "memory.json", {"config": asdict(cfg), "bytes_per_gpu": rows})
        plot(rows, Path(cfg.out) / "memory.png")


if __name__ == "__main__":
    run_cli(main)
