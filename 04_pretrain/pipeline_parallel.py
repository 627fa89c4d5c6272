"""Pipeline parallelism: the GPT's blocks cut into p stages, one per rank, micro-batches flowing through.

Rank s holds blocks [L·s/p, L·(s+1)/p) (stage 0 also the token embedding, the last stage the final norm,
LM head and loss). A batch is cut into m micro-batches; a forward F_i on stage s receives the activations
of micro-batch i from stage s-1 (recv), runs its blocks and sends the result on (send); a backward B_i
receives dL/d(output) from stage s+1, back-propagates through its blocks and sends dL/d(input) back.
Each stage accumulates its parameters' gradients over the m micro-batches (loss / m each), which equals
the gradient of the mean loss over the whole batch: the same numbers as one process.

Two schedules of the same work (ops per stage, in order; the order is all that differs):

    GPipe (Huang et al. 2019)    F_0 ... F_{m-1}, then B_0 ... B_{m-1}
                                 every stage stores the activations of all m micro-batches at once
    1F1B  (PipeDream-flush,      stage s: p-s-1 warm-up forwards, then alternate one F and one B,
           Narayanan et al.)     then the remaining B's: at most p-s micro-batches stored at a time
        p = 2, m = 4:   stage 0: F0 F1 B0 F2 B1 F3 B2 B3      stage 1: F0 B0 F1 B1 F2 B2 F3 B3

Both leave the same bubble: stage s cannot start before s forwards have passed it, and the last
backward reaches stage 0 only after every stage finished. With t_F, t_B per micro-batch and stage,
each stage is busy m(t_F + t_B) of a step lasting (m + p - 1)(t_F + t_B), so it idles

    bubble fraction = (p - 1) / (m + p - 1)          e.g. p = 4, m = 4: 43 %;  m = 32: 9 %

which is why m >> p is wanted, and why 1F1B matters: it allows large m at the memory of p micro-batches.
(`simulate` runs both schedules on a clock: with any t_F, t_B the idle fraction is exactly the formula.)
(Interleaved 1F1B gives each rank several smaller stages and divides the bubble by their number.)

Tied embeddings: the LM head shares the token embedding, but they sit on the first and last stage.
Each keeps a copy; after backward the two gradients are summed with one all-reduce between those two
ranks (what Megatron does), so the copies stay equal.

torch's own version is `torch.distributed.pipelining`: `PipelineStage(module, stage_index, num_stages,
device)` and `ScheduleGPipe` / `Schedule1F1B` / `ScheduleInterleaved1F1B(stage, n_microbatches,
loss_fn)`. The check below runs our stage modules under its schedules too, on gloo, and compares.

    python 04_pretrain/pipeline_parallel.py --world 2 --micro-batches 4
    torchrun --nproc_per_node=2 04_pretrain/pipeline_parallel.py --world 2 --out runs/parallel

Interview questions it answers:
- What is the pipeline bubble, and how do you shrink it? ((p-1)/(m+p-1): more micro-batches,
  interleaved stages, or zero-bubble schedules that split B into input- and weight-gradients)
- GPipe vs 1F1B: same bubble, so why 1F1B? (activation memory: p micro-batches in flight, not m)
- What is communicated between stages? (only the boundary activations B·T·d forward and their
  gradients backward, point to point: much less than TP, so PP works across nodes)
"""

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure, write_json
from position_encoding import rope_cos_sin, sinusoidal_positions  # 03_model

from collectives import DemoModel, demo_batch, demo_gpt_config, demo_model, max_diff, prints_report, run_ranks


# ----------------------------------------------------------------------------------------------
# Stages and schedules


def check_pipeline(n_layer: int, stages: int, micro_batches: int, batch: int | None = None):
    """UserError for a split that cannot run; a warning when the bubble will dominate."""
    if stages > n_layer:
        raise UserError(
            f"{stages} pipeline stages but only {n_layer} blocks: each stage needs at least "
            f"one block; use at most {n_layer} ranks or more --n-layer"
        )
    if batch is not None and batch % micro_batches:
        raise UserError(
            f"--batch {batch} does not split into {micro_batches} equal micro-batches; "
            f"choose --micro-batches dividing {batch}"
        )
    if micro_batches < stages:
        print(
            f"warning: {micro_batches} micro-batches for {stages} stages: some stage is always idle and "
            f"the bubble is {bubble_fraction(stages, micro_batches):.0%} of the step; use --micro-batches "
            f">= {stages} (ideally several times more)",
            file=sys.stderr,
        )


