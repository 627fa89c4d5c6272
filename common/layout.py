"""The shape of a run: which stage writes which folder of runs/<name>/, in which order, from what.

Two things every stage, run_all.py and report.py share, so no file types a folder name or a rerun
command by hand:

- `STAGES`, the registry: one line per stage (its name, its script, the folder it writes, the
  folders it reads). run_all.py walks it in order; report.py lays out what each one wrote. Adding a
  stage is its own folder of code plus one line here. Each stage keeps its own `micro` preset (the
  smoke test's seconds-long values) in its `parse_config` presets, beside its config.
- `RunLayout(run)`, the run folder: a property per artifact folder (`layout.tokenizer`,
  `layout.pretrain` ...) and `made_by(folder)`, the command that makes it, for error messages.

    from common.layout import RunLayout
    layout = RunLayout("runs/tiny")
    check_artifact(layout.tokens, made_by=layout.made_by("tokens"))
    # -> error: runs/tiny/tokens: missing; make it first with `python 02_tokenizer/train_tokenizer.py --data runs/tiny`

Interview question it answers:
- Why declare a pipeline's stages as data rather than as code that calls them? (the orchestrator,
  the report and every error message read the same list, so they cannot disagree; a new stage is one
  line; the order and the inputs of each step are visible in one place, as in a Makefile)
"""

import os
from dataclasses import dataclass
from pathlib import Path

