"""The collective operations every parallelism is built from, what each costs, and how to start N ranks.

Each parallel strategy in this folder is a few of these calls placed at the right moment:

    broadcast(x, src)        every rank gets src's x                       DDP start: same initial weights
    all_reduce(x)            every rank gets sum_r x_r                     DDP: average the gradients
    reduce_scatter_single    rank r gets chunk r of sum_r x_r              ZeRO-2/3: each keeps its gradient slice
    all_gather_single        every rank gets [x_0, x_1, ..., x_{N-1}]      ZeRO: rebuild the full weights
    send / recv              point to point                                pipeline: activations and their grads

(`reduce_scatter_single` and `all_gather_single` are torch 2.13's names for reduce_scatter_tensor and
all_gather_into_tensor: one flat input, one flat output.)

Cost on a ring of N ranks, for a message of n bytes (Patarasuk & Yuan 2009; what NCCL does for large
messages): the data is cut into N chunks that travel around the ring.
    reduce-scatter: N-1 steps, each rank sends one chunk of n/N per step     -> (N-1)/N · n bytes sent per rank
    all-gather:     the same pattern, copying instead of adding              -> (N-1)/N · n
    all-reduce  =   reduce-scatter then all-gather                           -> 2(N-1)/N · n
So an all-reduce costs about 2n per rank however many ranks there are: the bandwidth term does not grow
with N, which is why data parallelism scales. ZeRO-2 replaces the all-reduce by a reduce-scatter of
the gradients and an all-gather of the updated weights: the same 2(N-1)/N · n, with 1/N of the memory.

    python 04_pretrain/collectives.py --params 124e6 --world 8     # bytes per rank per step, per strategy

Starting ranks: `run_ranks(fn, world, *args)` runs fn(rank, world, *args) in `world` processes joined
by one gloo (CPU) or NCCL (GPU) process group. Under torchrun (WORLD_SIZE is set) this process is one
of them already; otherwise it spawns them itself, so `python x.py --world 2` needs no launcher.

Interview questions it answers:
- What does an all-reduce cost, and why does it not grow with the number of GPUs? (ring: 2(N-1)/N · n)
- All-reduce = reduce-scatter + all-gather: why does that identity matter? (ZeRO splits the two halves
  and puts the optimizer step between them, on 1/N of the parameters)
- How do N processes find each other? (a rendezvous: one address and port every rank knows, here
  127.0.0.1 and a free port, or torchrun's MASTER_ADDR/MASTER_PORT; then ranks 0..N-1 connect)
"""

import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import write_json
from gpt import GPT, GPTConfig  # 03_model


# ----------------------------------------------------------------------------------------------
# Bytes each rank sends, on a ring


def ring_bytes(op: str, n_bytes: float, world: int) -> float:
    """Bytes one rank sends for collective `op` on a message of n_bytes (module docstring)."""
    # >>> exercise: ring, per rank: reduce-scatter, all-gather (N-1)/N·n; all-reduce 2(N-1)/N·n; broadcast n
    if world == 1:
        return 0.0
    per_half = (world - 1) / world * n_bytes
    return {
        "all_reduce": 2 * per_half,
        "reduce_scatter": per_half,
        "all_gather": per_half,
        "broadcast": n_bytes,
    }[op]
    # <<< exercise


def step_traffic(strategy: str, param_bytes: float, world: int) -> list:
    """[(collective, payload bytes, bytes sent per rank)] of one optimizer step of data parallelism.

    payload: the size of the tensor handed to the collective (full gradients or full weights);
    gradients are communicated in the dtype they are kept in (fp32 here, so param_bytes = 4·P).
    ZeRO-1 keeps full gradients, so zero_sharding.py all-reduces them; since its optimizer reads only
    its own slice, a reduce-scatter would do (the ZeRO paper counts stage 1 that way: the same 2Ψ as DDP).
    ZeRO-3 gathers the weights twice (forward and again in backward, they were freed in between)."""
    # >>> exercise: (op, payload, ring_bytes): ddp AR; zero1 AR + AG; zero2 RS + AG; zero3 AG + AG + RS
    g = param_bytes
    ops = {
        "ddp": [("all_reduce", g)],
        "zero1": [("all_reduce", g), ("all_gather", g)],
        "zero2": [("reduce_scatter", g), ("all_gather", g)],
        "zero3": [("all_gather", g), ("all_gather", g), ("reduce_scatter", g)],
    }[strategy]
    return [(op, n, ring_bytes(op, n, world)) for op, n in ops]
    # <<< exercise


def traffic_table(params: float, worlds=(2, 4, 8), bytes_per_value=4) -> str:
    """A text table of bytes sent per rank per optimizer step, for each strategy and world size."""
    head = f"{'strategy':<8} {'collectives per step':<44}" + "".join(f"{'N=' + str(n):>11}" for n in worlds)
    lines = [head, "-" * len(head)]
    for s in ("ddp", "zero1", "zero2", "zero3"):
        ops = " + ".join(op for op, _, _ in step_traffic(s, 1, 2))
        sent = [sum(b for _, _, b in step_traffic(s, params * bytes_per_value, n)) for n in worlds]
        lines.append(f"{s:<8} {ops:<44}" + "".join(f"{b / 2**20:>10.1f}M" for b in sent))
    return (
        "\n".join(lines)
        + f"\n(MiB sent per rank; P = {params:,.0f} parameters, {bytes_per_value} bytes each)"
    )