def stage_layers(n_layer: int, stages: int, stage: int) -> range:
    """The blocks of `stage`: contiguous, sizes differing by at most one."""
    return range(n_layer * stage // stages, n_layer * (stage + 1) // stages)


def bubble_fraction(stages: int, micro_batches: int) -> float:
    return (stages - 1) / (micro_batches + stages - 1)


def schedule(kind: str, stage: int, stages: int, micro_batches: int) -> list:
    """The ordered ops of one stage: ("F", i) forward of micro-batch i, ("B", i) its backward."""
    m = micro_batches
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind == "1f1b":
        warmup = min(stages - stage - 1, m)
        ops = [("F", i) for i in range(warmup)]
        for i in range(m - warmup):  # steady state: one forward, one backward
            ops += [("F", warmup + i), ("B", i)]
        return ops + [("B", i) for i in range(m - warmup, m)]  # cool-down
    raise UserError(f"unknown pipeline schedule {kind!r}; choose gpipe or 1f1b")


def simulate(kind: str, stages: int, micro_batches: int, t_f=1.0, t_b=1.0) -> dict:
    """Run the schedules on a clock instead of ranks: an op starts when its stage is free and its input
    exists (F_i on stage s needs F_i done on s-1; B_i needs B_i done on s+1). Returns the step time and
    the mean idle fraction; with t_f = t_b it equals (p-1)/(m+p-1) exactly for both schedules."""
    ops = [schedule(kind, s, stages, micro_batches) for s in range(stages)]
    done, free, nxt, busy = {}, [0.0] * stages, [0] * stages, [0.0] * stages
    while any(nxt[s] < len(ops[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            if nxt[s] == len(ops[s]):
                continue
            op, i = ops[s][nxt[s]]
            if op == "F":
                dep = (s - 1, "F", i) if s > 0 else None
            else:  # the last stage's B_i follows its own F_i
                dep = (s + 1, "B", i) if s < stages - 1 else (s, "F", i)
            if dep is not None and dep not in done:
                continue  # blocked in recv: try the other stages
            cost = t_f if op == "F" else t_b
            done[(s, op, i)] = free[s] = max(free[s], done[dep] if dep else 0.0) + cost
            busy[s] += cost
            nxt[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"{kind} schedule deadlocks for p={stages}, m={micro_batches}")
    span = max(free)
    return {"step_time": span, "idle_fraction": sum(1 - b / span for b in busy) / stages}


class GPTStage(nn.Module):
    """The part of a GPT that one stage runs; parameter names are the full model's (blocks.7.attn...)."""

    def __init__(self, model: nn.Module, stage: int, stages: int):
        super().__init__()
        self.cfg = model.cfg
        self.first, self.last = stage == 0, stage == stages - 1
        self.blocks = nn.ModuleDict(
            {str(i): copy.deepcopy(model.blocks[i]) for i in stage_layers(model.cfg.n_layer, stages, stage)}
        )
        if self.first:
            self.tok_emb = copy.deepcopy(model.tok_emb)
            if self.cfg.pos_emb == "learned":
                self.pos_emb = copy.deepcopy(model.pos_emb)
            self.drop = copy.deepcopy(model.drop)
        if self.last:
            self.norm_f = copy.deepcopy(model.norm_f)
            self.lm_head = copy.deepcopy(model.lm_head)  # a copy of the embedding when tied
            if self.first and self.cfg.tie_weights:
                self.lm_head.weight = self.tok_emb.weight

    def forward(self, x):
        """Stage 0: token ids (B, T); others: hidden states (B, T, d). Returns hidden states, or
        logits (B, T, V) on the last stage. The same arithmetic as GPT.forward's training path."""
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)[None]
        if self.first:
            x = self.tok_emb(x)
            if self.cfg.pos_emb == "learned":
                x = x + self.pos_emb(pos)
            elif self.cfg.pos_emb == "sinusoidal":
                x = x + sinusoidal_positions(pos, self.cfg.n_embd).to(x.dtype)
            x = self.drop(x)
        rope = None
        if self.cfg.pos_emb == "rope":
            cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)
            rope = (cos[:, None], sin[:, None])
        for block in self.blocks.values():
            x, _ = block(x, rope)
        return self.lm_head(self.norm_f(x)) if self.last else x


def lm_loss(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def run_pipeline(stage_mod: GPTStage, ops, x, y, micro_batches: int, rank: int, tied_group=None) -> dict:
    """Run one training step's ops on this rank; gradients accumulate in stage_mod's parameters.

    Sends are asynchronous (isend, waited at the end): a blocking send could wait for a receiver that
    is itself blocked sending in the other direction. Receives block: their data is needed now.
    Returns timings for the bubble measurement: per op (kind, i, start, end) and the seconds spent
    waiting in recv, plus the mean loss (last stage) and the most micro-batches stored at once."""
    mb = x.shape[0] // micro_batches
    shape = (mb, x.shape[1], stage_mod.cfg.n_embd)
    inputs, outputs, sends, timeline = {}, {}, [], []
    idle, peak, loss_sum = 0.0, 0, 0.0
    t0 = time.perf_counter()
    for kind, i in ops:
        start = time.perf_counter()
        if kind == "F":
            if stage_mod.first:
                inp = x[i * mb : (i + 1) * mb]
            else:
                inp = torch.empty(shape, device=x.device)
                dist.recv(inp, rank - 1)
                inp.requires_grad_()
            t_recv = time.perf_counter()
            out = stage_mod(inp)
            if stage_mod.last:
                out = lm_loss(out, y[i * mb : (i + 1) * mb]) / micro_batches
                loss_sum += out.item()
            else:
                act = out.detach()
                sends.append((dist.isend(act, rank + 1), act))
            inputs[i], outputs[i] = inp, out
            peak = max(peak, len(outputs))
        else:
            inp, out = inputs.pop(i), outputs.pop(i)
            t_recv = time.perf_counter()
            if stage_mod.last:
                out.backward()
            else:
                grad = torch.empty_like(out)
                dist.recv(grad, rank + 1)
                t_recv = time.perf_counter()
                out.backward(grad)
            if not stage_mod.first:
                sends.append((dist.isend(inp.grad, rank - 1), inp.grad))
        idle += t_recv - start
        timeline.append((kind, i, t_recv - t0, time.perf_counter() - t0))
    for work, _ in sends:
        work.wait()
    if tied_group is not None:  # sum the two copies' gradients of the tied embedding
        w = stage_mod.tok_emb.weight if stage_mod.first else stage_mod.lm_head.weight
        dist.all_reduce(w.grad, group=tied_group)
    return {
        "timeline": timeline,
        "idle_s": idle,
        "step_s": time.perf_counter() - t0,
        "loss": loss_sum,
        "peak_stored": peak,
    }


def tied_embedding_group(model, stages: int):
    """The process group of the first and last stage when they hold copies of a tied weight
    (new_group must be called on every rank, in the same order)."""
    if stages > 1 and model.cfg.tie_weights:
        return dist.new_group([0, stages - 1])
    return None


# ----------------------------------------------------------------------------------------------
# The check: gradients against one process; bubble against the formula; torch.distributed.pipelining


@dataclass
class PipelineConfig(DemoModel):
    micro_batches: int = option(4, "micro-batches m per step (the bubble is (p-1)/(m+p-1))", min=1)
    repeats: int = option(3, "timed steps per schedule (the idle fraction is their median)", min=1)
    torch_pipelining: bool = option(
        True, "also run the stages under torch.distributed.pipelining's schedules"
    )
    out: str = option("", "folder for pipeline.json and pipeline_timeline.png (empty: print only)")


def full_gradients(model, x, y) -> dict:
    model.zero_grad(set_to_none=True)
    lm_loss(model(x)[0], y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_diff(stage_mod: GPTStage, ref: dict) -> float:
    """max |grad - one-process grad| over this stage's parameters (a tied head copy vs the embedding)."""
    name = lambda n: "tok_emb.weight" if n == "lm_head.weight" and stage_mod.cfg.tie_weights else n
    return max(max_diff(p.grad, ref[name(n)]) for n, p in stage_mod.named_parameters() if p.requires_grad)


def torch_pipelining_grads(model, stage, stages, kind, x, y, micro_batches) -> float:
    """A GPTStage whose gradients come from torch.distributed.pipelining's schedule `kind`
    (its loss_fn is ours; it scales each micro-batch's gradients by 1/m as we do)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    mod = GPTStage(model, stage, stages)
    pipe_stage = PipelineStage(mod, stage, stages, torch.device("cpu"))
    sched = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[kind](pipe_stage, micro_batches, loss_fn=lm_loss)
    if stage == 0:
        sched.step(x)
    elif stage == stages - 1:
        sched.step(target=y)
    else:
        sched.step()
    return mod


def pp_worker(rank, world, cfg: PipelineConfig) -> dict:
    torch.set_num_threads(1)  # comparable stage timings on a shared machine
    model = demo_model(cfg)
    x, y = demo_batch(cfg, 0)
    ref = full_gradients(model, x, y)
    tied = tied_embedding_group(model, world)
    out = {
        "stage_blocks": list(stage_layers(cfg.n_layer, world, rank)),
        "bubble_formula": bubble_fraction(world, cfg.micro_batches),
    }
    for kind in ("gpipe", "1f1b"):
        ops = schedule(kind, rank, world, cfg.micro_batches)
        runs = []
        for _ in range(cfg.repeats):
            stage_mod = GPTStage(model, rank, world)
            dist.barrier()
            runs.append(run_pipeline(stage_mod, ops, x, y, cfg.micro_batches, rank, tied))
        runs.sort(key=lambda r: r["idle_s"] / r["step_s"])
        r = runs[len(runs) // 2]
        out[kind] = {
            "ops": [f"{k}{i}" for k, i in ops],
            "max_diff_grad": grad_diff(stage_mod, ref),
            "idle_fraction": r["idle_s"] / r["step_s"],
            "step_s": r["step_s"],
            "timeline": r["timeline"],
            "peak_stored": r["peak_stored"],
        }
        if stage_mod.last:
            out[kind]["loss"], out["loss_single"] = r["loss"], lm_loss(model(x)[0], y).item()
        if cfg.torch_pipelining:
            mod = torch_pipelining_grads(model, rank, world, kind, x, y, cfg.micro_batches)
            if tied is not None:
                w = mod.tok_emb.weight if mod.first else mod.lm_head.weight
                dist.all_reduce(w.grad, group=tied)
            out[kind]["torch_pipelining_max_diff_grad"] = grad_diff(mod, ref)
    every = [None] * world
    dist.all_gather_object(every, out)  # each rank returns all stages' results
    return every


def report(results: list, cfg: PipelineConfig) -> str:
    p, m = cfg.world, cfg.micro_batches
    lines = [
        f"pipeline over {p} stages (blocks per stage {[r['stage_blocks'] for r in results]}), "
        f"{m} micro-batches of {cfg.batch // m}"
    ]
    for kind in ("gpipe", "1f1b"):
        lines.append(
            f"  {kind}: "
            + " | ".join(f"stage {s}: {' '.join(r[kind]['ops'])}" for s, r in enumerate(results))
        )
    lines += [
        "",
        f"{'':<8}{'max |grad diff| vs 1 process':>30}{'torch.pipelining':>18}{'idle (measured)':>17}"
        f"{'bubble (p-1)/(m+p-1)':>22}{'stored micro-batches':>22}",
    ]
    for kind in ("gpipe", "1f1b"):
        diff = max(r[kind]["max_diff_grad"] for r in results)
        tdiff = max(r[kind].get("torch_pipelining_max_diff_grad", float("nan")) for r in results)
        idle = sum(r[kind]["idle_fraction"] for r in results) / p
        stored = "/".join(str(r[kind]["peak_stored"]) for r in results)
        lines.append(
            f"{kind:<8}{diff:>30.1e}{tdiff:>18.1e}{idle:>17.1%}{results[0]['bubble_formula']:>22.1%}"
            f"{stored:>22}"
        )
    last = results[-1]
    lines.append(
        f"loss: 1F1B {last['1f1b']['loss']:.6f}, GPipe {last['gpipe']['loss']:.6f}, one process "
        f"{last['loss_single']:.6f}"
    )
    lines.append(
        "(idle = time blocked in recv / step time, mean over stages; it also counts the transfer "
        "itself and this machine's noise, and B takes ~2x F, so it only approximates the formula)"
    )
    return "\n".join(lines)


def plot_timeline(results: list, cfg: PipelineConfig, path: Path):
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(9, 1.2 + 0.7 * cfg.world * 2), sharex=False)
    for ax, kind in zip(axes, ("gpipe", "1f1b")):
        for s, r in enumerate(results):
            for k, i, a, b in r[kind]["timeline"]:
                ax.barh(s, b - a, left=a, color="tab:blue" if k == "F" else "tab:orange", edgecolor="k")
                ax.text((a + b) / 2, s, f"{k}{i}", ha="center", va="center", fontsize=7, color="w")
        ax.set(
            yticks=range(len(results)),
            yticklabels=[f"stage {s}" for s in range(len(results))],
            xlabel="seconds",
            title=f"{kind}: measured F (blue) and B (orange); gaps are the bubble",
        )
        ax.invert_yaxis()
    save_figure(fig, path)


def main(argv=None):
    cfg, _ = parse_config(PipelineConfig, argv, doc=__doc__)
    demo_gpt_config(cfg)  # model settings that cannot run fail here
    check_pipeline(cfg.n_layer, cfg.world, cfg.micro_batches, cfg.batch)
    if cfg.world < 2:
        raise UserError("--world must be at least 2 (one rank per stage)")
    results = run_ranks(pp_worker, cfg.world, cfg)[0]  # every stage's results
    if prints_report():
        print(report(results, cfg))
        if cfg.out:
            out = Path(cfg.out)
            write_json(out / "pipeline.json", {"config": asdict(cfg), "stages": results})
            plot_timeline(results, cfg, out / "pipeline_timeline.png")


if __name__ == "__main__":
    run_cli(main)
