"""Graded exercises: blank the marked function bodies, let a student rewrite them, grade with pytest.

Run it:
    python tests/exercises.py list                                  # every exercise and its grading tests
    python tests/exercises.py make --stage 02_tokenizer --out ~/ex  # a copy with that stage's bodies blanked
    python tests/exercises.py make --all --out ~/ex                 # ... with every exercise blanked
    cd ~/ex && python -m pytest -q tests/test_02_tokenizer.py       # grade (make prints one command per exercise)
    python tests/exercises.py check [--stage S]                     # prove each exercise is graded (CI does)

The marker. A core function body carries a comment pair, with a one-line hint:

    def jaccard(a, b):
        # >>> exercise: |A ∩ B| / |A ∪ B|, and 0 for two empty sets
        return len(a & b) / max(1, len(a | b))
        # <<< exercise

The marked lines must be a complete suffix of one function body (every statement from the opening
marker to the function's end, at the body's indentation), so that `make` can replace them, markers
included, with `raise NotImplementedError("<hint>")` and the file still compiles.

The grading tests of an exercise are the tests of its stage (tests/test_<NN>_*.py, or
tests/test_kernels_*.py for kernels/) that name the function: a test function whose code uses the
function's name (for a method, the method's name as an attribute; for `forward` or `__call__`, the
class's name), keeping only those that need no expensive fixture when there are any. GRADED_BY
below replaces that rule for one exercise when it picks too much or too little. `check` proves
the rule worked: in one copy per stage, the grading tests pass on the full code, and blanking each
exercise alone makes at least one of them fail (fail, not error at import: a student's copy must
still collect). It imports torch once and forks one pytest per exercise, so the whole check costs
about a second per exercise plus the tests' own time.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OPEN = re.compile(r"^(?P<indent>[ \t]*)# >>> exercise:(?P<hint>.*)$")
CLOSE = re.compile(r"^(?P<indent>[ \t]*)# <<< exercise[ \t]*$")
ANY_MARK = re.compile(r"#\s*(>>>|<<<)\s*exercise")
GENERIC_METHODS = {"forward", "__call__", "step", "update", "apply"}
# Tests asking only for these fixtures count as unit tests; when a function is named by any, the
# tests that need a whole pipeline run (default_run, small_cli_run, ...) are left to the suite.
CHEAP_FIXTURES = {"tmp_path", "monkeypatch", "capsys", "repo_root", "request", "rng"}

# "stage/file.py:Qual.name" -> test function names in the stage's test files, when the rule above
# would pick a slow end-to-end test or none at all. Keep every list to fast tests (CI runs them).
GRADED_BY: dict[str, list[str]] = {
    "01_data/clean.py:luhn_ok": ["test_mask_pii"],
    "01_data/dedup.py:candidate_pairs": ["test_lsh_curve_and_dedup_on_text"],
    "01_data/dedup.py:union_find_roots": ["test_lsh_curve_and_dedup_on_text"],
    "02_tokenizer/bpe.py:merge_ids": [
        "test_tie_break_prefers_greatest_bytes",
        "test_incremental_trainer_equals_naive",
    ],
    "02_tokenizer/bpe.py:merge_counting_pairs": [
        "test_tie_break_prefers_greatest_bytes",
        "test_incremental_trainer_equals_naive",
    ],
    "02_tokenizer/bpe.py:BPETokenizer.bpe_piece": [
        "test_hand_computed_merges",
        "test_fast_encoder_equals_per_piece_reference",
    ],
    "02_tokenizer/wordpiece.py:WordPieceTokenizer.tokenize_word": ["test_wordpiece_hand_checked"],
    "03_model/decoding.py:KVCache.update": [
        "test_kv_cache_is_preallocated_once_per_layer",
        "test_kv_cache_generation_equals_full_recomputation",
    ],
    "03_model/lm_loss.py:CrossEntropyAndZ.backward": [
        "test_cross_entropy_and_z_loss_values_and_gradients_match_autograd_of_torch"
    ],
    "04_pretrain/optimizers.py:AdamW.step": [
        "test_adamw_equals_torch_adamw_over_100_steps",
        "test_foreach_adamw_equals_the_per_parameter_loop",
    ],
    "kernels/attention_backends.py:causal_mask": [
        "test_naive_mask_is_the_definition_and_sdpa_agrees",
        "test_causal_past_ignores_future_keys",
    ],
    "kernels/attention_backends.py:attention_naive": [
        "test_naive_mask_is_the_definition_and_sdpa_agrees",
        "test_dispatch_errors_and_backends",
    ],
    "kernels/attention_backends.py:attention_tiled_forward": [
        "test_lse_is_logsumexp_of_scaled_scores",
        "test_tiled_half",
    ],
    "kernels/attention_backends.py:attention_tiled_backward": [
        "test_tiled_backward_gradcheck_float64",
        "test_tiled_backward_skips_nothing_it_needs",
    ],
    "kernels/quant_matmul.py:asymmetric_scale_zero": [
        "test_zero_point_helps_a_skewed_group",
        "test_round_trip_error_is_at_most_half_a_step",
    ],
    "05_sft_lora/chat_template.py:token_logprobs": [
        "test_masked_logprob_helpers_sum_only_the_trained_positions"
    ],
    "07_distill_quant/batching.py:Engine.schedule": [
        "test_continuous_refills_a_freed_slot_at_the_next_step_and_static_waits"
    ],
    "07_distill_quant/batching.py:Engine.free_finished": [
        "test_continuous_refills_a_freed_slot_at_the_next_step_and_static_waits"
    ],
    "07_distill_quant/gptq.py:HessianCollector.add": [
        "test_hessian_collector_is_two_over_n_xtx_and_removes_its_hooks"
    ],
    "07_distill_quant/gptq.py:gptq_columns": ["test_gptq_lowers_the_output_error_of_round_to_nearest"],
    "07_distill_quant/serve.py:Handler.send_event": [
        "test_streamed_chat_rebuilds_the_same_text_and_ends_with_done"
    ],
}


class MarkerError(ValueError):
    """A marker pair that `make` could not blank safely; the message starts with file:line."""


@dataclass
class Exercise:
    stage: str
    file: str  # relative to the repository root, with forward slashes
    function: str  # qualified name: "dedup_loss" or "BPETokenizer.encode"
    hint: str
    start: int  # 0-based line index of the opening marker
    end: int  # 0-based line index of the closing marker (inclusive)
    indent: str
    tests: list[str] = field(default_factory=list)  # pytest node ids, relative to the root

    @property
    def key(self) -> str:
        return f"{self.file}:{self.function}"


# ------------------------------------------------------------------------- finding the exercises
def stage_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if p.is_dir() and (re.match(r"\d\d_", p.name) or p.name == "kernels")
    )


def stage_test_files(root: Path, stage: str) -> list[Path]:
    prefix = "test_kernels" if stage == "kernels" else f"test_{stage[:2]}_"
    return sorted((root / "tests").glob(f"{prefix}*.py"))


def functions_by_line(tree: ast.AST):
    """(qualname, node) for every function, methods included, in source order."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child))
                walk(child, prefix + child.name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def enclosing_function(tree, lineno: int):
    """The innermost function whose body spans 1-based line `lineno`, or (None, None)."""
    best = (None, None)
    for qual, node in functions_by_line(tree):
        if node.lineno < lineno <= node.end_lineno:
            if best[1] is None or node.lineno > best[1].lineno:
                best = (qual, node)
    return best


def parse_markers(text: str, where: str) -> list[tuple[int, int, str, str]]:
    """(start, end, indent, hint) for every marker pair in `text`; MarkerError on a broken pair."""
    pairs, open_at = [], None
    for i, line in enumerate(text.splitlines()):
        m_open, m_close = OPEN.match(line), CLOSE.match(line)
        if m_open:
            if open_at is not None:
                raise MarkerError(
                    f"{where}:{i + 1}: exercise opened inside the one opened at line {open_at[0] + 1}"
                )
            hint = m_open["hint"].strip()
            if not hint:
                raise MarkerError(f"{where}:{i + 1}: exercise marker without a hint (# >>> exercise: <hint>)")
            open_at = (i, m_open["indent"], hint)
        elif m_close:
            if open_at is None:
                raise MarkerError(f"{where}:{i + 1}: '# <<< exercise' without an opening marker")
            if m_close["indent"] != open_at[1]:
                raise MarkerError(
                    f"{where}:{i + 1}: closing marker indented unlike its opening at line {open_at[0] + 1}"
                )
            pairs.append((open_at[0], i, open_at[1], open_at[2]))
            open_at = None
        elif ANY_MARK.search(line):
            raise MarkerError(
                f"{where}:{i + 1}: malformed exercise marker; write '# >>> exercise: <hint>' "
                "and '# <<< exercise' on lines of their own"
            )
    if open_at is not None:
        raise MarkerError(f"{where}:{open_at[0] + 1}: exercise opened but never closed ('# <<< exercise')")
    return pairs


def check_suffix(tree, lines: list[str], start: int, end: int, indent: str, where: str) -> str:
    """The qualified name of the function whose body suffix lines start..end (0-based) are."""
    qual, node = enclosing_function(tree, start + 1)
    if node is None:
        raise MarkerError(f"{where}:{start + 1}: exercise marker outside any function body")
    body_col = node.body[0].col_offset
    if len(indent) != body_col:
        raise MarkerError(
            f"{where}:{start + 1}: marker must sit at {qual}'s body indentation ({body_col} columns)"
        )
    inside = [s for s in node.body if start + 1 < s.lineno < end + 1]
    if not inside:
        raise MarkerError(f"{where}:{start + 1}: exercise marks no statement of {qual}")
    after = [s for s in node.body if s.end_lineno > end + 1]
    if after:
        raise MarkerError(
            f"{where}:{after[0].lineno}: {qual} goes on after '# <<< exercise'; the markers must "
            "close over the rest of the body (a complete suffix)"
        )
    straddle = [s for s in node.body if s.lineno < start + 1 < s.end_lineno]
    if straddle:
        raise MarkerError(f"{where}:{start + 1}: the opening marker sits inside a statement of {qual}")
    stray = [
        i for i in range(node.end_lineno, end) if lines[i].strip() and not lines[i].strip().startswith("#")
    ]
    if stray:
        raise MarkerError(f"{where}:{stray[0] + 1}: code between the end of {qual} and its '# <<< exercise'")
    return qual


def blank_lines(lines: list[str], exercises) -> list[str]:
    """Lines of a file with each exercise's marked lines replaced by one `raise NotImplementedError`."""
    out, i = [], 0
    for ex in sorted(exercises, key=lambda e: e.start):
        out += lines[i : ex.start]
        out.append(
            f"{ex.indent}raise NotImplementedError({json.dumps('exercise: ' + ex.hint, ensure_ascii=False)})"
        )
        i = ex.end + 1
    return out + lines[i:]


def blank_text(text: str, exercises) -> str:
    return "\n".join(blank_lines(text.split("\n"), exercises))


def file_exercises(root: Path, path: Path, stage: str) -> list[Exercise]:
    text = path.read_text(encoding="utf-8")
    if "exercise" not in text:
        return []
    rel = path.relative_to(root).as_posix()
    pairs = parse_markers(text, rel)
    if not pairs:
        return []
    tree = ast.parse(text, rel)
    found = []
    for start, end, indent, hint in pairs:
        qual = check_suffix(tree, text.split("\n"), start, end, indent, rel)
        found.append(Exercise(stage, rel, qual, hint, start, end, indent))
    try:
        compile(blank_text(text, found), rel, "exec")
    except SyntaxError as e:
        raise MarkerError(f"{rel}:{e.lineno}: the blanked file does not compile: {e.msg}") from None
    return found


@functools.cache
def test_functions(path: Path) -> list:
    """[(name, node, names it uses, fixtures it asks for)] for every test function in a test file
    (top level and in Test* classes); parsed once per file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            found.append((node.name, node))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            found += [
                (f"{node.name}::{sub.name}", sub)
                for sub in node.body
                if isinstance(sub, ast.FunctionDef) and sub.name.startswith("test")
            ]
    return [(name, node, names_used(node), fixtures(node)) for name, node in found]


def names_used(node) -> set:
    used = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            used.add(n.id)
        elif isinstance(n, ast.Attribute):
            used.add(n.attr)
    return used


def grading_tests(root: Path, ex: Exercise) -> list[str]:
    """Node ids of the tests that grade `ex` (GRADED_BY, else the tests that name the function)."""
    files = stage_test_files(root, ex.stage)
    tests = [(f.relative_to(root).as_posix(), *t) for f in files for t in test_functions(f)]
    if ex.key in GRADED_BY:
        wanted = GRADED_BY[ex.key]
        ids = [f"{f}::{name}" for f, name, *_ in tests if name in wanted]
        missing = set(wanted) - {t[1] for t in tests}
        if missing:
            raise MarkerError(f"GRADED_BY[{ex.key!r}] names tests that do not exist: {sorted(missing)}")
        return ids
    parts = ex.function.split(".")
    name = parts[-2] if parts[-1] in GENERIC_METHODS and len(parts) > 1 else parts[-1]
    naming = [t for t in tests if name in t[3]]
    cheap = [t for t in naming if t[4] <= CHEAP_FIXTURES]
    return [f"{t[0]}::{t[1]}" for t in (cheap or naming)]


def fixtures(test) -> set:
    """The fixtures a test function asks for (its arguments less the parametrized ones)."""
    params = set()
    for dec in test.decorator_list:
        if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize" and dec.args:
            if isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
                params |= {p.strip() for p in dec.args[0].value.split(",")}
            elif isinstance(dec.args[0], (ast.List, ast.Tuple)):
                params |= {e.value for e in dec.args[0].elts if isinstance(e, ast.Constant)}
    return {a.arg for a in test.args.args if a.arg != "self"} - params


def find_exercises(root: Path = REPO, stages=None) -> list[Exercise]:
    """Every exercise under the stage folders of `root`, with its grading tests."""
    found = []
    for d in stage_dirs(root):
        if stages and d.name not in stages:
            continue
        for path in sorted(d.glob("*.py")):
            found += file_exercises(root, path, d.name)
    for ex in found:
        ex.tests = grading_tests(root, ex)
    return found


# ------------------------------------------------------------------------------- making a copy
def repo_files(root: Path) -> list[str]:
    """The files git would commit: tracked plus untracked-not-ignored (so runs/ stays behind)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        return sorted({p for p in out.decode().split("\0") if p and (root / p).is_file()})
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs
        skip = {".git", "runs", "__pycache__", ".pytest_cache"}
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(root).parts)
        )