# ----------------------------------------------------------------------------------------------
# Starting ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(rank: int, world: int, port: int | None = None, device: str = "cpu"):
    """Join the process group: from torchrun's environment, or from 127.0.0.1:port when we spawned."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if port is None:  # torchrun set MASTER_ADDR, MASTER_PORT, RANK
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _spawned(rank, world, port, fn, args, results, threads):
    torch.set_num_threads(threads)
    init_rank(rank, world, port)
    try:
        out = fn(rank, world, *args)
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, threads: int = 0) -> list:
    """fn(rank, world, *args) on every rank; returns the list of what each rank returned.

    Under torchrun this process is one rank: it runs fn and returns [its own result] (world must
    match WORLD_SIZE). Otherwise `world` processes are spawned on this machine with gloo; fn and its
    args must be picklable (a module-level function) and its result plain Python or numpy."""
    env_world = int(os.environ.get("WORLD_SIZE", "0"))
    if env_world:
        if env_world != world:
            raise UserError(
                f"torchrun started {env_world} processes but --world is {world}; "
                f"pass --world {env_world} or change --nproc_per_node"
            )
        rank = int(os.environ["RANK"])
        init_rank(rank, world)
        try:
            return [fn(rank, world, *args)]
        finally:
            dist.destroy_process_group()
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    mp.start_processes(
        _spawned, args=(world, free_port(), fn, args, results, threads), nprocs=world, start_method="spawn"
    )
    out = dict(results.get() for _ in range(world))
    return [out[r] for r in range(world)]


def prints_report() -> bool:
    """True in the process that prints a demo's results: the parent of spawned ranks, or torchrun's rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


def run_demo(worker, cfg, report, name: str) -> dict:
    """A demo's command line after its checks: worker on cfg.world ranks, rank 0's results printed by
    report(results, cfg) and, with --out, written to <out>/<name>.json."""
    results = run_ranks(worker, cfg.world, cfg)[0]
    if prints_report():
        print(report(results, cfg))
        if cfg.out:
            write_json(Path(cfg.out) / f"{name}.json", {"config": asdict(cfg), **results})
    return results


# ----------------------------------------------------------------------------------------------
# The small GPT and batch every demo in this folder checks its parallel version on


@dataclass
class DemoModel:
    """Flags shared by the demos (ddp_by_hand, zero_sharding, tensor_parallel, pipeline_parallel)."""

    world: int = option(2, "number of ranks (processes); under torchrun, its --nproc_per_node", min=1)
    n_layer: int = option(4, "transformer blocks", min=1)
    n_head: int = option(4, "query heads", min=1)
    n_kv_head: int = option(2, "key/value heads (GQA when fewer than n_head)", min=1)
    n_embd: int = option(64, "model width d", min=1)
    vocab_size: int = option(128, "vocabulary size", min=2)
    seq_len: int = option(32, "tokens per sequence", min=2)
    batch: int = option(8, "sequences per optimizer step (all ranks together)", min=1)
    seed: int = option(0, "seed of the weights and of the random token batches")


def demo_gpt_config(cfg: DemoModel) -> GPTConfig:
    """Llama-style (RoPE, RMSNorm, SwiGLU, GQA); the plain attention backend, exact on any device."""
    return GPTConfig(
        vocab_size=cfg.vocab_size,
        block_size=cfg.seq_len,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_kv_head,
        n_embd=cfg.n_embd,
        attn_backend="torch",
    )


def demo_batch(cfg: DemoModel, step: int):
    """(x, y) token ids (batch, seq_len) of optimizer step `step`: the same on every rank."""
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    xy = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.seq_len + 1), generator=g)
    return xy[:, :-1], xy[:, 1:]


def demo_model(cfg: DemoModel, seed=None) -> GPT:
    torch.manual_seed(cfg.seed if seed is None else seed)
    return GPT(demo_gpt_config(cfg))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct memory blocks behind `tensors` (views of one buffer count once; None skipped)."""
    blocks = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(blocks.values())


def rank_mean(t: torch.Tensor, world: int) -> float:
    """The mean of a scalar (a loss) over all ranks; world 1: the value itself."""
    total = t.detach().float().clone()
    if world > 1:
        dist.all_reduce(total)
        total /= world
    return total.item()


def max_diff(a, b) -> float:
    """max |a - b| over tensors or over two equally long lists of tensors."""
    if isinstance(a, torch.Tensor):
        return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0
    return max((max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)


# ----------------------------------------------------------------------------------------------
# Command line: the traffic table


@dataclass
class TrafficConfig:
    params: float = option(124e6, "parameter count P (GPT-2 small: 124e6)", min=1)
    world: int = option(8, "largest number of data-parallel ranks in the table (powers of 2 up to it)", min=2)
    bytes_per_value: int = option(
        4, "bytes per gradient/weight value communicated (fp32 4, bf16 2)", choices=(2, 4)
    )


def main(argv=None):
    cfg, _ = parse_config(TrafficConfig, argv, doc=__doc__)
    worlds = [2**i for i in range(1, 64) if 2**i <= cfg.world]
    print(traffic_table(cfg.params, worlds, cfg.bytes_per_value))


if __name__ == "__main__":
    run_cli(main)
