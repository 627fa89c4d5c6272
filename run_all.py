"""The whole pipeline in one command: every stage's own command line, in order, into one run folder.

    python run_all.py                              # tiny preset into runs/tiny/ (offline, CPU, <= 15 min on 2 cores)
    python run_all.py --preset micro --run smoke   # seconds per stage: checks that everything connects
    python run_all.py --preset small               # a bigger CPU run (each stage's `small` values where it has them)
    python run_all.py --preset gpt2 --nproc 8 --data web/*.txt   # pretraining through torchrun on 8 GPUs
    python run_all.py --from sft                   # redo sft and everything after it, reusing data .. pretrain
    python run_all.py --only pretrain              # just that stage (its inputs must be there already)
    python run_all.py --add scaling,overfit        # also the optional experiments (scaling ~8 min on 2 cores)
    python run_all.py --data a.txt b.jsonl         # start from your text instead of the generated corpus
    python run_all.py --jobs 1                     # one stage at a time, in the registry's order

Each stage runs as a subprocess of its own command (the same one its README shows), so what this file
does is exactly what you would type by hand; nothing here knows how a stage works. The stages and
their order come from the registry, `STAGES` in common/layout.py: one line per stage with its name,
its script and the folder it writes. For `tiny` (the default) every stage runs with its own
defaults, plus the few flags of `TINY_FLAGS` that keep the whole run within its 15-minute budget;
for `micro` (the smoke test), `small` and `gpt2`, a stage that has that preset in its own
`parse_config` presets gets `--preset NAME`: the values live in the stage, beside its config, not
here. A stage whose script is not in this checkout is skipped with a line saying so.

Stages run two at a time (--jobs 2, the default), as `make -j2` runs a Makefile: the registry says
which folders each stage reads, so a stage starts as soon as the stages writing them have finished
(after SFT, the reward model, DPO, GRPO and distillation do not need each other). Two at a time fills
the second core that a decoding loop leaves idle (sampling a token at a time from a small model is
one thread's work). A stage whose outcome holds a speed (`timed` in the registry: pretraining's
tokens/s, distillation's and quantization's decoding speeds, speculative decoding, serving) runs with
nothing beside it, so its numbers are this machine's alone. Every stage is its own deterministic
process, so its results are the same at --jobs 1 and 2; only the wall time differs.

One line per stage as it ends: its number, name, wall time and headline result (report.py reads it from the
outcome the stage wrote). The stage's own output goes to runs/<name>/logs/<stage>.log (`--show-output`
also prints it). A stage that fails stops the run with its one-line error and the `--from` command
that resumes from it; its output goes to <stage>.failed.log, and <stage>.log stays the log of the last
good run, the one the stage's folder holds. At the end: the time per stage and in total, and report.py writes
runs/<name>/report.md, the report card.

Reusing a run: a fresh run refuses to write into a run folder that already holds one unless
`--overwrite`; `--from STAGE` reruns STAGE and every later one over their old folders (passing them
--overwrite) and leaves the earlier ones as they are, which the stages check (`check_artifact`: present,
undamaged, not stale) before reading them.

Interview questions it answers:
- How do you make a multi-stage ML pipeline restartable? (each stage writes a folder with a manifest
  last; a stage checks its inputs' manifests; rerun from the first stage whose input changed)
- Why run stages as subprocesses, not function calls? (a fresh process per stage: no state leaks
  between stages, the memory is returned, a crash is contained, and the command is reproducible)
- How do you run a pipeline's independent steps in parallel safely? (declare each step's inputs; start
  a step when every step writing an input has finished, a topological order of the DAG; keep timed
  measurements alone on the machine)
"""

import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent
# Cross-stage imports (README, "How the code is laid out").
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli, set_interrupt_hint
from common.files import markdown_table, read_json, write_json
from common.layout import STAGE_NAMES, STAGES, RunLayout, Stage, in_registry_order, stage_env, writer_of

from common import report_card