def make_copy(root: Path, out: Path, exercises) -> None:
    """Copy the repository into `out` (which must be empty or absent), blanking `exercises`."""
    by_file = {}
    for ex in exercises:
        by_file.setdefault(ex.file, []).append(ex)
    for rel in repo_files(root):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in by_file:
            dst.write_text(
                blank_text((root / rel).read_text(encoding="utf-8"), by_file[rel]), encoding="utf-8"
            )
        else:
            shutil.copy2(root / rel, dst)


# ------------------------------------------------------------------------------------- grading
def pytest_in_child(copy: Path, node_ids: list[str], log: Path, timeout: float = 300) -> int:
    """pytest's exit code for `node_ids` in a forked child (0 pass, 1 a test failed, 2 collection
    error, 5 none collected); the parent has torch imported already, the stage modules not."""
    pid = os.fork()
    if pid == 0:  # child: fresh imports of the (possibly blanked) stage modules from `copy`
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy)
            import pytest

            code = int(
                pytest.main(
                    [
                        "-q",
                        "-x",
                        "-p",
                        "no:cacheprovider",
                        "-p",
                        "no:unraisableexception",
                        "-o",
                        "addopts=",
                        *node_ids,
                    ]
                )
            )
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    t0 = time.time()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() - t0 > timeout:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.02)


