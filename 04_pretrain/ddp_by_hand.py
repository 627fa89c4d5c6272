"""Data parallelism by hand: what torch's DistributedDataParallel does, in one small class.

Every rank holds the whole model and runs forward and backward on its own slice of the batch; the
only communication is the gradient average, so that every rank takes the same optimizer step:

    g = (1/N) Σ_r g_r          (g_r: the gradient of rank r's mean loss; equal batch slices)

which is exactly the gradient of the mean loss over the whole batch. Three details make it fast:

1. Buckets. One all-reduce per parameter tensor pays a latency per call (~150 calls for GPT-2);
   one call for the whole model could only start after backward ends. Parameters are grouped into
   buckets of at most `bucket_mb` MB (torch's DDP: 25), in reverse registration order, which is
   roughly the order backward produces their gradients.
2. Overlap. A post-accumulate-grad hook on every parameter counts the gradients that are ready; when
   a bucket is full its all-reduce starts asynchronously (async_op=True) while backward continues
   with earlier layers. At the end of backward (a callback queued on the autograd engine, as DDP and
   FSDP do) the loop waits for every handle and copies the averaged gradients back into `.grad`.
3. no_sync. With gradient accumulation, gradients of the non-final micro-steps are summed locally;
   communicating them would move k times the bytes for the same result. As in torch's DDP, the
   forward decides: the backward of a forward run inside `no_sync()` (wherever that backward is
   called) leaves the hooks idle; the final micro-step's backward all-reduces the accumulated sum.

Traffic per optimizer step: one all-reduce of all gradients, 4·P bytes in fp32, of which a ring
sends 2(N-1)/N · 4P per rank (collectives.py), whatever the number of micro-steps.

    python 04_pretrain/ddp_by_hand.py --world 2                 # equality with torch DDP + traffic table
    torchrun --nproc_per_node=2 04_pretrain/ddp_by_hand.py --world 2

    model = DataParallelByHand(model, bucket_mb=25)   # broadcasts rank 0's weights
    with model.no_sync(): loss.backward()            # accumulation micro-steps: no communication
    loss.backward()                                  # last micro-step: buckets all-reduced, averaged

The same `no_sync` contract as torch's DDP, so torch_parallel.grad_sync(model, sync) drives both.
What torch's DDP adds: buckets rebuilt from the order gradients actually arrived in the first step,
`.grad` tensors that are views into the bucket (no copy), a small first bucket so communication starts
sooner, detection of parameters that got no gradient, and NCCL streams on GPUs.

Interview questions it answers:
- Why is averaging gradients the same as training on the whole batch? (the mean loss over the batch
  is the mean of the per-rank mean losses when slices are equal; gradients are linear)
- Why buckets, and why in reverse order? (fewer, larger messages amortize latency; backward produces
  the last layers' gradients first, so their bucket can be sent while earlier layers still compute)
- Why must every rank start from the same weights? (the same averaged gradient then keeps them
  identical forever; a broadcast from rank 0 guarantees it whatever each rank's seed was)
- What does no_sync save? (k-1 of k all-reduces per optimizer step under k-step accumulation)
"""

import contextlib
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

from collectives import DemoModel, demo_batch, demo_model, max_diff, ring_bytes, run_demo
from optimizers import AdamW, param_groups


