"""The check every resumable trainer's kill -9 test makes (tests/test_06_rlhf_dpo.py, tests/test_07_distill.py).

A trainer runs once uninterrupted; once in a forked child that SIGKILLs itself right after its n-th saved
training state (04's train_state.RunState.save: no handler, no cleanup, a real kill -9), and is then
continued in this process with --resume. The resumed run must say where it continued (not start again),
leave no state or temp folder behind, and write the same weights, bit for bit, the same outcome and the
same log as the uninterrupted run; wall-clock and memory measurements and the run-control flags (--out, --resume) aside.
"""

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from common.cli import run_cli
from forked_cli import run_forked

MEASURED = re.compile(r"(^|_)(s|ms|mb|seconds|s_per_step|tok_s)$|^(out|resume|overwrite)$")


def without_timings(obj):
    """A result without its wall-clock and memory numbers and its run-control flags (out, resume, overwrite)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not MEASURED.search(k)}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def kill_at_save(n):
    """For a forked child: SIGKILL itself right after its n-th saved training state."""
    import train_state

    save, count = train_state.RunState.save, [0]

    def save_then_die(self, *a, **kw):
        save(self, *a, **kw)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    train_state.RunState.save = save_then_die


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def check_resume_is_bit_exact(main, argv, weights, saves, where, tmp_path, capsys):
    """main: the command's main(argv); argv: its flags but --out; weights: the checkpoint files to compare;
    saves: saved states before the kill; where: what the resumed run says it continues ("rm at step 1")."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    main([*argv, "--out", str(full)])
    killed = run_forked(main, [*argv, "--out", str(cut)], before=lambda: kill_at_save(saves))
    assert killed["rc"] == -signal.SIGKILL, killed["stderr"][-2000:]
    state = tmp_path / ".cut.resume.pt"
    assert state.is_file() and not cut.exists()
    capsys.readouterr()
    main([*argv, "--out", str(cut), "--resume"])
    assert f"--resume: continuing {where}\n" in capsys.readouterr().out  # continued, not started again
    assert not state.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for name in weights:
        a, b = (torch.load(d / name, weights_only=True)["model"] for d in (full, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    outcomes = [json.loads((d / "outcome.json").read_text()) for d in (full, cut)]
    assert without_timings(outcomes[1]) == without_timings(outcomes[0])
    assert without_timings(read_jsonl(cut / "metrics.jsonl")) == without_timings(
        read_jsonl(full / "metrics.jsonl")
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the run is complete: nothing is left to resume
        run_cli(main, [*argv, "--out", str(full), "--resume"])
    assert exit_info.value.code == 2 and "error: --resume: no interrupted run" in capsys.readouterr().err