PRESETS = ("micro", "tiny", "small", "gpt2")
# The tiny run's 15-minute budget on 2 cores: stages whose own defaults are a bigger experiment get
# fewer repeats here (what you would type by hand for a quick run); the stage's defaults stay its own.
# (Distillation keeps its 3 seeds: its bar is a t interval over seeds, and with 2 seeds its t is 12.7,
# not 4.3.) sft_compare runs two sft.py processes at once: each answers its questions on one thread
# (decoding), which leaves the other core idle half the time; the two share the cores without
# collapsing because run_all's stages spin only briefly at OpenMP barriers (common/layout.stage_env).
# The results are the same: every run is its own deterministic process.
# The serving benchmark serves its request stream in real time, many times over (each policy all at
# once, 5 alternating pairs at the judged rate, the sweep, the prefix cache): 96 requests instead of
# its default 160 keep the stream's shape (a fifth with long answers) at 3/5 of the time.
TINY_FLAGS = {"sft_compare": ["--jobs", "2"], "serve": ["--requests", "96"]}
TIMES = "run_all.json"  # runs/<name>/run_all.json: wall seconds per stage


def stage_folder_args(stage: Stage, run: Path) -> list:
    """How a stage is told where the run is (bench_serve takes a checkpoint and an output folder)."""
    if not stage.run_flag:
        layout = RunLayout(run)
        return ["--ckpt", str(layout.pretrain / "best.pt"), "--out", str(layout.folder(stage.folder))]
    return [stage.run_flag, str(run)]


@dataclass
class RunAllConfig:
    preset: str = option(
        "tiny", "micro (seconds per stage, for the smoke test), tiny, small, gpt2", choices=PRESETS
    )
    run: str = option(
        "",
        "run name: artifacts go to runs/<run> (default: the preset's name); a name with a / "
        "is used as the folder itself",
    )
    data: list = option([], "text files (.txt/.jsonl) to start from instead of the generated corpus")
    nproc: int = option(1, "processes for pretraining; > 1 launches it through torchrun (one per GPU)", min=1)
    add: list = option(
        [], "optional stages to run too: " + ", ".join(s.name for s in STAGES if s.optional), sep=","
    )
    overwrite: bool = option(False, "replace the run already in the run folder, all stages")
    jobs: int = option(
        2,
        "stages run at once: a stage starts when the stages it reads have finished; a stage that times "
        "itself (tokens/s, speedups) runs alone (1 = one after another, as the registry lists them)",
        min=1,
    )
    show_output: bool = option(False, "print each stage's own output too (it is always in runs/<run>/logs/)")


def add_stage_flags(parser):
    parser.add_argument(
        "--from",
        dest="from_stage",
        choices=STAGE_NAMES,
        default=None,
        metavar="STAGE",
        help="rerun this stage and every later one, reusing the earlier stages' folders; "
        "STAGE is one of " + ", ".join(STAGE_NAMES),
    )
    parser.add_argument(
        "--only",
        dest="only_stage",
        choices=STAGE_NAMES,
        default=None,
        metavar="STAGE",
        help="run only this stage (its inputs must already be in the run folder)",
    )


def check_run_all_config(cfg: RunAllConfig, from_stage, only_stage):
    unknown = [
        a for a in cfg.add if a not in STAGE_NAMES or not next(s for s in STAGES if s.name == a).optional
    ]
    if unknown:
        raise UserError(
            f"--add {','.join(unknown)}: not an optional stage; choose from "
            f"{', '.join(s.name for s in STAGES if s.optional)}"
        )
    if from_stage and only_stage:
        raise UserError("--from and --only exclude each other; pass one of them")
    if cfg.nproc > 1 and cfg.preset == "micro":
        raise UserError("--nproc > 1 is for GPU pretraining; the micro preset runs in one process")
    for f in cfg.data:
        if not Path(f).is_file():
            raise UserError(f"--data {f}: no such file; pass .txt or .jsonl files")
    if cfg.run and not Path(cfg.run).is_absolute() and ".." in Path(cfg.run).parts:
        raise UserError(
            f"--run {cfg.run}: climbs out of this folder with '..'; give a run name (it goes to runs/<name>) "
            "or an absolute path"
        )


def run_folder(cfg: RunAllConfig) -> Path:
    name = cfg.run or cfg.preset
    return Path(name) if "/" in name else Path("runs") / name


def plan(cfg: RunAllConfig, from_stage=None, only_stage=None) -> list:
    """[(stage, why it is skipped, or None)] in order, for the stages this invocation concerns."""
    if only_stage:
        chosen = [s for s in STAGES if s.name == only_stage]
    else:
        start = STAGE_NAMES.index(from_stage) if from_stage else 0
        chosen = [s for s in STAGES[start:] if not s.optional or s.name in cfg.add]
    return [(s, skip_reason(s, cfg)) for s in chosen]