def grade_stage(copy: Path, stage: str) -> list[dict]:
    """In a full copy: the grading tests pass, and blanking each exercise alone fails one of them."""
    import torch  # noqa: F401  (imported once here, shared by every forked child)
    import numpy  # noqa: F401
    import pytest  # noqa: F401

    if not torch.cuda.is_available():  # as tests/conftest.py does, before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for heavy in ("triton", "regex", "tiktoken"):  # third-party imports the stages share, loaded once
        try:
            __import__(heavy)
        except ImportError:
            pass
    import gc

    gc.freeze()  # torch's many objects out of every child's collections (pytest collects at exit)
    exercises = find_exercises(copy, [stage])
    logs = Path(tempfile.mkdtemp(prefix="exercise-logs-"))
    results = []
    union = sorted({t for ex in exercises for t in ex.tests})
    t0 = time.time()
    code = pytest_in_child(copy, union, logs / "full.log") if union else 5
    results.append(
        {
            "stage": stage,
            "function": "(full code)",
            "tests": len(union),
            "exit": code,
            "ok": code == 0,
            "seconds": round(time.time() - t0, 1),
            "log": "" if code == 0 else tail(logs / "full.log"),
        }
    )
    for ex in exercises:
        if (
            results[0]["exit"] != 0
        ):  # the stage itself is broken: blanking proves nothing; say so per exercise
            results.append(
                {
                    "stage": stage,
                    "file": ex.file,
                    "function": ex.function,
                    "tests": len(ex.tests),
                    "exit": None,
                    "ok": False,
                    "seconds": 0,
                    "log": "not graded: its stage's grading tests fail on the full code (see above)",
                }
            )
            continue
        path = copy / ex.file
        text = path.read_text(encoding="utf-8")
        t0 = time.time()
        if ex.tests:
            path.write_text(blank_text(text, [ex]), encoding="utf-8")
            try:
                code = pytest_in_child(copy, ex.tests, logs / "ex.log")
            finally:
                path.write_text(text, encoding="utf-8")
        else:
            code = 5
        results.append(
            {
                "stage": stage,
                "file": ex.file,
                "function": ex.function,
                "tests": len(ex.tests),
                "exit": code,
                "ok": code == 1,
                "seconds": round(time.time() - t0, 1),
                "log": "" if code == 1 else tail(logs / "ex.log"),
            }
        )
    shutil.rmtree(logs, ignore_errors=True)
    return results


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def check(root: Path, stages, jobs: int) -> list[dict]:
    """grade_stage for each stage in its own copy and process, `jobs` at a time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with tempfile.TemporaryDirectory(prefix="exercise-check-") as tmp:
        procs, results, pending = [], [], list(stages)
        copy_root = Path(tmp) / "repo"
        make_copy(root, copy_root, [])
        while pending or procs:
            while pending and len(procs) < jobs:
                stage = pending.pop(0)
                copy = Path(tmp) / stage
                shutil.copytree(copy_root, copy)
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(copy / "tests" / "exercises.py"), "_grade", stage],
                        cwd=copy,
                        env=env,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            time.sleep(0.05)
            for p in [p for p in procs if p.poll() is not None]:
                procs.remove(p)
                out = p.stdout.read()
                try:
                    results += json.loads(out.strip().splitlines()[-1])
                except (json.JSONDecodeError, IndexError):
                    results.append(
                        {
                            "stage": p.args[-1],
                            "function": "(grader crashed)",
                            "ok": False,
                            "exit": p.returncode,
                            "tests": 0,
                            "seconds": 0,
                            "log": out[-2000:],
                        }
                    )
    return results


# --------------------------------------------------------------------------------- command line
def table(rows, columns) -> str:
    sys.path.insert(0, str(REPO))
    from common.files import markdown_table

    return markdown_table([{k: str(v).replace("|", "\\|") for k, v in r.items()} for r in rows], columns)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_list = sub.add_parser("list", help="every exercise: stage, file, function, hint, grading tests")
    p_list.add_argument("--stage", action="append", help="only this stage (repeatable)")
    p_list.add_argument("--json", action="store_true", help="JSON instead of a table")
    p_make = sub.add_parser("make", help="a copy of the repository with exercises blanked")
    which = p_make.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", action="append", help="blank this stage's exercises (repeatable)")
    which.add_argument("--all", action="store_true", help="blank every exercise")
    p_make.add_argument("--out", required=True, help="a new (or empty) folder for the copy")
    p_check = sub.add_parser("check", help="prove every exercise is graded (what CI runs)")
    p_check.add_argument("--stage", action="append", help="only this stage (repeatable)")
    p_check.add_argument("--jobs", type=int, default=2, help="stages graded at once")
    p_check.add_argument("--json", action="store_true", help="print the results as JSON")
    p_grade = sub.add_parser("_grade", help=argparse.SUPPRESS)
    p_grade.add_argument("stage")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "_grade":  # internal: runs inside a copy, prints one JSON line
            print(json.dumps(grade_stage(REPO, args.stage)), flush=True)
            os._exit(0)  # skip interpreter teardown: pre-imported triton prints leak warnings there
        known = [d.name for d in stage_dirs(REPO)]
        for s in getattr(args, "stage", None) or []:
            if s not in known:
                raise MarkerError(f"unknown stage {s!r}; choose from {', '.join(known)}")
        exercises = find_exercises(REPO, getattr(args, "stage", None))
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.cmd == "list":
        if args.json:
            print(json.dumps([asdict(e) | {"key": e.key} for e in exercises], indent=1, ensure_ascii=False))
            return 0
        rows = [
            {
                "stage": e.stage,
                "file": e.file.split("/")[-1],
                "function": e.function,
                "hint": e.hint,
                "graded by": ", ".join(t.split("::", 1)[1] for t in e.tests) or "NOTHING",
            }
            for e in exercises
        ]
        print(table(rows, ["stage", "file", "function", "hint", "graded by"]))
        counts = {}
        for e in exercises:
            counts[e.stage] = counts.get(e.stage, 0) + 1
        print("\n" + ", ".join(f"{s}: {n}" for s, n in counts.items()) + f"; {len(exercises)} exercises")
        return 0
    if args.cmd == "make":
        out = Path(args.out).expanduser().resolve()
        if out == REPO or REPO in out.parents:
            print("error: --out is inside this repository; pass a folder outside it", file=sys.stderr)
            return 2
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            print(f"error: {out} is not an empty folder; pass a new folder to --out", file=sys.stderr)
            return 2
        make_copy(REPO, out, exercises)
        stages = sorted({e.stage for e in exercises})
        print(f"wrote {out} with {len(exercises)} exercises blanked in {', '.join(stages) or 'no stage'}")
        for s in stages:
            files = " ".join(f.relative_to(REPO).as_posix() for f in stage_test_files(REPO, s))
            print(f"\n{s}, graded as a whole:  cd {out} && python -m pytest -q {files}")
            for e in (e for e in exercises if e.stage == s):
                print(f"  {e.file}:{e.function}:  python -m pytest -q {' '.join(e.tests)}")
        return 0
    # check
    stages = sorted({e.stage for e in exercises})
    t0 = time.time()
    results = check(REPO, stages, args.jobs)
    if args.json:
        print(json.dumps(results))
    else:
        print(
            table(
                [r | {"ok": "yes" if r["ok"] else "NO"} for r in results],
                ["stage", "function", "tests", "exit", "ok", "seconds"],
            )
        )
        for r in results:
            if not r["ok"]:
                print(
                    f"\n{r['stage']} {r['function']}: exit {r['exit']} "
                    f"({'expected 0' if r['function'] == '(full code)' else 'expected 1: a test fails'})\n{r['log']}"
                )
        print(f"\n{sum(r['ok'] for r in results)}/{len(results)} ok in {time.time() - t0:.0f} s")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
