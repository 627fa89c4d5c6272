"""The shared framework in common/: atomic writes, JSONL, readable errors, run folders, outcome bars."""

import json

import pytest

from common.cli import UserError
from common.files import atomic_path, read_jsonl, read_text, write_jsonl


def test_atomic_path_keeps_old_file_when_write_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_jsonl_round_trip_and_errors(tmp_path):
    p = tmp_path / "a.jsonl"
    assert write_jsonl(p, [{"text": "你好"}, {"text": "b"}]) == 2
    assert [r["text"] for r in read_jsonl(p)] == ["你好", "b"]
    p.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UserError, match="no 'text' field"):
        read_jsonl(p)
    p.write_text("{not json\n")
    with pytest.raises(UserError, match=":1: not valid JSON"):
        read_jsonl(p)


def test_read_text_rejects_missing_binary_and_empty(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(UserError, match="binary"):
        read_text(tmp_path / "b.bin")
    (tmp_path / "l.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        read_text(tmp_path / "l.txt")
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        read_text(tmp_path / "e.txt")


def test_atomic_write_gives_a_normal_file_mode(tmp_path):
    import os
    from common.files import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


# ----------------------------------------------------------------------------------------------
# The config -> command line helper

import dataclasses
import os
import subprocess
import sys
import textwrap

from common.cli import option, parse_config
from common.runs import (
    check_artifact,
    claim_output,
    remove_orphan_temps,
    run_lock,
    staged_dir,
    write_manifest,
)


@dataclasses.dataclass
class DemoConfig:
    steps: int = option(10, "how many steps", min=1)
    lr: float = option(1e-3, "learning rate", min=0.0)
    name: str = option("a", "which one", choices=("a", "b"))
    fast: bool = option(False, "go fast")
    split: tuple = option((0.9, 0.1), "fractions", sep=",")
    files: list = option([], "input files")
    mix: dict = option({"x": 1.0}, "weights")


def test_parse_config_types_defaults_and_presets():
    cfg, _ = parse_config(DemoConfig, [])
    assert cfg == DemoConfig()
    cfg, _ = parse_config(
        DemoConfig,
        [
            "--steps",
            "5",
            "--no-fast",
            "--split",
            "0.5,0.5",
            "--files",
            "a",
            "b",
            "--mix",
            "x=0.25,y=0.75",
            "--name",
            "b",
        ],
    )
    assert (cfg.steps, cfg.fast, cfg.split, cfg.files, cfg.mix, cfg.name) == (
        5,
        False,
        (0.5, 0.5),
        ["a", "b"],
        {"x": 0.25, "y": 0.75},
        "b",
    )
    cfg, _ = parse_config(DemoConfig, ["--fast"], presets={"big": {"steps": 100}}, default_preset="big")
    assert cfg.steps == 100 and cfg.fast is True
    cfg, _ = parse_config(DemoConfig, ["--steps", "3"], presets={"big": {"steps": 100}}, default_preset="big")
    assert cfg.steps == 3  # a flag beats the preset


def test_parse_config_help_shows_defaults_and_preset_values(capsys):
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--help"], presets={"big": {"steps": 100}}, default_preset="big")
    out = " ".join(capsys.readouterr().out.split())
    assert "how many steps (default 10; preset big 100)" in out
    assert "--fast, --no-fast" in out and "(default 0.9,0.1)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps 0 is below its minimum 1"),
        (["--lr", "-1"], "--lr -1.0 is below its minimum"),
        (["--name", "c"], "invalid choice"),
        (["--steps", "x"], "invalid int value"),
        (["--bogus"], "unrecognized arguments"),
        (["--split", "0.5,a"], "cannot read"),
        (["--mix", "x"], "cannot read"),
    ],
)
def test_parse_config_bad_values_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse_config(DemoConfig, argv)


# ----------------------------------------------------------------------------------------------
# run_cli: the one error contract (run in a subprocess: exit codes and stderr are the contract)