from common.runs import check_artifact


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: `python <script> <run_flag> runs/<name> [--preset P]`."""

    name: str  # run_all's --from/--only name and the report's section
    script: str  # relative to the repository root
    folder: str  # the folder it writes under runs/<name>/ (done = it holds a manifest)
    upstream: tuple = ()  # the folders it reads
    writes: tuple = ()  # further folders it writes (train_tokenizer.py: tokenizer/ beside tokens/)
    run_flag: str = "--run"  # how the stage is told the run folder
    presets: tuple = ("micro",)  # run_all presets passed on as --preset (others: the stage's defaults)
    optional: bool = False  # only with run_all --add NAME (long experiments)
    needs_tasks: bool = (
        False  # reads data/tasks/ (the synthetic world's task sets; not made from --data text)
    )
    overwrite: bool = True  # has --overwrite (a stage that always replaces its folder has not)
    # its outcome holds wall-clock speeds (tokens/s, speedups): run_all --jobs 2 runs it with nothing
    # beside it, so a number it reports is this machine's, not this machine's shared with a second stage
    timed: bool = False

    @property
    def outcome_folder(self) -> str:
        """The folder holding its outcome.json (train_tokenizer.py writes it beside the tokenizer, not the shards)."""
        return self.writes[0] if self.writes else self.folder


PRE = ("tokenizer", "tokens", "pretrain")  # what every stage after pretraining reads
STAGES = [
    Stage("data", "01_data/prepare.py", "data", run_flag="--out"),
    Stage(
        "tokenizer", "02_tokenizer/train_tokenizer.py", "tokens", ("data",), ("tokenizer",), run_flag="--data"
    ),
    Stage("wordpiece", "02_tokenizer/wordpiece.py", "wordpiece", ("data", "tokenizer"), run_flag="--data"),
    Stage("unigram", "02_tokenizer/unigram.py", "unigram", ("data", "tokenizer"), run_flag="--data"),
    # contrastive pretraining makes its own texts from the world: no earlier stage needed
    Stage("contrastive", "03_model/contrastive.py", "contrastive", run_flag="--data", optional=True),
    Stage(
        "pretrain",
        "04_pretrain/pretrain.py",
        "pretrain",
        ("data", "tokenizer", "tokens"),
        run_flag="--data",
        presets=("micro", "small", "gpt2"),
        timed=True,
    ),
    Stage("scaling", "04_pretrain/scaling.py", "scaling", ("tokens",), run_flag="--data", optional=True),
    Stage("overfit", "04_pretrain/overfit.py", "overfit", ("tokens",), run_flag="--data", optional=True),
    Stage("sft", "05_sft_lora/sft.py", "sft", ("data", *PRE), needs_tasks=True),
    Stage("sft_compare", "05_sft_lora/compare.py", "sft_compare", ("data", *PRE), needs_tasks=True),
    # the world changes (people move): continued pretraining, SFT and LoRA updates, measured against the base
    Stage(
        "knowledge_update",
        "05_sft_lora/knowledge_update.py",
        "knowledge_update",
        ("data", *PRE),
        needs_tasks=True,
        optional=True,
    ),
    # the loop from serving back to training: a simulated user rates the SFT model, sft.py --feedback learns
    Stage(
        "feedback_loop",
        "05_sft_lora/feedback_loop.py",
        "feedback_loop",
        ("data", *PRE, "sft"),
        needs_tasks=True,
        optional=True,
    ),
    # 06: alignment. The reward model first (PPO and RLAIF use it), the methods, then their common table.
    Stage(
        "reward_model", "06_rlhf_dpo/reward_model.py", "rm", ("data", "tokenizer", "sft"), needs_tasks=True
    ),
    Stage("dpo", "06_rlhf_dpo/dpo.py", "dpo", ("data", "tokenizer", "sft"), needs_tasks=True),
    Stage("ppo", "06_rlhf_dpo/ppo.py", "ppo", ("data", "tokenizer", "sft", "rm"), needs_tasks=True),
    Stage(
        "overopt",
        "06_rlhf_dpo/overoptimization.py",
        "overopt",
        ("data", "sft", "rm", "ppo"),
        needs_tasks=True,
    ),
    # the judge is the pretrained model; rm/ gives the RM-score column when it is there
    Stage(
        "rlaif",
        "06_rlhf_dpo/rlaif.py",
        "rlaif",
        ("data", "tokenizer", "pretrain", "sft", "rm"),
        needs_tasks=True,
    ),
    Stage("grpo", "06_rlhf_dpo/grpo.py", "grpo", ("data", "tokenizer", "sft"), needs_tasks=True),
    Stage(
        "rl_compare",
        "06_rlhf_dpo/rl_compare.py",
        "rl_compare",
        ("data", "sft", "rm", "dpo", "ppo", "grpo", "rlaif"),
        needs_tasks=True,
    ),
    # 07: compression and serving, all of the pretrained model (the teacher) unless a stage picks sft/.
    Stage("distill", "07_distill_quant/distill.py", "distill", ("data", *PRE), timed=True),
    Stage(
        "speculative",
        "07_distill_quant/speculative.py",
        "speculative",
        ("tokens", "pretrain", "distill"),
        timed=True,
    ),
    Stage("prune", "07_distill_quant/prune.py", "prune", PRE),
    # quantizes sft/ when it is there (else pretrain/)
    Stage("quantize", "07_distill_quant/quantize.py", "quant", ("data", *PRE, "sft"), timed=True),
    # the run's model leaves the repository: Hugging Face files and ONNX, loaded back and compared
    Stage("export", "07_distill_quant/export_roundtrip.py", "export", PRE, optional=True, timed=True),
    Stage(
        "serve",
        "07_distill_quant/bench_serve.py",
        "serve",
        ("pretrain",),
        run_flag="",
        overwrite=False,
        timed=True,
    ),
]
STAGE_NAMES = [s.name for s in STAGES]


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def in_registry_order(names) -> list:
    """Stage names sorted as STAGES lists them (an unknown name, e.g. a renamed stage's, goes last):
    run_all --jobs 2 finishes stages out of order, and its tables should not."""
    return sorted(names, key=lambda k: STAGE_NAMES.index(k) if k in STAGE_NAMES else len(STAGE_NAMES))


def writer_of(folder: str) -> Stage:
    """The stage that writes `folder` of a run (its own folder or one of its `writes`)."""
    return next(s for s in STAGES if folder == s.folder or folder in s.writes)


class RunLayout:
    """runs/<name>/ and its folders: one property per artifact folder, and the command making each."""

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self):
        return f"RunLayout({str(self.root)!r})"

    def folder(self, name: str) -> Path:
        writer_of(name)  # a typo is a StopIteration here, not a wrong path later
        return self.root / name

    def made_by(self, folder: str, flags: str = "") -> str:
        """The command that makes `folder` of this run, as a user would type it (plus `flags`, e.g.
        "--loss ipo" for the variant of a stage that writes another folder)."""
        s = writer_of(folder)
        command = f"python {s.script} {s.run_flag} {self.root}" if s.run_flag else f"python {s.script}"
        return f"{command} {flags}" if flags else command

    # one property per folder, in pipeline order (what `runs/<name>/` holds after a full run)
    data = property(lambda self: self.root / "data")
    tasks = property(lambda self: self.root / "data" / "tasks")  # 01's task sets, inside data/
    tokenizer = property(lambda self: self.root / "tokenizer")
    tokens = property(lambda self: self.root / "tokens")
    pretrain = property(lambda self: self.root / "pretrain")
    sft = property(lambda self: self.root / "sft")
    rm = property(lambda self: self.root / "rm")
    dpo = property(lambda self: self.root / "dpo")
    ppo = property(lambda self: self.root / "ppo")
    overopt = property(lambda self: self.root / "overopt")
    rlaif = property(lambda self: self.root / "rlaif")
    grpo = property(lambda self: self.root / "grpo")
    distill = property(lambda self: self.root / "distill")
    quant = property(lambda self: self.root / "quant")
    serve = property(lambda self: self.root / "serve")
    logs = property(lambda self: self.root / "logs")  # run_all's copy of each stage's output


def task_file(run, given, name) -> Path:
    """The file the user gave, else runs/<name>/data/tasks/<name> once 01's data folder checks out."""
    if given:
        return Path(given)
    check_artifact(RunLayout(run).data, made_by=RunLayout(run).made_by("data"))
    return RunLayout(run).tasks / name


# How OpenMP threads wait at a barrier, for every stage run_all.py starts: spin ~1,000 rounds, then
# sleep, so a busy machine does not make a 2-thread training step several times slower
# (common/devices.py explains and gives the numbers; libgomp reads it only when torch loads, hence
# the environment and not a function call).
WAIT_POLICY = {"GOMP_SPINCOUNT": "1000"}


def stage_env(env=None) -> dict:
    """The environment to start a stage's process in: `env` (default: this process's) plus
    WAIT_POLICY, unless it already chooses a wait policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT)."""
    env = dict(os.environ if env is None else env)
    if not any(env.get(v) for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        env.update(WAIT_POLICY)
    return env
