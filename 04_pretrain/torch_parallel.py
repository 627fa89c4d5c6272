"""Data and model parallelism for pretrain.py: process setup, DDP / FSDP2 wrapping, full state dicts.

    rank, world, device = setup_distributed("auto")    # joins the process group under torchrun
    model = wrap_model(model, "fsdp", world, device)  # or "ddp"; unchanged when world == 1
    with grad_sync(model, sync=False): ...           # no gradient communication on this micro-step

What each strategy keeps on every rank (P = parameters, for mixed-precision Adam ~16 bytes/param):
- DDP: the whole model, gradients and optimizer state; gradients are averaged by an all-reduce
  (bucketed and overlapped with backward). Memory per rank: all 16P bytes.
- ZeRO-1: shard the optimizer state (m, v, fp32 master weights): each rank updates its 1/N slice of
  the weights, then all-gathers them. Gradients are still all-reduced in full.
- ZeRO-2: also shard the gradients: a reduce-scatter leaves each rank only the gradient slice its
  optimizer shard needs. Weights are still replicated.
- ZeRO-3 = FSDP (here FSDP2, `fully_shard`): also shard the parameters. Each block's weights are
  all-gathered just before its forward (and again before its backward) and freed after; gradients
  are reduce-scattered. Memory per rank ~16P/N plus one block's full weights; communication ~1.5x DDP.
Sharding is per block (`model.blocks`), then the root takes the embeddings, final norm and head.
zero3_by_hand.py writes the same thing out. Mixed precision under FSDP2 (`mixed_precision="bf16"`):
fp32 shards and optimizer, bf16 weights gathered for compute, gradients reduced in fp32
(`fsdp_mixed_precision`); tests/test_04_parallel.py measures it against one process under autocast.

Checkpoints use *full* state dicts (torch.distributed.checkpoint.state_dict, full_state_dict=True):
every shard is gathered, rank 0 writes one ordinary file, so a checkpoint from 2 FSDP ranks loads in
one process and the other way round. (Sharded DCP saves, one file per rank, scale better to big
models; a full file is simpler to read and reuse in later stages.) Optimizer state is keyed by
parameter name, not by position, for the same reason.

Interview questions it answers:
- DDP vs FSDP vs ZeRO-1/2/3: what is sharded, what is communicated (above).
- Why must gradient sync be skipped on non-final accumulation micro-steps? (each all-reduce moves
  the full gradient; with k micro-steps, syncing every time costs k times the traffic for nothing)
"""

import contextlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.devices import resolve_device


def setup_distributed(device_flag: str = "auto"):
    """(rank, world, device). Under torchrun (WORLD_SIZE set) join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (10-bit mantissa)
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def fsdp_mixed_precision(dtype: str | None):
    """FSDP2's MixedPrecisionPolicy for `dtype` ("bf16", "fp16"; None or "fp32": none).

    The sharded parameters, the optimizer and its state stay fp32 (the "master weights"); each unit's
    all-gather casts the shard to the low dtype first, so forward and backward run on bf16/fp16 weights
    and half the bytes cross the wire; the gradients are cast back to fp32 before the reduce-scatter
    (reduce_dtype), so the sum over ranks is taken in fp32 and lands in fp32 shards. Unlike autocast,
    every op runs in the low dtype (norms and softmax too, unless the model upcasts them itself, as
    03_model's RMSNorm and loss do). fp16 still needs a loss scale for small gradients
    (optimizers.DynamicLossScaler); bf16 does not."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype in (None, "fp32"):
        return MixedPrecisionPolicy()
    if dtype not in low:
        raise ValueError(f"unknown FSDP mixed precision {dtype!r}; choose fp32, bf16 or fp16")
    return MixedPrecisionPolicy(param_dtype=low[dtype], reduce_dtype=torch.float32)


def wrap_model(
    model,
    parallel: str,
    world: int,
    device: str,
    compile_=False,
    grad_checkpointing=False,
    mixed_precision=None,
):
    """The module the loop calls: the model itself, DDP(model), or the FSDP2-sharded model.
    mixed_precision ("bf16"/"fp16", FSDP only): gather low-precision weights, reduce in fp32
    (fsdp_mixed_precision); then run the loop without autocast."""
    model.grad_checkpointing = grad_checkpointing
    if compile_:
        model = torch.compile(model)
    if world == 1:
        return model
    if parallel == "ddp_by_hand":  # the same contract, written out (ddp_by_hand.py)
        from ddp_by_hand import DataParallelByHand

        return DataParallelByHand(model)
    if parallel in ("zero1", "zero2"):  # the optimizer communicates (zero_sharding.py)
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    from torch.distributed.fsdp import fully_shard

    mp = fsdp_mixed_precision(mixed_precision)
    for block in getattr(model, "_orig_mod", model).blocks:  # one all-gather unit per block
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # embeddings, final norm, head
    return model


@contextlib.contextmanager
def grad_sync(model, sync: bool):
    """Skip the gradient all-reduce / reduce-scatter on non-final micro-steps."""
    if hasattr(model, "no_sync") and not sync:  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def unwrap_for_state(model):
    """The module whose state dict a checkpoint holds: DataParallelByHand's inner module (torch's DDP
    and FSDP are understood by get_state_dict itself), so every strategy writes the same keys."""
    from ddp_by_hand import DataParallelByHand

    return model.module if isinstance(model, DataParallelByHand) else model


def full_state(model, opt, world):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=world > 1)
    return get_state_dict(model, opt, options=options)


def load_full_state(model, opt, model_state, optim_state):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model,
        opt,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )
    for group in opt.param_groups:  # set_state_dict hands tuples back as lists; the optimizers unpack
        if isinstance(group.get("betas"), list):  # (b1, b2) either way, but state_dict() must round-trip
            group["betas"] = tuple(group["betas"])


def rng_states(world) -> dict:
    """Every rank's torch RNG state (dropout), as uint8 tensors, gathered to all ranks."""
    mine = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state()
        if torch.cuda.is_available()
        else torch.zeros(0, dtype=torch.uint8),
    }
    if world == 1:
        return {"cpu": [mine["cpu"]], "cuda": [mine["cuda"]]}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return {"cpu": [g["cpu"] for g in gathered], "cuda": [g["cuda"] for g in gathered]}
