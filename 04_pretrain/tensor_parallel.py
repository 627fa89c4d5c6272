"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): each block's matrices split across N ranks.

A linear layer y = x Wᵀ (W: out × in) can be split two ways:

    column-parallel  W = [W_0; W_1; ...] by output rows     rank r computes y_r = x W_rᵀ, a slice of y's features
    row-parallel     W = [W_0, W_1, ...] by input columns   rank r computes x_r W_rᵀ, a partial sum;
                                                            y = Σ_r x_r W_rᵀ needs one all-reduce

Put a column-parallel layer first and a row-parallel one second, and the slice y_r that the first
produces is exactly the x_r the second needs: no communication in between, even through an
elementwise activation. So the MLP costs one all-reduce in forward:

    MLP        x ──f──> up, gate: column ──> silu(gate)·up (local) ──> down: row ──g──> y
    attention  x ──f──> wq, wk, wv: column = heads split ──> attention per local head ──> wo: row ──g──> y

The two conjugate operators (autograd Functions below) place the communication:
    f  forward: identity        backward: all-reduce    (x is replicated; each rank's branch gives a part of dL/dx)
    g  forward: all-reduce      backward: identity      (the partial sums become y; dL/dy is replicated already)
Per block and micro-batch: 2 all-reduces of B·T·d values in forward (g after attention and MLP) and 2 in
backward (f before them), 4·(N-1)/N·B·T·d·bytes sent per rank each way on a ring. They sit on the critical
path (nothing to overlap with), so TP stays within one node's NVLink, usually N <= 8.

Attention splits by heads: rank r takes query heads [r·H/N, (r+1)·H/N) and key/value heads
[r·Hkv/N, (r+1)·Hkv/N). With GQA, query head i reads key/value head i·Hkv/H, which falls in the same
rank's range, so no rank needs another's keys: N must divide H and Hkv (and the MLP hidden size). Norms,
embeddings and the LM head stay replicated here (Megatron also splits the vocabulary of the embedding
and head, and "sequence parallelism" splits the norms' activations along T).

The sharded block is 03_model's `Block` itself: its linears are replaced by the parallel ones, its
attention's config holds the local head counts, and a forward pre-hook applies f to the input of each
sublayer, so state dict keys stay the same (each tensor holding this rank's slice): `shard_state_dict`
and `gather_state_dict` convert between sharded and full.

torch's own version is `torch.distributed.tensor.parallel` (DTensor): `parallelize_module(block, mesh,
{"attn.wq": ColwiseParallel(), ..., "attn.wo": RowwiseParallel(), ...})` does the same split; the
inputs and outputs become DTensors whose placements (Replicate, Shard(dim), Partial) imply the f and g
all-reduces. It runs on gloo on a CPU; the check below gives the same numbers to float rounding.

    python 04_pretrain/tensor_parallel.py --world 2
    torchrun --nproc_per_node=2 04_pretrain/tensor_parallel.py --world 2

Interview questions it answers:
- Column- vs row-parallel: why column first, then row? (the column layer's output slice is the row
  layer's input slice: one all-reduce per MLP instead of two)
- Where are the all-reduces in a Megatron block? (f and g: forward after attention and after the MLP,
  backward before them: 4 per block per step)
- Why does TP stay inside a node while DP goes across nodes? (TP's all-reduces block every layer and
  scale with activations B·T·d; DP's one all-reduce per step overlaps with backward)
- How are GQA heads split? (query and key/value heads in the same contiguous groups, so each rank's
  query heads find their shared key/value head locally; needs N | Hkv)
"""

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from gpt import GPTConfig, rope_cos_sin, swiglu_hidden  # 03_model

from collectives import DemoModel, demo_batch, demo_gpt_config, demo_model, max_diff, ring_bytes, run_demo


# ----------------------------------------------------------------------------------------------
# f and g


class CopyToParallel(torch.autograd.Function):
    """f: identity forward; backward all-reduces dL/dx (each rank's branch saw only its heads/features)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ReduceFromParallel(torch.autograd.Function):
    """g: all-reduce forward (sum the row-parallel partial outputs); identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# ----------------------------------------------------------------------------------------------
# The two parallel linear layers


def shard(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    """Rank's contiguous 1/world of t along dim."""
    return t.chunk(world, dim)[rank].clone()


def keep_requires_grad(layer: nn.Module, linear: nn.Linear) -> nn.Module:
    """A split layer's parameters keep the original's requires_grad (a frozen weight stays frozen)."""
    for name, p in layer.named_parameters():
        p.requires_grad_(getattr(linear, name).requires_grad)
    return layer


class ColumnParallelLinear(nn.Module):
    """y_r = x W_rᵀ + b_r: this rank's out/N output features. The caller applies f to x once for all
    column layers that read the same x (wq, wk and wv: one backward all-reduce, not three)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (out/N, in)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, world: int):
        b = linear.bias
        bias = None if b is None else shard(b.detach(), 0, rank, world)
        return keep_requires_grad(cls(shard(linear.weight.detach(), 0, rank, world), bias), linear)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = g(Σ_r x_r W_rᵀ) + b: x_r is this rank's in/N input features; the bias is added once, after
    the sum (each rank holds the full bias, its gradient is the same on every rank)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group=None):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (out, in/N)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.group = group

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, world: int, group=None):
        b = linear.bias
        weight = shard(linear.weight.detach(), 1, rank, world)
        return keep_requires_grad(cls(weight, None if b is None else b.detach().clone(), group), linear)

    def forward(self, x):
        y = ReduceFromParallel.apply(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


# ----------------------------------------------------------------------------------------------
# A tensor-parallel GPT block: 03_model's Block with its linears split

# Which dimension of each block tensor is split (column layers: 0 = output rows; row layers: 1 = input
# columns). Tensors not listed (norms, row-layer biases) are replicated.
SPLIT_DIM = {
    "attn.wq.weight": 0,
    "attn.wq.bias": 0,
    "attn.wk.weight": 0,
    "attn.wk.bias": 0,
    "attn.wv.weight": 0,
    "attn.wv.bias": 0,
    "attn.wo.weight": 1,
    "ffn.up.weight": 0,
    "ffn.up.bias": 0,
    "ffn.gate.weight": 0,
    "ffn.gate.bias": 0,
    "ffn.down.weight": 1,
}


def split_dim(key: str):
    """The split dimension of a state dict key (of a block or a whole GPT), or None if replicated."""
    return next((d for suffix, d in SPLIT_DIM.items() if key.endswith(suffix)), None)


def check_tensor_parallel(cfg: GPTConfig, world: int):
    """UserError unless `world` ranks can split this model's heads, key/value heads and MLP."""
    hidden = swiglu_hidden(cfg.n_embd) if cfg.mlp == "swiglu" else 4 * cfg.n_embd
    for what, n in (("n_head", cfg.n_head), ("n_kv_head", cfg.n_kv_head), ("MLP hidden size", hidden)):
        if n % world:
            raise UserError(
                f"tensor parallelism over {world} ranks splits {what} = {n} into equal parts, "
                f"but {world} does not divide {n}; use a world size that divides it"
            )
    if cfg.n_experts:
        raise UserError(
            "tensor parallelism of a mixture-of-experts block is not implemented; use --n-experts 0"
        )


def local_attention_config(cfg: GPTConfig, world: int) -> GPTConfig:
    """gpt.Attention.forward reads the head counts from its config: the local ones, same head_dim."""
    return dataclasses.replace(
        cfg,
        n_head=cfg.n_head // world,
        n_kv_head=cfg.n_kv_head // world,
        n_embd=cfg.head_dim * cfg.n_head // world,
    )


def enter_parallel_region(group):
    """A forward pre-hook that applies f to a sublayer's input x (its first argument)."""
    return lambda module, args: (CopyToParallel.apply(args[0], group), *args[1:])


def tensor_parallel_block(block: nn.Module, cfg: GPTConfig, rank: int, world: int, group=None) -> nn.Module:
    """A copy of `block` (gpt.Block) holding rank's slices; its forward equals the full block's."""
    check_tensor_parallel(cfg, world)
    tp = copy.deepcopy(block)
    attn, ffn = tp.attn, tp.ffn
    for name in ("wq", "wk", "wv"):
        setattr(attn, name, ColumnParallelLinear.from_linear(getattr(attn, name), rank, world))
    attn.wo = RowParallelLinear.from_linear(attn.wo, rank, world, group)
    attn.cfg = local_attention_config(cfg, world)
    for name in ("up", "gate"):
        if hasattr(ffn, name):
            setattr(ffn, name, ColumnParallelLinear.from_linear(getattr(ffn, name), rank, world))
    ffn.down = RowParallelLinear.from_linear(ffn.down, rank, world, group)
    attn.register_forward_pre_hook(enter_parallel_region(group))
    ffn.register_forward_pre_hook(enter_parallel_region(group))
    return tp


def tensor_parallel_gpt(model: nn.Module, rank: int, world: int, group=None) -> nn.Module:
    """A copy of a GPT whose blocks are tensor-parallel; embeddings, final norm and head replicated."""
    check_tensor_parallel(model.cfg, world)
    tp = copy.deepcopy(model)
    tp.blocks = nn.ModuleList(tensor_parallel_block(b, model.cfg, rank, world, group) for b in model.blocks)
    return tp


def shard_state_dict(full: dict, rank: int, world: int) -> dict:
    """A full state dict (block or GPT) -> this rank's tensor-parallel one (same keys)."""
    return {k: v if split_dim(k) is None else shard(v, split_dim(k), rank, world) for k, v in full.items()}


def gather_state_dict(local: dict, world: int, group=None) -> dict:
    """Every rank's tensor-parallel state dict -> the full one (on every rank): all-gather each split
    tensor and concatenate along its split dimension."""
    full = {}
    for k, v in local.items():
        d = split_dim(k)
        if d is None:
            full[k] = v.detach().clone()
            continue
        parts = [torch.empty_like(v) for _ in range(world)]
        dist.all_gather(parts, v.detach().contiguous(), group=group)
        full[k] = torch.cat(parts, dim=d)
    return full


def torch_tensor_parallel_block(block: nn.Module, cfg: GPTConfig, world: int) -> nn.Module:
    """The same split with torch.distributed.tensor.parallel (DTensor), for comparison."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    check_tensor_parallel(cfg, world)
    tp = copy.deepcopy(block)
    plan = {f"attn.{n}": ColwiseParallel() for n in ("wq", "wk", "wv")} | {"attn.wo": RowwiseParallel()}
    plan |= {f"ffn.{n}": ColwiseParallel() for n in ("up", "gate") if hasattr(tp.ffn, n)}
    plan["ffn.down"] = RowwiseParallel()
    parallelize_module(tp, init_device_mesh("cpu", (world,)), plan)
    tp.attn.cfg = local_attention_config(cfg, world)
    return tp


# ----------------------------------------------------------------------------------------------
# The check: a TP block and a TP GPT against the ordinary ones


@dataclass
class TPConfig(DemoModel):
    out: str = option("", "folder to write tensor_parallel.json into (empty: print only)")


def block_inputs(cfg: GPTConfig, batch: int, seed: int):
    """x (B, T, d) and RoPE (cos, sin) for one block, the same on every rank."""
    x = torch.randn(batch, cfg.block_size, cfg.n_embd, generator=torch.Generator().manual_seed(seed))
    cos, sin = rope_cos_sin(torch.arange(cfg.block_size)[None], cfg.head_dim, cfg.rope_theta)
    return x, (cos[:, None], sin[:, None]) if cfg.pos_emb == "rope" else None


def block_forward_backward(block, x, rope):
    """(output, dL/dx, {name: grad}) of L = Σ y·w for a fixed random w (every output element matters)."""
    x = x.clone().requires_grad_()
    y, _ = block(x, rope)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (y * w).sum().backward()
    grads = {
        n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        for n, p in block.named_parameters()
    }
    return y.detach(), x.grad, grads


def tp_worker(rank, world, cfg: TPConfig) -> dict:
    gcfg = demo_gpt_config(cfg)
    model = demo_model(cfg)
    full_block = model.blocks[0]
    x, rope = block_inputs(gcfg, cfg.batch, cfg.seed + 1)
    y_ref, dx_ref, g_ref = block_forward_backward(full_block, x, rope)

    tp_block = tensor_parallel_block(full_block, gcfg, rank, world)
    y, dx, g = block_forward_backward(tp_block, x, rope)
    g_full = gather_state_dict(g, world)  # the gradients split like the weights
    out = {
        "block_max_diff_output": max_diff(y, y_ref),
        "block_max_diff_grad_input": max_diff(dx, dx_ref),
        "block_max_diff_grad_weights": max(max_diff(g_full[k], g_ref[k]) for k in g_ref),
        "block_local_params": sum(p.numel() for p in tp_block.parameters()),
        "block_params": sum(p.numel() for p in full_block.parameters()),
    }

    dt_block = torch_tensor_parallel_block(full_block, gcfg, world)
    y_dt, dx_dt, g_dt = block_forward_backward(dt_block, x, rope)
    out |= {
        "dtensor_max_diff_output": max_diff(y_dt, y_ref),
        "dtensor_max_diff_grad_input": max_diff(dx_dt, dx_ref),
        "dtensor_max_diff_grad_weights": max(max_diff(g_dt[k], g_ref[k]) for k in g_ref),
        "ours_vs_dtensor_max_diff_output": max_diff(y, y_dt),
    }

    model.zero_grad(set_to_none=True)  # block 0 holds the check's gradients
    tp_model = tensor_parallel_gpt(model, rank, world)
    xb, yb = demo_batch(cfg, 0)
    _, loss_ref = model(xb, yb)
    loss_ref.backward()
    _, loss = tp_model(xb, yb)
    loss.backward()
    grads = gather_state_dict({n: p.grad for n, p in tp_model.named_parameters()}, world)
    roundtrip = gather_state_dict(shard_state_dict(model.state_dict(), rank, world), world)
    out |= {
        "gpt_loss": loss.item(),
        "gpt_max_diff_loss": abs(loss.item() - loss_ref.item()),
        "gpt_max_diff_grads": max(max_diff(grads[n], p.grad) for n, p in model.named_parameters()),
        "state_dict_roundtrip_max_diff": max(
            max_diff(roundtrip[k], v) for k, v in model.state_dict().items()
        ),
        "state_dict_same_keys": sorted(tp_model.state_dict()) == sorted(model.state_dict()),
        "gpt_local_params": sum(p.numel() for p in tp_model.parameters()),
        "gpt_params": sum(p.numel() for p in model.parameters()),
    }
    return out


def report(r: dict, cfg: TPConfig) -> str:
    N = cfg.world
    act = cfg.batch * cfg.seq_len * cfg.n_embd * 4
    return "\n".join(
        [
            f"tensor parallel over {N} ranks (d={cfg.n_embd}, {cfg.n_head} heads, {cfg.n_kv_head} KV heads), "
            "max |difference|",
            f"{'':<34}{'output':>10}{'dL/dx':>10}{'dL/dW':>10}",
            f"{'our TP block vs gpt.Block':<34}{r['block_max_diff_output']:>10.1e}{r['block_max_diff_grad_input']:>10.1e}"
            f"{r['block_max_diff_grad_weights']:>10.1e}",
            f"{'DTensor TP block vs gpt.Block':<34}{r['dtensor_max_diff_output']:>10.1e}"
            f"{r['dtensor_max_diff_grad_input']:>10.1e}{r['dtensor_max_diff_grad_weights']:>10.1e}",
            f"{'our TP block vs DTensor':<34}{r['ours_vs_dtensor_max_diff_output']:>10.1e}",
            f"{'our TP GPT vs GPT (loss, grads)':<34}{r['gpt_max_diff_loss']:>10.1e}{'':>10}"
            f"{r['gpt_max_diff_grads']:>10.1e}",
            f"state dict full -> {N} shards -> full: max |diff| {r['state_dict_roundtrip_max_diff']:.1e}, same keys: "
            f"{r['state_dict_same_keys']}",
            f"parameters per rank: block {r['block_local_params']:,} of {r['block_params']:,}; GPT "
            f"{r['gpt_local_params']:,} of {r['gpt_params']:,} (embeddings and norms replicated)",
            f"communication per block per micro-batch: 2 all-reduces forward + 2 backward of B*T*d*4 = {act:,} bytes; "
            f"each sends {ring_bytes('all_reduce', act, N):,.0f} bytes per rank on a ring",
        ]
    )


def main(argv=None):
    cfg, _ = parse_config(TPConfig, argv, doc=__doc__)
    check_tensor_parallel(demo_gpt_config(cfg), cfg.world)
    run_demo(tp_worker, cfg, report, "tensor_parallel")


if __name__ == "__main__":
    run_cli(main)