def skip_reason(s: Stage, cfg: RunAllConfig):
    if not (REPO / s.script).is_file():
        return "not in this checkout"
    if s.needs_tasks and cfg.data:
        return "needs the synthetic task sets (data/tasks/), which --data text does not make"
    return None


def command(stage: Stage, cfg: RunAllConfig, run: Path, overwrite: bool) -> list:
    """The stage's command line, as you would type it."""
    argv = [
        *stage_folder_args(stage, run),
        *(["--preset", cfg.preset] if cfg.preset in stage.presets else []),
        *(TINY_FLAGS.get(stage.name, []) if cfg.preset == "tiny" else []),
    ]
    if stage.name == "data" and cfg.data:
        argv += ["--input", *cfg.data]
    if overwrite and stage.overwrite:
        argv.append("--overwrite")
    if stage.name == "pretrain" and cfg.nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={cfg.nproc}",
            str(REPO / stage.script),
            *argv,
        ]
    return [sys.executable, str(REPO / stage.script), *argv]


def startable(todo: list, running: list, jobs: int) -> list:
    """The stages of `todo` (in registry order) to start now beside `running`: each one whose inputs
    are all made (no stage of `todo` or `running` writes a folder it reads), while fewer than `jobs`
    run; a `timed` stage only when nothing else runs, and nothing beside it."""
    waiting = {s.name for s in todo + running}
    chosen = []
    for stage in todo:
        busy = running + chosen
        if len(busy) >= jobs or any(s.timed for s in busy):
            break
        if {writer_of(f).name for f in stage.upstream} & waiting or (stage.timed and busy):
            continue
        chosen.append(stage)
    return chosen


