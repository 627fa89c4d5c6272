"""The graded exercises (tests/exercises.py): every marker is well formed, and every exercise is graded.

"Graded" means: with the full code its grading tests pass; with that exercise alone blanked to
`raise NotImplementedError` at least one of them fails (a failure, not a collection error); and with
each of its wrong answers in tests/exercise_mutants.py (an off-by-one, a sign, a missing mask ...)
at least one of them fails too. The check runs each exercise's few named tests, never the whole
suite, in two worker copies that import torch once and fork one pytest per task.
"""

import json
import os
import subprocess
import sys

import pytest
from exercise_mutants import M
from exercises import (
    REPO,
    MarkerError,
    blank_text,
    file_exercises,
    find_exercises,
    load_mutants,
    mutant_errors,
    mutant_text,
    stage_dirs,
)

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


def test_every_exercise_has_three_mutants_whose_text_matches():
    """tests/exercise_mutants.py names every exercise, with at least three wrong answers, each found
    exactly once in its exercise's marked lines (a spec that no longer matches fails loudly)."""
    exercises = find_exercises(REPO)
    specs = load_mutants(REPO)
    assert not mutant_errors(REPO, exercises, specs)
    few = [ex.key for ex in exercises if len(specs.get(ex.key, [])) < 3]
    assert not few, f"fewer than three mutants in tests/exercise_mutants.py: {few}"
    assert set(specs) <= {ex.key for ex in exercises}, set(specs) - {ex.key for ex in exercises}


def test_a_mutant_whose_text_is_gone_is_named_with_its_exercise(tmp_path):
    path = tmp_path / "stage_x" / "mod.py"
    path.parent.mkdir()
    path.write_text(GOOD)
    box, twice = file_exercises(tmp_path, path, "stage_x")
    assert "        a = w + h\n" in mutant_text(GOOD, box, 1, M("w * h", "w + h", "adds"))
    with pytest.raises(
        MarkerError, match=r"mutant 2 of exercise stage_x/mod.py:Box.area \(gone\): text not found"
    ):
        mutant_text(GOOD, box, 2, M("w * h * 2", "w", "gone"))
    with pytest.raises(MarkerError, match="found 2 times"):
        mutant_text(GOOD, twice, 1, M("x", "y", "which x?"))
    with pytest.raises(MarkerError, match="does not compile"):
        mutant_text(GOOD, box, 3, M("a = w * h", "a = (", "broken"))


def test_every_exercise_and_every_mutant_is_graded_and_a_student_copy_works():
    """One check, what CI runs: in two worker copies, each stage's grading tests pass on the full code;
    each exercise blanked alone fails one of them; each mutant fails one of them; and in 06's student
    copy every grading test fails on NotImplementedError and filling one exercise turns exactly its
    tests green."""
    r = run_script("check", "--mutants", "--student", "06_rlhf_dpo", "--json", "--jobs", "2", timeout=1800)
    results = json.loads(r.stdout.strip().splitlines()[-1])
    exercises = find_exercises(REPO)
    specs = load_mutants(REPO)
    kinds = [x["kind"] for x in results]
    assert kinds.count("full") == len({ex.stage for ex in exercises}) and kinds.count("student") == 1
    assert kinds.count("blank") == len(exercises)
    assert kinds.count("mutant") == sum(len(specs.get(ex.key, [])) for ex in exercises)
    bad = [
        f"{x['stage']} {x['function']} {x['kind']} {x.get('mutant') or ''} {x.get('why', '')}: "
        f"exit {x['exit']}\n{x.get('log', '')}"
        for x in results
        if not x["ok"]
    ]
    assert not bad, "\n\n".join(bad)
    assert r.returncode == 0


def test_make_bug_plants_one_mutant_and_check_confirms_the_fix(tmp_path):
    out = tmp_path / "drill"
    r = run_script("make", "--bug", "06_rlhf_dpo", "--seed", "5", "--answer", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "a test fails; find the line" in r.stdout and "answer:" in r.stdout
    assert not (out / "tests" / "exercise_mutants.py").exists()  # the answers stay with the teacher
    changed = [
        f.relative_to(out).as_posix()
        for f in (out / "06_rlhf_dpo").glob("*.py")
        if f.read_bytes() != (REPO / f.relative_to(out)).read_bytes()
    ]
    assert len(changed) == 1 and changed[0] in r.stdout, (changed, r.stdout)
    assert run_script(
        "make", "--bug", "06_rlhf_dpo", "--seed", "5", "--out", str(tmp_path / "again")
    ).stdout.split("\n")[0] == r.stdout.split("\n")[0].replace(
        str(out), str(tmp_path / "again")
    )  # the seed picks the same bug
    tests = [t for ex in find_exercises(REPO, ["06_rlhf_dpo"]) if ex.file == changed[0] for t in ex.tests]
    failing = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert failing.returncode == 1, failing.stdout[-2000:]
    (out / changed[0]).write_bytes((REPO / changed[0]).read_bytes())  # the student's fix
    fixed = subprocess.run(
        [sys.executable, str(out / "tests" / "exercises.py"), "check", "--stage", "06_rlhf_dpo"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-2000:]
    bad = run_script("make", "--bug", "99_nothing", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown stage" in bad.stderr
    seed_alone = run_script("make", "--stage", "06_rlhf_dpo", "--seed", "1", "--out", str(tmp_path / "y"))
    assert seed_alone.returncode == 2 and seed_alone.stderr.startswith("error:")