def run_snippet(tmp_path, body, *args):
    script = tmp_path / "snippet.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from common.cli import *
        from common.files import *
        from common.runs import *
        def main():
        """)
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\nrun_cli(main)\n"
    )
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)


REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "body, code, first_words",
    [
        ("raise UserError('bad thing; fix it')", 2, "error: bad thing; fix it"),
        ("open('/proc/nope/x', 'w')", 2, "error: cannot use /proc/nope/x"),
        (
            "import os; os.makedirs(sys.argv[1] + '/f', exist_ok=True); open(sys.argv[1] + '/f', 'w')",
            2,
            "error: cannot use",
        ),
        (
            "set_interrupt_hint('at step 3; continue with --resume'); raise KeyboardInterrupt",
            130,
            "interrupted; at step 3; continue with --resume",
        ),
    ],
)
def test_run_cli_turns_expected_failures_into_one_line(tmp_path, body, code, first_words):
    r = run_snippet(tmp_path, body, str(tmp_path))
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(first_words), r.stderr


def test_run_cli_keeps_the_traceback_of_a_bug(tmp_path):
    r = run_snippet(tmp_path, "return [][1]")
    assert r.returncode == 1 and "IndexError" in r.stderr


# ----------------------------------------------------------------------------------------------
# Manifests, staleness, locks, overwrite


def make_artifact(path, text, inputs=()):
    path.mkdir(parents=True, exist_ok=True)
    (path / "a.txt").write_text(text)
    return write_manifest(path, stage="demo", command=f"make {path.name}", config={"t": text}, inputs=inputs)


def test_manifest_detects_missing_damaged_and_stale_artifacts(tmp_path):
    with pytest.raises(UserError, match="missing; make it first with `make up`"):
        check_artifact(tmp_path / "up", "make up")
    up = tmp_path / "up"
    up.mkdir()
    (up / "a.txt").write_text("x")
    with pytest.raises(UserError, match="incomplete.*rerun `make up`"):
        check_artifact(up, "make up")
    m_up = make_artifact(up, "one")
    down_m = make_artifact(tmp_path / "down", "two", inputs=[up])
    assert down_m["inputs"] == {"../up": {"id": m_up["id"], "stage": "demo", "created": m_up["created"]}}
    assert check_artifact(tmp_path / "down", "make down")["id"] == down_m["id"]
    make_artifact(up, "changed")  # upstream rerun with new content
    with pytest.raises(UserError, match="down is stale: it was made from .*up.*rerun `make down`"):
        check_artifact(tmp_path / "down", "make down")
    make_artifact(up, "one")  # same content again: same id, not stale
    check_artifact(tmp_path / "down", "make down")
    with open(up / "a.txt", "a") as f:  # damaged in place (truncation, an editor ...)
        f.write("!")
    with pytest.raises(UserError, match="a.txt: changed or damaged"):
        check_artifact(tmp_path / "down", "make down")


def test_run_lock_refuses_a_second_writer_and_removes_orphans(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ckpt.pt.abc.tmp").write_bytes(b"half")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {str(REPO_ROOT)!r})
        from common.runs import run_lock
        with run_lock({str(out)!r}):
            print('locked', flush=True); time.sleep(30)"""),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not (out / ".ckpt.pt.abc.tmp").exists()  # the orphan went when the lock was taken
        with pytest.raises(UserError, match=rf"being written by another process \(pid {holder.pid}\)"):
            with run_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # kill -9 released it
        pass


def test_claim_output_and_staged_dir(tmp_path):
    out = tmp_path / "run"
    claim_output(out, overwrite=False)  # nothing there: fine
    make_artifact(out, "old")
    with pytest.raises(UserError, match="already holds a run .*make run.*--overwrite"):
        claim_output(out, overwrite=False)
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("killed half-way")
    assert (out / "a.txt").read_text() == "old"  # the old run is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # and no temp folder is left
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and sorted(p.name for p in out.iterdir()) == ["a.txt"]
    claim_output(out, overwrite=True)
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        claim_output(tmp_path / "file", overwrite=True)
    assert remove_orphan_temps(tmp_path / "nothing") == 0


def test_an_interrupted_swap_is_undone_at_the_next_lock(tmp_path):
    out = tmp_path / "run"
    make_artifact(out, "old")
    os.replace(out, tmp_path / ".run.old9.tmp")  # killed between staged_dir's renames: old set aside,
    (tmp_path / ".run.abc.tmp").mkdir()  # ... the new one never renamed in
    with run_lock(out):
        pass
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the lock file goes with the lock


# ------------------------------------------------------------------------------ common/outcome.py
from common.outcome import make_bar  # noqa: E402


def test_make_bar_passes_only_when_the_whole_interval_clears_the_threshold():
    lower = dict(threshold=1.0, direction="lower")
    assert make_bar("loss", 0.5, **lower)["passed"]
    assert not make_bar("loss", 1.5, **lower)["passed"]
    assert not make_bar("loss", 0.5, interval=(0.4, 1.1), **lower)["passed"]  # point clears, interval not
    assert make_bar("loss", 0.5, interval=(0.4, 0.9), n=10, **lower)["passed"]
    higher = dict(threshold=0.5, direction="higher")
    assert make_bar("acc", 0.9, interval=(0.6, 0.95), **higher)["passed"]
    assert not make_bar("acc", 0.9, interval=(0.4, 0.95), **higher)["passed"]
    assert not make_bar("acc", 0.5, **higher)["passed"]  # the threshold itself fails ...
    assert make_bar("acc", 0.5, inclusive=True, **higher)["passed"]  # ... unless the bar says >=
    assert not make_bar("acc", None, **higher)["passed"]
    assert not make_bar("acc", float("nan"), **higher)["passed"]
    bar = make_bar("acc", 0.9, baseline=0.3, baseline_name="majority", n=40, note="x", **higher)
    assert set(bar) == {"metric", "value", "interval", "n", "baseline", "baseline_name", "threshold",
                        "direction", "passed", "note"}  # fmt: skip


def test_make_bar_rejects_bad_arguments():
    with pytest.raises(ValueError, match="direction"):
        make_bar("x", 1.0, threshold=0.5, direction="up")
    with pytest.raises(ValueError, match="not ordered"):
        make_bar("x", 1.0, threshold=0.5, direction="higher", interval=(0.9, 0.1))
    with pytest.raises(ValueError, match="not a count"):
        make_bar("x", 1.0, threshold=0.5, direction="higher", n=2.5)


def test_decoding_threads_one_thread_inside_restored_after_and_pinned_respected(monkeypatch):
    import common.devices as devices
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "_pinned_threads", 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with devices.decoding_threads():
            assert torch.get_num_threads() == 1
            with devices.decoding_threads():  # nested: still one, and the outer restore still works
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):  # restored even when the body fails
            with devices.decoding_threads():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose: left alone
        with devices.decoding_threads():
            assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        devices.set_threads(2)  # --threads 2: pinned for decoding too
        with devices.decoding_threads():
            assert torch.get_num_threads() == 2
        devices.set_threads(0)  # --threads 0 (the default) changes nothing
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