def broadcast_parameters(module: nn.Module, src: int = 0):
    """Overwrite every parameter and buffer with rank src's values."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t, src)


def make_buckets(params, cap_bytes: float) -> list:
    """Lists of parameters of at most cap_bytes each (a larger tensor gets a bucket of its own),
    in reverse order: backward reaches the last layers first."""
    buckets, current, size = [], [], 0
    for p in reversed(params):
        nbytes = p.numel() * p.element_size()
        if current and size + nbytes > cap_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


class DataParallelByHand(nn.Module):
    """Wraps a model: same forward; backward also averages the gradients over all ranks.

    Stats for the traffic table: `calls` (all-reduces launched) and `bytes` (payload handed to them)
    since construction; `launch_log` has, for the last backward, how many gradients were ready when
    each bucket's all-reduce started (less than all of them = it overlapped with backward)."""

    def __init__(self, module: nn.Module, bucket_mb: float = 25.0, group=None):
        super().__init__()
        self.module = module
        self.group = group
        self.world = dist.get_world_size(group)
        broadcast_parameters(module)
        params = [p for p in module.parameters() if p.requires_grad]  # a tied weight appears once
        self.buckets = make_buckets(params, bucket_mb * 2**20)
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.n_params = len(params)
        self.sync = True  # outside no_sync()
        self.sync_backward = True  # what the last forward decided for its backward
        self.ready = [0] * len(self.buckets)  # gradients ready per bucket in this backward
        self.in_flight = []  # (async work handle, bucket index, flat buffer)
        self.calls, self.bytes, self.launch_log = 0, 0, []
        for p in params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():  # an evaluation forward (no_grad) has no backward
            self.sync_backward = self.sync
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Forwards run inside: their backward only accumulates into .grad, without communication."""
        before, self.sync = self.sync, False
        try:
            yield
        finally:
            self.sync = before

    def _grad_ready(self, p: torch.Tensor):
        """Runs when p.grad holds this backward's full gradient (all uses of p accumulated)."""
        if not self.sync_backward:
            return
        if not any(self.ready):  # the first gradient of this backward
            torch.autograd.Variable._execution_engine.queue_callback(self._wait_and_unpack)
            self.launch_log = []
        b = self.bucket_of[p]
        self.ready[b] += 1
        if self.ready[b] == len(self.buckets[b]):
            self._launch(b)

    def _launch(self, b: int):
        """Copy the bucket's gradients into one flat buffer, pre-divide by N, start the all-reduce.
        (Dividing before summing, as DDP does, keeps fp16 sums from overflowing.)"""
        flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[b]]).div_(self.world)
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        self.in_flight.append((work, b, flat))
        self.calls += 1
        self.bytes += flat.numel() * flat.element_size()
        self.launch_log.append(sum(self.ready))

    def _wait_and_unpack(self):
        """End of backward: wait for every bucket, write the averaged gradients back into .grad."""
        if len(self.in_flight) != len(self.buckets):
            missing = [i for i, n in enumerate(self.ready) if n < len(self.buckets[i])]
            raise RuntimeError(
                f"buckets {missing} never became ready: some parameters got no gradient "
                "in this backward (unused parameters); every rank would wait forever"
            )
        for work, b, flat in self.in_flight:
            work.wait()
            for p, g in zip(self.buckets[b], flat.split([p.numel() for p in self.buckets[b]])):
                p.grad.copy_(g.view_as(p))
        self.in_flight, self.ready = [], [0] * len(self.buckets)


# ----------------------------------------------------------------------------------------------
# The check: the same steps with torch's DDP, with our DDP, and in one process on the whole batch


@dataclass
class DDPConfig(DemoModel):
    steps: int = option(3, "optimizer steps compared", min=1)
    accum: int = option(2, "micro-steps per optimizer step (no_sync on all but the last)", min=1)
    bucket_mb: float = option(0.05, "bucket size cap in MB (torch's DDP default: 25)", min=1e-6)
    lr: float = option(1e-2, "AdamW learning rate (large, so that a wrong step would show)", min=0)
    out: str = option("", "folder to write ddp_by_hand.json into (empty: print only)")


def check_config(cfg: DDPConfig):
    if cfg.batch % (cfg.world * cfg.accum):
        raise UserError(
            f"--batch {cfg.batch} must split evenly into --world {cfg.world} x --accum "
            f"{cfg.accum} micro-batches; choose a multiple of {cfg.world * cfg.accum}"
        )


