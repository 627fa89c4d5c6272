"""run_all.py and report.py: the micro pipeline end to end, its report card, resuming, failing, bad flags.

One micro run (every stage of this checkout with a few seconds of work each, OMP_NUM_THREADS=1) is
shared by the tests below; they copy it before changing anything.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from common import report_card as report  # noqa: E402
import run_all  # noqa: E402
from common.files import read_json
from common.runs import check_artifact

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_all_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "run_all.py"), *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def folder_hashes(run: Path, folders) -> dict:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for f in folders
        for p in sorted((run / f).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """(run folder, the run's stdout, the stages that ran) of one micro pipeline run."""
    base = tmp_path_factory.mktemp("run_all")
    run = base / "runs" / "smoke"
    proc = run_all_cli("--preset", "micro", "--run", run, cwd=base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = run_all.RunAllConfig(preset="micro")
    ran = [s for s, skip in run_all.plan(cfg) if skip is None]
    return run, proc.stdout, ran


def test_micro_pipeline_writes_every_stage_artifact_with_a_manifest(micro):
    run, out, ran = micro
    assert [s.name for s in ran][:5] == ["data", "tokenizer", "wordpiece", "unigram", "pretrain"]
    for stage in ran:
        manifest = check_artifact(
            run / stage.folder, made_by=stage.script
        )  # present, complete, undamaged, current
        assert manifest.get("status", "complete") == "complete"
        assert (run / "logs" / f"{stage.name}.log").is_file()
        block = read_json(run / stage.outcome_folder / "outcome.json")  # SCHEMA.md: every stage's bar
        assert block["headline"] and "not run" not in block["headline"], stage.name
        bar = block["bar"]
        if bar is not None:  # None: the stage has no bar (wordpiece, unigram) or it cannot apply here
            assert {"metric", "value", "threshold", "direction", "passed"} <= set(bar), stage.name
            assert bar["direction"] in ("lower", "higher") and isinstance(bar["passed"], bool), stage.name
    lines = [l for l in out.splitlines() if re.match(r"\[\s*\d+/\d+\] ", l)]
    assert len(lines) == len(run_all.plan(run_all.RunAllConfig(preset="micro")))  # one line per stage
    for stage in ran:  # its line carries its wall time and the headline
        line = next(l for l in lines if l.split("] ", 1)[1].split()[0] == stage.name)
        assert re.search(r"\d s ", line) and "not run" not in line, line
    times = read_json(run / "run_all.json")["seconds"]
    assert set(times) == {s.name for s in ran} and all(v > 0 for v in times.values())


def test_report_has_every_section_a_verdict_per_stage_and_no_missing_or_nan_number(micro):
    run, _, ran = micro
    text = (run / "report.md").read_text(encoding="utf-8")
    assert "unreadable results" not in text  # a bug in report.py would hide there
    assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE), "a NaN or inf number in the report"
    top = text.split("\n## ")[0]
    for stage in report.SECTIONS:
        row = next(l for l in top.splitlines() if l.startswith(f"| {stage} |"))
        if stage in {s.name for s in ran} and stage not in ("wordpiece", "unigram"):
            assert "not run" not in row and re.search(r"\| (PASS|FAIL|n/a|-) \|$", row), row
            assert re.search(r"\d", row.split("|")[2]), f"no number in the headline of {stage}: {row}"
    for stage in report.SECTIONS:  # every section is there, ran or not
        title = report.section_of(stage, run, None).title
        assert f"\n## {title}\n" in text, title
    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):  # every image the report links exists
        assert (run / png).is_file(), png
    assert (run / "report_cleaning.png").is_file() and (run / "report_tokenizer.png").is_file()
    # the headline numbers are the stage's own: the pretraining line quotes outcome.json's held-out loss
    o = read_json(run / "pretrain" / "outcome.json")
    assert f"{o['heldout']['split']} loss {o['bar']['value']:.3f}" in top


