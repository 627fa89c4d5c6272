"""Benchmark: time and peak memory of prepare.py --input at growing input sizes.

    python 01_data/bench_prepare.py --sizes-mb 5,50            # streamed, 1 and 2 workers
    python 01_data/bench_prepare.py --sizes-mb 5,50,500 --baseline /tmp/old/01_data/prepare.py
    python 01_data/bench_prepare.py --sizes-mb 60,120,240 --doc-chars 120 --workers 2   # many short docs

The input is TinyStories paragraphs (../shared/data/text/tinystories_valid_head.txt, or generated
stories when it is absent) with one word in four replaced by another word of the text, so that the
copies are not near-duplicates of each other, written as a blank-line-separated .txt of the size
asked. --doc-chars cuts each paragraph to about that many characters (at a word end): the same
megabytes then hold more documents, which is where a per-document cost shows (the slope of peak
memory over the document count is the bytes each document costs). Each contender runs as its own
process; its peak memory is the largest sum of the resident memory (VmRSS: anonymous pages, and
file pages while mapped) of the process and its children, sampled every 0.1 s from /proc, and beside
it the largest sum of their high-water marks (VmHWM, which the kernel keeps per process, so no spike
between two samples is missed; a sum of peaks, it can only overstate the tree's). Each phase's peak
(read+clean, dedup, mix, split, write: the run's stats.json "seconds") is the largest sample in it. --baseline runs an older
prepare.py (e.g. `git archive <commit> 01_data | tar -x -C /tmp/old`) on the same files, in turn
with ours. Prints a table and saves a plot.

Interview question it answers: how do you show a pipeline scales? (time and peak memory at
sizes ten times apart: time should grow linearly, memory should not grow with the text)
"""

import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli
from common.files import pyplot, save_figure

HERE = Path(__file__).resolve().parent
STORIES = HERE.parent.parent / "shared" / "data" / "text" / "tinystories_valid_head.txt"


@dataclass
class BenchPrepareConfig:
    sizes_mb: tuple = option((5, 50), "input sizes in MB", sep=",")
    workers: tuple = option((1, 2), "worker counts of the streamed run", sep=",")
    baseline: str = option("", "an older prepare.py to run on the same inputs (empty: none)")
    work: str = option("runs/bench_prepare", "folder for the inputs and the runs")
    plot: str = option("runs/bench/bench_prepare.png", "where to save the plot")
    doc_chars: int = option(
        0, "cut each paragraph to about this many characters (0: whole paragraphs)", min=0
    )


def paragraphs() -> list:
    if STORIES.exists():
        text = STORIES.read_text(encoding="utf-8")
        return [p.strip() for p in re.split(r"\n\s*\n|<\|endoftext\|>", text) if len(p.strip()) > 100]
    from world import WorldConfig, build_world
    from world_corpus import generate_corpus

    w = build_world(WorldConfig(seed=9))
    return [d["text"] for d in generate_corpus(w, 9, 500_000, {"stories": 1.0})]


def make_input(path: Path, megabytes: float, doc_chars=0, seed=0):
    """A .txt of blank-line-separated perturbed paragraphs, about `megabytes` MB; doc_chars > 0: each
    cut to its first doc_chars characters, at a word end (120 keeps the 20 words filter_length needs)."""
    if path.exists() and abs(path.stat().st_size - megabytes * 1e6) < 0.05 * megabytes * 1e6:
        return
    rng = random.Random(seed)
    paras = paragraphs()
    vocab = sorted({w for p in paras for w in p.split()})
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            words = rng.choice(paras).split()
            text = " ".join(rng.choice(vocab) if rng.random() < 0.25 else w for w in words)
            if doc_chars and len(text) > doc_chars:
                text = text[: doc_chars + 1].rsplit(" ", 1)[0]
            text += "\n\n"
            f.write(text)
            written += len(text.encode("utf-8"))


def count_documents(path: Path) -> int:
    """Blank-line-separated blocks in the file (prepare.py's documents: none is over --max-doc-chars)."""
    n, in_block = 0, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            n += bool(line.strip()) and not in_block
            in_block = bool(line.strip())
    return n