def train_steps(model, opt, cfg, rank, world, sync_every_micro=False):
    """cfg.steps optimizer steps; rank r's rows of micro-step k are [k][r] of the batch (pretrain.py's
    layout). world=1, rank=0: the whole batch in one process. Returns (losses, grads of the first step:
    later steps start from weights that already differ by rounding)."""
    rows = cfg.batch // (world * cfg.accum)
    losses, grads = [], []
    for step in range(cfg.steps):
        x, y = demo_batch(cfg, step)
        total = torch.zeros(())
        for k in range(cfg.accum):
            i = (k * world + rank) * rows
            last = k == cfg.accum - 1
            quiet = (
                model.no_sync()
                if world > 1 and not last and not sync_every_micro
                else contextlib.nullcontext()
            )
            with quiet:
                _, loss = model(x[i : i + rows], y[i : i + rows])
                (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
        if world > 1:
            dist.all_reduce(total)
            total /= world
        losses.append(total.item())
        grads = grads or [p.grad.clone() for p in model.parameters()]
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


def ddp_worker(rank, world, cfg: DDPConfig) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    raw = demo_model(cfg, seed=cfg.seed + rank)  # different on every rank: the broadcast fixes it
    ours = DataParallelByHand(raw, cfg.bucket_mb)
    theirs = DistributedDataParallel(copy.deepcopy(raw), bucket_cap_mb=cfg.bucket_mb)
    single = copy.deepcopy(raw)
    opts = [AdamW(param_groups(m, 0.1), lr=cfg.lr, betas=(0.9, 0.95)) for m in (raw, theirs.module, single)]
    t0 = time.perf_counter()
    ours_losses, ours_grads = train_steps(ours, opts[0], cfg, rank, world)
    t_ours = time.perf_counter() - t0
    ddp_losses, ddp_grads = train_steps(theirs, opts[1], cfg, rank, world)
    one_losses, one_grads = train_steps(single, opts[2], cfg, 0, 1)
    calls_per_step, bytes_per_step = ours.calls / cfg.steps, ours.bytes / cfg.steps
    log = ours.launch_log
    eager = DataParallelByHand(copy.deepcopy(raw), cfg.bucket_mb)  # all-reduce on every micro-step
    train_steps(
        eager, AdamW(param_groups(eager.module, 0.1), lr=cfg.lr), cfg, rank, world, sync_every_micro=True
    )
    return {
        "loss_ours": ours_losses,
        "loss_torch_ddp": ddp_losses,
        "loss_single": one_losses,
        "max_diff_loss_vs_torch_ddp": max_diff(torch.tensor(ours_losses), torch.tensor(ddp_losses)),
        "max_diff_grad_vs_torch_ddp": max_diff(ours_grads, ddp_grads),
        "max_diff_grad_vs_single": max_diff(ours_grads, one_grads),
        "max_diff_weight_vs_torch_ddp": max_diff(list(raw.parameters()), list(theirs.module.parameters())),
        "max_diff_weight_vs_single": max_diff(list(raw.parameters()), list(single.parameters())),
        "buckets": len(ours.buckets),
        "params": sum(p.numel() for p in raw.parameters()),
        "grads_ready_at_each_launch": log,
        "grad_tensors": ours.n_params,
        "calls_per_step": calls_per_step,
        "bytes_per_step": bytes_per_step,
        "calls_per_step_without_no_sync": eager.calls / cfg.steps,
        "bytes_per_step_without_no_sync": eager.bytes / cfg.steps,
        "seconds_ours": t_ours,
    }


def report(r: dict, cfg: DDPConfig) -> str:
    N, P = cfg.world, r["params"]
    wire = ring_bytes("all_reduce", r["bytes_per_step"], N)
    lines = [
        f"DDP by hand vs torch DDP, {N} ranks, {cfg.steps} steps x {cfg.accum} micro-steps, {P:,} params, "
        f"{r['buckets']} buckets of <= {cfg.bucket_mb} MB",
        f"  max |loss diff|    vs torch DDP {r['max_diff_loss_vs_torch_ddp']:.2e}",
        f"  max |grad diff|    vs torch DDP {r['max_diff_grad_vs_torch_ddp']:.2e}   vs one process on the "
        f"whole batch {r['max_diff_grad_vs_single']:.2e}",
        f"  max |weight diff|  vs torch DDP {r['max_diff_weight_vs_torch_ddp']:.2e}   vs one process "
        f"{r['max_diff_weight_vs_single']:.2e} after {cfg.steps} AdamW steps of lr {cfg.lr}",
        "  (gradients: first step; AdamW divides by sqrt(v), so rounding-level gradient differences on "
        "coordinates whose gradient is ~0 become lr-sized steps; torch DDP sums in our order: 0)",
        f"  overlap: gradients ready (of {r['grad_tensors']}) when each bucket's all-reduce started: "
        f"{r['grads_ready_at_each_launch']}",
        "",
        f"communication per optimizer step, per rank (fp32 gradients, 4P = {4 * P:,} bytes)",
        f"{'':<26}{'all-reduces':>12}{'payload bytes':>16}{'sent on a ring':>16}",
        f"{'no_sync on micro-steps':<26}{r['calls_per_step']:>12.0f}{r['bytes_per_step']:>16,.0f}{wire:>16,.0f}",
        f"{'sync every micro-step':<26}{r['calls_per_step_without_no_sync']:>12.0f}"
        f"{r['bytes_per_step_without_no_sync']:>16,.0f}"
        f"{ring_bytes('all_reduce', r['bytes_per_step_without_no_sync'], N):>16,.0f}",
        f"(a ring all-reduce sends 2(N-1)/N x payload per rank = {2 * (N - 1) / N:.2f} x at N={N}: "
        "a reduce-scatter then an all-gather, each (N-1)/N;",
        f" other N and the ZeRO stages: python 04_pretrain/collectives.py --params {P})",
    ]
    return "\n".join(lines)


def main(argv=None):
    cfg, _ = parse_config(DDPConfig, argv, doc=__doc__)
    check_config(cfg)
    if cfg.world < 2:
        raise UserError("--world must be at least 2 to compare data parallelism with one process")
    run_demo(ddp_worker, cfg, report, "ddp_by_hand")


if __name__ == "__main__":
    run_cli(main)