def last_error_line(log_text: str, returncode: int) -> str:
    """The stage's one-line error (`error: ...`), else the last line it printed (a traceback's last line)."""
    lines = [l for l in log_text.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return lines[-1].strip() if lines else f"exit code {returncode} with no output"


def run_stage(stage: Stage, argv: list, log: Path, show_output: bool, prefix: str = "    ") -> tuple:
    """Run one stage, its stdout and stderr into `log` (and the terminal with show_output).
    Returns (return code, the path of its log, the log's text). The output goes to <stage>.running.log
    while it runs; success makes it <stage>.log, failure <stage>.failed.log, so a failed rerun never
    replaces the log of the stage's last good run (the one its folder still holds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = stage_env({**os.environ, "PYTHONUNBUFFERED": "1"})  # short spins at barriers: common/devices.py
    running = log.with_name(f"{stage.name}.running.log")
    with open(running, "w", encoding="utf-8") as f:
        f.write("$ " + shlex.join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            f.flush()  # `tail -f` on the log follows the stage
            if show_output:
                print(prefix + line, end="", flush=True)
        proc.wait()
    final = log if proc.returncode == 0 else log.with_name(f"{stage.name}.failed.log")
    os.replace(running, final)
    if proc.returncode == 0:
        log.with_name(f"{stage.name}.failed.log").unlink(missing_ok=True)
    return proc.returncode, final, final.read_text(encoding="utf-8")


def resume_command(cfg: RunAllConfig, stage: str) -> str:
    argv = ["python", "run_all.py", "--preset", cfg.preset]
    argv += ["--run", cfg.run] if cfg.run else []
    argv += ["--data", *cfg.data] if cfg.data else []
    argv += ["--nproc", str(cfg.nproc)] if cfg.nproc > 1 else []
    argv += ["--add", ",".join(cfg.add)] if cfg.add else []
    return shlex.join([*argv, "--from", stage])


def refuse_existing_run(steps, run: Path, cfg: RunAllConfig, from_stage, only_stage):
    """A fresh run does not silently overwrite another one: the stages would refuse one by one, late."""
    if cfg.overwrite or from_stage or only_stage:
        return
    there = [s.folder for s, why in steps if why is None and (run / s.folder).exists()]
    if there:
        raise UserError(
            f"{run} already holds a run ({', '.join(there)}); pass --overwrite to redo it all, "
            f"--from STAGE to redo from one stage on, or choose another --run"
        )


def fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def main(argv=None):
    cfg, args = parse_config(RunAllConfig, argv, doc=__doc__, extra=add_stage_flags)
    check_run_all_config(cfg, args.from_stage, args.only_stage)
    run = run_folder(cfg)
    steps = plan(cfg, args.from_stage, args.only_stage)
    refuse_existing_run(steps, run, cfg, args.from_stage, args.only_stage)
    overwrite = cfg.overwrite or bool(args.from_stage or args.only_stage)
    print(
        f"run_all: preset {cfg.preset} into {run}/ ({len(steps)} stages; each stage's output in {run}/logs/)",
        flush=True,
    )
    times, t_start = read_times(run), time.time()
    number = {stage.name: f"[{i:>2}/{len(steps)}] {stage.name:<13}" for i, (stage, _) in enumerate(steps, 1)}
    for stage, skip in steps:
        if skip:
            print(f"{number[stage.name]} skipped: {stage.script} {skip}", flush=True)
    failed = run_stages([stage for stage, skip in steps if not skip], cfg, run, overwrite, number, times)
    if failed:
        stage, rc, log_path, log_text = failed
        print(
            f"error: stage {stage.name} failed: {last_error_line(log_text, rc)}; its output is in "
            f"{log_path}; fix it, then resume with `{resume_command(cfg, stage.name)}`",
            file=sys.stderr,
        )
        sys.exit(rc if rc in (2, 130) else 1)
    times["last_invocation_s"] = round(time.time() - t_start, 1)
    write_json(run / TIMES, times)
    path = report_card.write_report(run)
    rows = [
        {"stage": k, "seconds": f"{times['seconds'][k]:.1f}"} for k in in_registry_order(times["seconds"])
    ]
    print(
        f"\ntime per stage (wall, this machine now; with --jobs {cfg.jobs} stages overlap, so the "
        f"invocation's time is less than their sum):\n"
        f"{markdown_table(rows + [{'stage': 'this invocation', 'seconds': f'{time.time() - t_start:.1f}'}], ['stage', 'seconds'])}"
    )
    print(f"wrote {path}")


def run_stages(todo: list, cfg: RunAllConfig, run: Path, overwrite: bool, number: dict, times: dict):
    """Run the stages of `todo`, up to cfg.jobs at once (`startable` says which may start), each in a
    thread that waits on its process; one line per stage as it ends. After a failure nothing new starts
    and the stages already running finish. Returns (stage, return code, log path, log text) of the
    failed stage that comes first in the registry (`--from` it redoes every other), or None."""
    failed, running = None, {}  # running: future -> (stage, its start time)
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        while True:
            ready = [] if failed else startable(todo, [s for s, _ in running.values()], cfg.jobs)
            for stage in ready:
                todo.remove(stage)
                argv = command(stage, cfg, run, overwrite)
                log = RunLayout(run).logs / f"{stage.name}.log"
                prefix = f"    {stage.name}: " if cfg.jobs > 1 else "    "
                running[pool.submit(run_stage, stage, argv, log, cfg.show_output, prefix)] = (
                    stage,
                    time.time(),
                )
                if sys.stdout.isatty():  # a terminal sees which stage started last
                    print(f"{number[stage.name]} running ...", end="\r", flush=True)
            if not running:
                return failed
            first = min((s for s, _ in running.values()), key=lambda s: STAGE_NAMES.index(s.name)).name
            set_interrupt_hint(f"in stage {first}; resume with `{resume_command(cfg, first)}`")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: STAGE_NAMES.index(running[f][0].name)):
                stage, t0 = running.pop(future)
                rc, log_path, log_text = future.result()
                seconds, head = time.time() - t0, number[stage.name]
                if rc != 0:
                    print(f"{head} FAILED after {fmt_s(seconds)}", flush=True)
                    if not failed or STAGE_NAMES.index(stage.name) < STAGE_NAMES.index(failed[0].name):
                        failed = (stage, rc, log_path, log_text)  # the earliest in the registry: resume there
                    continue
                times["seconds"][stage.name] = round(seconds, 1)
                write_json(run / TIMES, times)
                print(f"{head} {fmt_s(seconds):>7}  {report_card.headline_of(stage.name, run)}", flush=True)


def read_times(run: Path) -> dict:
    """run_all.json: the wall time of each stage's latest run (kept across --from / --only)."""
    old = read_json(run / TIMES) if (run / TIMES).is_file() else {}
    return {"seconds": old.get("seconds", {}), "last_invocation_s": old.get("last_invocation_s")}


if __name__ == "__main__":
    run_cli(main)