def tree_rss(pid: int, field="VmRSS") -> int:
    """Resident bytes (field VmRSS; VmHWM: each process's peak) of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total


def run_measured(cmd) -> tuple:
    """(seconds, peak bytes of the process tree, the largest sum of its VmHWM, return code, samples
    [(seconds since start, tree bytes)]) of a command."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, hwm, samples = 0, 0, []
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        samples.append((time.perf_counter() - t, rss))
        peak, hwm = max(peak, rss), max(hwm, tree_rss(proc.pid, "VmHWM"))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return time.perf_counter() - t, peak, hwm, proc.returncode, samples


def phase_peaks(stats_path: Path, samples, seconds: float) -> str:
    """'phase s GB, ...': each phase's seconds (stats.json) and its largest sample, the phases laid
    end to end backwards from the run's end (what follows the last one, the stats, is ~1 s)."""
    if not stats_path.exists():
        return ""
    laps = json.loads(stats_path.read_text(encoding="utf-8"))["seconds"]
    end, out = seconds, []
    for name, s in reversed(list(laps.items())):
        here = [b for t, b in samples if end - s <= t <= end]
        out.append(f"{name} {s:.0f}s {max(here, default=0) / 1e9:.2f}GB")
        end -= s
    return ", ".join(reversed(out))


def main(argv=None):
    cfg, _ = parse_config(BenchPrepareConfig, argv, doc=__doc__)
    if cfg.baseline and not Path(cfg.baseline).is_file():
        raise UserError(
            f"--baseline {cfg.baseline}: no such file; pass an older prepare.py or leave it empty"
        )
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    contenders = {f"streamed, {w} worker{'s' * (w > 1)}": (str(HERE / "prepare.py"), w) for w in cfg.workers}
    if cfg.baseline:
        contenders = {"baseline (--baseline)": (cfg.baseline, 0), **contenders}
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print(
        f"{'input':>8s} {'docs':>9s}  {'contender':22s} {'seconds':>8s} {'peak GB':>8s} {'HWM GB':>7s}"
        f" {'MB/s':>6s} {'MB/s per worker':>16s}"
    )
    for mb in cfg.sizes_mb:
        path = work / f"stories_{mb}mb{f'_{cfg.doc_chars}c' if cfg.doc_chars else ''}.txt"
        make_input(path, mb, cfg.doc_chars)
        size = path.stat().st_size / 1e6
        n_docs = count_documents(path)
        for name, (script, workers) in contenders.items():
            cmd = [sys.executable, script, "--out", str(work / f"run_{mb}_{workers}"), "--overwrite"]
            cmd += ["--input", str(path), "--noise-frac", "0", "--mix", "stories=1"]
            cmd += ["--workers", str(workers)] if workers else []
            seconds, peak, hwm, rc, samples = run_measured(cmd)
            rows.append((size, name, seconds, peak, rc))
            status = "" if rc == 0 else f"  (exit {rc})"
            print(
                f"{size:6.1f}MB {n_docs:9,d}  {name:22s} {seconds:8.1f} {peak / 1e9:8.2f} {hwm / 1e9:7.2f}"
                f" {size / seconds:6.2f} {size / seconds / max(1, workers):16.2f}{status}",
                flush=True,
            )
            print(
                f"    phases: {phase_peaks(work / f'run_{mb}_{workers}' / 'data' / 'stats.json', samples, seconds)}"
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in contenders:
        pts = [(s, t, p) for s, n, t, p, rc in rows if n == name and rc == 0]
        left.plot([s for s, _, _ in pts], [t for _, t, _ in pts], "o-", label=name)
        right.plot([s for s, _, _ in pts], [p / 1e9 for _, _, p in pts], "o-", label=name)
    for ax, label in ((left, "seconds"), (right, "peak memory, GB")):
        ax.set_xscale("log")
        ax.set_xlabel("input, MB")
        ax.set_ylabel(label)
        ax.legend()
    save_figure(fig, Path(cfg.plot))
    print(f"wrote {cfg.plot}")


if __name__ == "__main__":
    run_cli(main)