def mangled(obj):
    """The same JSON with every type wrong: numbers become strings, strings numbers, lists hold one item."""
    if isinstance(obj, dict):
        return {k: mangled(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mangled(obj[0])] if obj else ["x"]
    return 7 if isinstance(obj, str) else "x" if obj is not None else {}


def test_report_of_outcome_files_with_wrong_field_types_says_so_per_stage_and_never_tracebacks(
    micro, tmp_path
):
    run = tmp_path / "smoke"
    shutil.copytree(micro[0], run)
    for path in [*run.glob("*/outcome.json"), *run.glob("*/*.json"), run / "run_all.json"]:
        if path.name != "manifest.json":
            path.write_text(json.dumps(mangled(json.loads(path.read_text()))))
    (run / "pretrain" / "outcome.json").write_text("{not json")
    text = report.write_report(run).read_text(encoding="utf-8")  # no exception
    top = text.split("\n## ")[0]
    assert "| pretrain | unreadable results (" in top and "corrupt or truncated" in top
    unreadable = [l for l in top.splitlines() if "unreadable results" in l]
    assert len(unreadable) >= 5 and all(l.endswith("| - |") and "rerun the stage" in l for l in unreadable)


def test_report_of_an_empty_run_says_not_run_and_a_folder_without_manifest_does_not_count(tmp_path, micro):
    run = tmp_path / "empty"
    (run / "data").mkdir(parents=True)
    shutil.copy(micro[0] / "data" / "stats.json", run / "data" / "stats.json")  # numbers, but no manifest
    text = report.write_report(run).read_text(encoding="utf-8")
    top = text.split("\n## ")[0]
    for stage in report.SECTIONS:
        row = next(l for l in top.splitlines() if l.startswith(f"| {stage} |"))
        assert "not run" in row or "not in this checkout" in row, row
        assert row.endswith("| - |")
    assert "PASS" not in text and "FAIL" not in text


def test_from_reruns_that_stage_on_and_reuses_the_earlier_ones(micro, tmp_path):
    run = tmp_path / "runs" / "smoke"
    shutil.copytree(micro[0], run)
    last = micro[2][-1]  # the cheapest rerun: the last stage that ran
    earlier = [s.folder for s in micro[2][:-1]]
    before = folder_hashes(run, earlier)
    created = read_json(run / last.folder / "manifest.json")["created"]
    proc = run_all_cli("--preset", "micro", "--run", run, "--from", last.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert folder_hashes(run, earlier) == before  # reused, not rewritten
    if last.overwrite:  # bench_serve (the last stage now) always replaces its folder
        assert "--overwrite" in (run / "logs" / f"{last.name}.log").read_text().splitlines()[0]
    check_artifact(run / last.folder, made_by=last.script)
    assert read_json(run / last.folder / "manifest.json")["created"] >= created
    stage_lines = [l for l in proc.stdout.splitlines() if re.match(r"\[\s*\d+/\d+\] ", l)]
    assert [l for l in stage_lines if "skipped" not in l] == [stage_lines[0]] and last.name in stage_lines[0]


def test_a_failing_stage_stops_the_run_with_its_error_and_the_resume_command(micro, tmp_path):
    run = tmp_path / "runs" / "smoke"
    shutil.copytree(micro[0], run)
    (run / "pretrain" / "best.pt").unlink()  # sft must refuse the damaged pretraining run
    before = folder_hashes(run, ["data", "tokens", "pretrain", "sft", "logs"])
    proc = run_all_cli("--preset", "micro", "--run", run, "--from", "sft", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "stage sft failed" in errors[0] and "best.pt" in errors[0]
    assert f"run_all.py --preset micro --run {run} --from sft" in errors[0]
    assert "FAILED" in proc.stdout and "reward_model" not in proc.stdout  # nothing that reads sft/ started

    failed = run / "logs" / "sft.failed.log"
    assert f"its output is in {failed}" in errors[0] and "best.pt" in failed.read_text()
    failed.unlink()  # the good run's log (sft.log) is as it was
    (run / "logs" / "sft_compare.failed.log").unlink(missing_ok=True)  # it reads pretrain/ too (--jobs 2)
    assert folder_hashes(run, ["data", "tokens", "pretrain", "sft", "logs"]) == before


def test_a_fresh_run_refuses_to_overwrite_an_existing_one(micro, tmp_path):
    proc = run_all_cli("--preset", "micro", "--run", micro[0], cwd=tmp_path)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--overwrite" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "--preset"),
        (["--from", "nosuch"], "--from"),
        (["--only", "sft", "--from", "sft"], "exclude each other"),
        (["--nproc", "0"], "--nproc"),
        (["--add", "pretrain"], "not an optional stage"),
        (["--data", "no_such_file.txt"], "no_such_file.txt"),
        (["--bogus"], "unrecognized"),
        (["--run", "../../x"], "--run ../../x: climbs out of this folder"),
    ],
)
def test_bad_flags_give_one_error_line_and_exit_2(tmp_path, args, message):
    proc = run_all_cli("--run", tmp_path / "r", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def simulated_schedule(steps, jobs):
    """Run run_all's scheduler on `steps` with a fake clock (each stage lasts len(name) ticks):
    [(stage, start, end)]."""
    todo, running, done, t = list(steps), [], [], 0
    while todo or running:
        for stage in run_all.startable(todo, [s for s, _ in running], jobs):
            todo.remove(stage)
            running.append((stage, t))
        assert running, f"nothing can start, {[s.name for s in todo]} wait forever"
        stage, t0 = min(running, key=lambda r: r[1] + len(r[0].name))
        running.remove((stage, t0))
        t = t0 + len(stage.name)
        done.append((stage, t0, t))
    return done


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_the_scheduler_starts_a_stage_after_its_inputs_and_a_timed_stage_alone(jobs):
    from common.layout import STAGES, writer_of

    done = simulated_schedule(STAGES, jobs)
    assert sorted(s.name for s, _, _ in done) == sorted(s.name for s in STAGES)
    end = {s.name: t1 for s, _, t1 in done}
    for stage, t0, t1 in done:
        assert all(end[writer_of(f).name] <= t0 for f in stage.upstream), stage.name  # inputs made first
        at_start = [s.name for s, a, b in done if a <= t0 < b]
        assert len(at_start) <= jobs, (stage.name, at_start)
        beside = [s.name for s, a, b in done if s is not stage and a < t1 and t0 < b]
        if stage.timed:
            assert not beside, f"{stage.name} measures speed but ran beside {beside}"
    if jobs == 1:  # one at a time is the registry's order
        assert [s.name for s, _, _ in done] == [s.name for s in STAGES]
    else:  # after SFT the stages that do not read each other overlap
        span = {s.name: (a, b) for s, a, b in done}
        assert span["dpo"][0] < span["reward_model"][1] or span["reward_model"][0] < span["dpo"][1]


def test_startable_waits_for_a_stage_still_running_that_writes_an_input():
    from common.layout import stage

    todo = [stage("sft"), stage("sft_compare"), stage("reward_model")]
    assert run_all.startable(todo, [stage("pretrain")], 2) == []  # both read pretrain/, which is running
    assert run_all.startable(todo, [], 2) == todo[:2]  # the reward model reads sft/: not yet
    assert run_all.startable([stage("reward_model"), stage("dpo")], [], 1) == [stage("reward_model")]
    assert run_all.startable([stage("distill"), stage("prune")], [], 2) == [stage("distill")]  # timed: alone
    assert run_all.startable([stage("prune"), stage("distill")], [], 2) == [stage("prune")]  # distill waits


def test_plan_and_commands_follow_the_flags(monkeypatch):
    cfg = run_all.RunAllConfig(preset="tiny", data=["a.txt"])
    plan = dict((s.name, skip) for s, skip in run_all.plan(cfg))
    assert plan["data"] is None and plan["pretrain"] is None
    assert plan["sft"] and "task sets" in plan["sft"]  # --data text has no task sets
    assert "scaling" not in plan  # optional unless --add
    stage = {s.name: s for s in run_all.STAGES}
    assert run_all.command(stage["data"], cfg, Path("runs/x"), False)[-2:] == ["--input", "a.txt"]
    assert run_all.command(stage["pretrain"], cfg, Path("runs/x"), False)[2:] == [
        "--data",
        "runs/x",
    ]  # own defaults
    # the tiny run's budget flags (TINY_FLAGS) go to tiny only; micro keeps the stage's own preset
    monkeypatch.setattr(run_all, "TINY_FLAGS", {"distill": ["--seeds", "2"]})
    assert run_all.command(stage["distill"], run_all.RunAllConfig(), Path("runs/x"), False)[-2:] == [
        "--seeds",
        "2",
    ]
    micro = run_all.command(stage["distill"], run_all.RunAllConfig(preset="micro"), Path("runs/x"), False)
    assert "--seeds" not in micro
    gpu = run_all.RunAllConfig(preset="gpt2", nproc=4)
    cmd = run_all.command(stage["pretrain"], gpu, Path("runs/g"), True)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=4"]
    assert cmd[-3:] == ["--preset", "gpt2", "--overwrite"]
    only = run_all.plan(run_all.RunAllConfig(), only_stage="pretrain")
    assert [s.name for s, _ in only] == ["pretrain"]
    names = [s.name for s, _ in run_all.plan(run_all.RunAllConfig(add=["scaling"]), from_stage="pretrain")]
    assert names[:3] == ["pretrain", "scaling", "sft"]


def test_stages_start_with_threads_that_sleep_at_barriers_unless_the_user_chose(tmp_path):
    """run_all gives every stage GOMP_SPINCOUNT=1000 (common/devices.py: threads that spin long at
    barriers make a 2-thread training step several times slower on a busy machine); a user's own
    wait policy wins."""
    from common.layout import Stage, stage_env

    assert stage_env({})["GOMP_SPINCOUNT"] == "1000"
    assert stage_env({"GOMP_SPINCOUNT": "5"})["GOMP_SPINCOUNT"] == "5"
    assert "GOMP_SPINCOUNT" not in stage_env({"OMP_WAIT_POLICY": "ACTIVE"})
    probe = [sys.executable, "-c", "import os; print('spin', os.environ.get('GOMP_SPINCOUNT'))"]
    rc, log, text = run_all.run_stage(Stage("probe", "-", "probe"), probe, tmp_path / "probe.log", False)
    chosen = os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT")
    assert rc == 0 and ("spin 1000" in text) == (not chosen), text


def test_last_error_line_prefers_the_stages_error_line():
    assert run_all.last_error_line("step 1\nerror: x is wrong; fix it\n", 2) == "x is wrong; fix it"
    assert run_all.last_error_line("Traceback ...\nKeyError: 'k'\n", 1) == "KeyError: 'k'"
    assert run_all.last_error_line("", 1) == "exit code 1 with no output"


@pytest.mark.parametrize(
    "args, message",
    [([], "pass --run"), (["--run", "no_such_run"], "no such run folder"), (["--bogus"], "unrecognized")],
)
def test_report_bad_input_gives_one_error_line_and_exit_2(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "report.py"), *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


CLAIM_PROBE = """
import contextlib, io, json, runpy, sys
import torch

def no_model_yet(*args, **kwargs):
    raise AssertionError("a model ran before the output folder was claimed")

torch.nn.Module.__call__ = no_model_yet  # loading weights is allowed, running them is work
results, path = {}, list(sys.path)
for name, script, argv in json.loads(sys.argv[1]):
    sys.argv, sys.path[:] = [script, *argv], [script.rsplit("/", 1)[0], *path]  # as `python script argv`
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code, err = 1, io.StringIO(repr(e))
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_every_stage_refuses_a_folder_holding_a_run_before_any_work(micro, tmp_path):
    """Each stage's own command line, on a finished run, without --overwrite: one line saying the folder holds
    a run, before a single forward pass (the child makes every nn.Module call fail), and nothing changed.
    One process for all the stages."""
    run = tmp_path / "runs" / "smoke"
    shutil.copytree(micro[0], run)
    cfg = run_all.RunAllConfig(preset="micro")
    # bench_serve always replaces its own folder; data redoes a run of the same config by design
    stages = [s for s in micro[2] if s.overwrite and s.name != "data"]
    before = folder_hashes(run, [s.folder for s in micro[2]])
    jobs = [[s.name, str(REPO / s.script), run_all.command(s, cfg, run, False)[2:]] for s in stages]
    proc = subprocess.run(
        [sys.executable, "-c", CLAIM_PROBE, json.dumps(jobs)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (code, err) in results.items():
        assert code == 2 and "already holds a run" in err and "--overwrite" in err, (name, code, err)
    assert len(results) >= 12 and folder_hashes(run, [s.folder for s in micro[2]]) == before
