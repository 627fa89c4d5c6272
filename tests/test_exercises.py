"""The graded exercises (tests/exercises.py): every marker is well formed, and every exercise is graded.

"Graded" means: with the full code its grading tests pass, and with that exercise alone blanked to
`raise NotImplementedError` at least one of them fails (a failure, not a collection error). The
check runs each exercise's few named tests, never the whole suite, in one copy per stage.
"""

import json
import os
import subprocess
import sys

import pytest

from exercises import REPO, MarkerError, blank_text, file_exercises, find_exercises, stage_dirs

SCRIPT = REPO / "tests" / "exercises.py"


def run_script(*args, timeout=120):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_every_marker_is_well_formed_and_names_its_grading_tests():
    exercises = find_exercises(REPO)  # raises MarkerError, naming file:line, on any broken pair
    assert exercises, "no exercise markers found"
    for ex in exercises:
        assert ex.tests, (
            f"no test of {ex.stage} names {ex.function}: add a GRADED_BY entry for {ex.key!r} "
            "in tests/exercises.py naming the fast tests that check it"
        )
        assert all(t.startswith("tests/test_") and "::" in t for t in ex.tests), ex.tests
        blanked = blank_text((REPO / ex.file).read_text(encoding="utf-8"), [ex])
        assert (
            "exercise: " + ex.hint in blanked
            and blanked.count("# >>> exercise")
            == (REPO / ex.file).read_text(encoding="utf-8").count("# >>> exercise") - 1
        )
    keys = [ex.key for ex in exercises]
    assert len(keys) == len(set(keys)), "two exercises in one function"
    assert {ex.stage for ex in exercises} <= {d.name for d in stage_dirs(REPO)}


GOOD = '''\
class Box:
    def area(self, w, h):
        """Docstring stays."""
        # >>> exercise: width times height
        a = w * h
        return a
        # <<< exercise


def twice(x):
    # >>> exercise: x + x
    return x + x
    # <<< exercise
'''


def test_blanking_keeps_the_docstring_and_compiles(tmp_path):
    path = tmp_path / "stage_x" / "mod.py"
    path.parent.mkdir()
    path.write_text(GOOD)
    found = file_exercises(tmp_path, path, "stage_x")
    assert [(e.function, e.hint) for e in found] == [("Box.area", "width times height"), ("twice", "x + x")]
    out = blank_text(GOOD, found)
    namespace = {}
    exec(compile(out, "mod.py", "exec"), namespace)
    assert namespace["Box"].area.__doc__ == "Docstring stays."
    with pytest.raises(NotImplementedError, match="exercise: width times height"):
        namespace["Box"]().area(2, 3)
    with pytest.raises(NotImplementedError, match=r"exercise: x \+ x"):
        namespace["twice"](1)


BROKEN = {
    "never closed": ("def f():\n    # >>> exercise: h\n    return 1\n", "never closed"),
    "close without open": ("def f():\n    return 1\n    # <<< exercise\n", "without an opening"),
    "nested": (
        "def f():\n    # >>> exercise: a\n    # >>> exercise: b\n    return 1\n    # <<< exercise\n"
        "    # <<< exercise\n",
        "inside the one opened",
    ),
    "no hint": ("def f():\n    # >>> exercise:\n    return 1\n    # <<< exercise\n", "without a hint"),
    "not a suffix": (
        "def f():\n    # >>> exercise: h\n    a = 1\n    # <<< exercise\n    return a\n",
        "complete suffix",
    ),
    "outside a function": ("# >>> exercise: h\nA = 1\n# <<< exercise\n", "outside any function"),
    "wrong indentation": (
        "def f():\n    if True:\n        # >>> exercise: h\n        return 1\n        # <<< exercise\n",
        "body indentation",
    ),
    "closes after the next function": (
        "def f():\n    # >>> exercise: h\n    return 1\n\n\ndef g():\n    return 2\n    # <<< exercise\n",
        "goes on after|between the end",
    ),
    "indent mismatch": (
        "def f():\n    # >>> exercise: h\n    return 1\n  # <<< exercise\n",
        "indented unlike",
    ),
    "misspelt": ("def f():\n    # >>>exercise h\n    return 1\n", "malformed exercise marker"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_markers_are_refused_with_file_and_line(tmp_path, case):
    source, message = BROKEN[case]
    path = tmp_path / "stage_x" / "mod.py"
    path.parent.mkdir()
    path.write_text(source)
    with pytest.raises(MarkerError, match=message) as err:
        file_exercises(tmp_path, path, "stage_x")
    assert str(err.value).startswith("stage_x/mod.py:")


def test_make_blanks_one_stage_and_copies_the_rest_unchanged(tmp_path):
    out = tmp_path / "ex"
    r = run_script("make", "--stage", "02_tokenizer", "--out", str(out))
    assert r.returncode == 0, r.stderr
    blanked = [e for e in find_exercises(REPO) if e.stage == "02_tokenizer"]
    for ex in blanked:
        assert "exercise: " + ex.hint in (out / ex.file).read_text(encoding="utf-8")
    for rel in ["01_data/dedup.py", "03_model/gpt.py", "tests/test_02_tokenizer.py", "pyproject.toml"]:
        assert (out / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assert not (out / "runs").exists() and not (out / ".git").exists()
    assert "NotImplementedError" not in (out / "01_data" / "dedup.py").read_text(encoding="utf-8")
    again = run_script("make", "--stage", "02_tokenizer", "--out", str(out))
    assert again.returncode == 2 and again.stderr.startswith("error:") and "Traceback" not in again.stderr
    bad = run_script("make", "--stage", "99_nothing", "--out", str(tmp_path / "other"))
    assert bad.returncode == 2 and "unknown stage" in bad.stderr


def test_list_shows_every_exercise_with_its_tests():
    r = run_script("list")
    assert r.returncode == 0, r.stderr
    for ex in find_exercises(REPO):
        assert f"| {ex.function} |" in r.stdout
    assert "NOTHING" not in r.stdout


def test_every_exercise_is_graded_by_a_test_that_fails_when_it_is_blanked():
    """One copy per stage; its grading tests pass on the full code; each exercise blanked alone fails one."""
    r = run_script("check", "--json", "--jobs", "2", timeout=400)
    results = json.loads(r.stdout.strip().splitlines()[-1])
    stages = {ex.stage for ex in find_exercises(REPO)}
    assert {x["stage"] for x in results} == stages
    assert len(results) == len(find_exercises(REPO)) + len(stages)  # one "(full code)" row per stage
    bad = [
        f"{x['stage']} {x['function']}: exit {x['exit']}\n{x.get('log', '')}" for x in results if not x["ok"]
    ]
    assert not bad, "\n\n".join(bad)
    assert r.returncode == 0
