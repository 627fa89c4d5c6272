"""Graded exercises: blank the marked function bodies, let a student rewrite them, grade with pytest.

Run it:
    python tests/exercises.py list                                  # every exercise and its grading tests
    python tests/exercises.py make --stage 02_tokenizer --out ~/ex  # a copy with that stage's bodies blanked
    python tests/exercises.py make --all --out ~/ex                 # ... with every exercise blanked
    cd ~/ex && python -m pytest -q tests/test_02_tokenizer.py       # grade (make prints one command per exercise)
    python tests/exercises.py check [--stage S]                     # prove each exercise is graded
    python tests/exercises.py check --mutants                       # ... and every wrong answer fails (CI)
    python tests/exercises.py check --mutants --exercise top_p      # one exercise, while writing its tests
    python tests/exercises.py check --student 06_rlhf_dpo           # a blanked stage works as a course
    python tests/exercises.py make --bug 04_pretrain --out ~/drill  # one wrong line planted: find it

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
the rule worked: the grading tests pass on the full code, and blanking each exercise alone makes at
least one of them fail (fail, not error at import: a student's copy must still collect).

Wrong answers. A missing body is the easy half; a student's wrong answer is an off-by-one, a sign, a
missing normalization. tests/exercise_mutants.py lists at least three per exercise (the text each
replaces inside the marked lines, and what is wrong); `check --mutants` applies each in a scratch
copy and requires a grading test to fail, and stops with "mutant N of exercise K: text not found"
when an exercise changed under its spec. `make --bug STAGE` plants one of them, at random, in a copy
for a find-the-bug drill; `check --stage STAGE` there confirms the student's fix. `check --student
STAGE` proves a blanked stage works as a course: every grading test fails on NotImplementedError, and
filling in one exercise turns exactly its tests green.

Speed: `--jobs` worker processes (2), each with its own copy of the repository, import torch once
and fork one pytest per task (the full code of a stage, a blanked exercise, one mutant), taking the
next task when free; a task runs only its exercise's grading tests, stopping at the first failure.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import os
import random
import re
import selectors
import shutil
import signal
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
    "01_data/pii.py:luhn_ok": ["test_mask_pii", "test_luhn_by_hand_including_a_doubled_five"],
    "01_data/dedup.py:candidate_pairs": [
        "test_lsh_curve_and_dedup_on_text",
        "test_lsh_probability_pairs_and_roots_by_hand",
    ],
    "01_data/dedup.py:union_find_roots": [
        "test_lsh_curve_and_dedup_on_text",
        "test_lsh_probability_pairs_and_roots_by_hand",
    ],
    "02_tokenizer/bpe_merges.py:merge_ids": [
        "test_tie_break_prefers_greatest_bytes",
        "test_incremental_trainer_equals_naive",
    ],
    "02_tokenizer/bpe_merges.py:merge_counting_pairs": [
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
        "test_tiled_forward_keeps_the_key_tile_that_starts_on_the_diagonal",
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
    "07_distill_quant/slot_cache.py:SlotCache.decode": [
        "test_stop_id_ends_the_answer_and_is_kept_in_the_ids_only",
        "test_every_policy_gives_each_request_the_tokens_it_gets_alone",
    ],
    "07_distill_quant/batching.py:Engine.schedule": [
        "test_continuous_refills_a_freed_slot_at_the_next_step_and_static_waits",
        "test_a_cancelled_request_frees_its_slot_and_the_others_are_unchanged",
    ],
    "07_distill_quant/batching.py:Engine.free_finished": [
        "test_continuous_refills_a_freed_slot_at_the_next_step_and_static_waits",
        "test_static_batching_keeps_a_finished_row_until_its_batch_ends",
        "test_a_cancelled_request_frees_its_slot_and_the_others_are_unchanged",
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


def make_copy(root: Path, out: Path, exercises, skip=frozenset()) -> None:
    """Copy the repository into `out` (which must be empty or absent), blanking `exercises`."""
    by_file = {}
    for ex in exercises:
        by_file.setdefault(ex.file, []).append(ex)
    for rel in repo_files(root):
        if rel in skip:
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in by_file:
            dst.write_text(
                blank_text((root / rel).read_text(encoding="utf-8"), by_file[rel]), encoding="utf-8"
            )
        else:
            shutil.copy2(root / rel, dst)


# ------------------------------------------------------------------------------------- mutants
def load_mutants(root: Path) -> dict:
    """MUTANTS of root/tests/exercise_mutants.py; {} where the file is absent (a `make --bug` copy)."""
    path = root / "tests" / "exercise_mutants.py"
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location("exercise_mutants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


def mutant_label(ex: Exercise, i: int, m) -> str:
    return f"mutant {i} of exercise {ex.key} ({m.why})"


def mutant_text(text: str, ex: Exercise, i: int, m) -> str:
    """`text` (ex's file) with mutant `i` applied inside ex's marked lines; MarkerError, loudly, when
    the text it replaces is not there exactly once (the exercise changed: repair the spec)."""
    lines = text.split("\n")
    region = "\n".join(lines[ex.start + 1 : ex.end])
    n = region.count(m.old)
    if n != 1:
        where = "not found" if n == 0 else f"found {n} times"
        raise MarkerError(
            f"{mutant_label(ex, i, m)}: text {where} in the exercise: {m.old!r}; "
            "repair its spec in tests/exercise_mutants.py"
        )
    out = "\n".join(lines[: ex.start + 1] + region.replace(m.old, m.new).split("\n") + lines[ex.end :])
    try:
        compile(out, ex.file, "exec")
    except SyntaxError as e:
        raise MarkerError(f"{mutant_label(ex, i, m)}: the mutated file does not compile: {e.msg}") from None
    return out


def mutant_errors(root: Path, exercises, specs: dict) -> list[str]:
    """Every spec that names no exercise or whose text no longer matches, as a message."""
    errors, by_key = [], {ex.key: ex for ex in exercises}
    stages = {ex.stage for ex in exercises}
    for key, ms in specs.items():
        ex = by_key.get(key)
        if ex is None:
            if key.split("/")[0] in stages:
                errors.append(f"mutants of {key}: no such exercise (moved or renamed? repair the key)")
            continue
        text = (root / ex.file).read_text(encoding="utf-8")
        for i, m in enumerate(ms, 1):
            try:
                mutant_text(text, ex, i, m)
            except MarkerError as e:
                errors.append(str(e))
    return errors


# ------------------------------------------------------------------------------------- grading
def pytest_in_child(copy: Path, node_ids: list[str], log: Path, timeout: float = 300, extra=()) -> int:
    """pytest's exit code for `node_ids` in a forked child (0 pass, 1 a test failed, 2 collection
    error, 5 none collected, 124 timed out); the parent has torch imported, the stage modules not."""
    pid = os.fork()
    if pid == 0:  # child: fresh imports of the (possibly blanked or mutated) stage modules from `copy`
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy)
            os.environ["COLUMNS"] = "1000"  # -rA summary lines whole, not cut to a terminal's width
            import pytest

            # ~300 children: no installed plugin is loaded, no assert is rewritten (grading reads
            # the exit code and -rA's lines only); together ~15 % of the whole check's time
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            args = ["-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception", "--assert=plain"]
            args += ["-o", "addopts="]
            code = int(pytest.main([*args, *extra, *node_ids]))
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
        time.sleep(0.01)


def preimport() -> None:
    """Import what every stage shares once, before forking: torch, numpy, pytest, triton, ..."""
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch

    if not torch.cuda.is_available():  # as tests/conftest.py does, before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for heavy in ("triton", "regex", "tiktoken", "matplotlib"):  # third-party imports, loaded once
        try:
            __import__(heavy)
        except ImportError:
            pass
    import gc

    gc.freeze()  # torch's many objects out of every child's collections (pytest collects at exit)


def outcomes(log: Path) -> dict:
    """{test function node id: "PASSED" or "FAILED <message>"} from pytest's -rA summary; a
    parametrized test counts as failed when any of its cases failed."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR) (\S+)(?: - (.*))?$", line)
        if m:
            node = m[2].split("[", 1)[0]
            if m[1] == "PASSED":
                out.setdefault(node, "PASSED")
            else:
                out[node] = f"FAILED {m[3] or m[1]}"
    return out


def run_task(copy: Path, task: dict, exercises: dict, specs: dict, logs: Path) -> dict:
    """One unit of `check` in a worker's copy: the full code passes ("full"), the exercise blanked
    fails ("blank"), one mutant fails ("mutant"), or a stage's student copy works ("student")."""
    kind, t0 = task["kind"], time.time()
    row = {"kind": kind, "stage": task["stage"], "function": "(full code)", "mutant": None, "why": ""}
    log = logs / "task.log"
    if kind == "full":
        tests = task["tests"]
        code = pytest_in_child(copy, tests, log, extra=["-x"]) if tests else 5
        ok = code == 0
    elif kind == "student":
        return row | student_copy_check(copy, task["stage"], exercises, logs) | {"seconds": time.time() - t0}
    else:
        ex = exercises[task["key"]]
        row |= {"file": ex.file, "function": ex.function}
        tests = ex.tests
        path = copy / ex.file
        text = path.read_text(encoding="utf-8")
        if kind == "blank":
            changed = blank_text(text, [ex])
        else:
            m = specs[ex.key][task["index"] - 1]
            row |= {"mutant": task["index"], "why": m.why, "survives": m.survives}
            changed = mutant_text(text, ex, task["index"], m)
        path.write_text(changed, encoding="utf-8")
        try:
            code = pytest_in_child(copy, tests, log, timeout=120, extra=["-x"]) if tests else 5
        finally:
            path.write_text(text, encoding="utf-8")
        ok = code in (1, 124) if kind == "mutant" else code == 1  # killed (a hang is killed too)
        if kind == "mutant" and not ok and row["survives"]:
            ok = True  # an accepted survivor: the spec says why no test can tell it from the code
    return row | {
        "tests": len(tests),
        "exit": code,
        "ok": ok,
        "seconds": round(time.time() - t0, 2),
        "log": "" if (ok and kind != "mutant") or code == 1 else tail(log),
    }


def student_copy_check(copy: Path, stage: str, exercises: dict, logs: Path) -> dict:
    """`make --all` works as a course for `stage`: with every exercise of the repository blanked, each
    of the stage's grading tests fails on an exercise's NotImplementedError (not an import error);
    and with the earlier stages done, filling in one exercise of the stage turns exactly its tests green."""
    mine = [ex for ex in exercises.values() if ex.stage == stage]
    union = sorted({t for ex in mine for t in ex.tests})
    by_file = {}
    for ex in exercises.values():
        by_file.setdefault(ex.file, []).append(ex)
    originals = {f: (copy / f).read_text(encoding="utf-8") for f in by_file}
    problems = []

    def blank(keep):
        for f, exs in by_file.items():
            gone = [e for e in exs if keep(e)]
            (copy / f).write_text(blank_text(originals[f], gone) if gone else originals[f], encoding="utf-8")

    try:
        blank(lambda e: True)  # what `make --all` writes
        log = logs / "student.log"
        pytest_in_child(copy, union, log, extra=["-rA"])
        seen = outcomes(log)
        for t in union:
            if "NotImplementedError: exercise:" not in seen.get(t, ""):
                problems.append(f"all blanked: {t} should fail on NotImplementedError, got {seen.get(t)!r}")
        for ex in mine:  # a student at this stage: the earlier stages filled in, this one blanked
            blank(lambda e, ex=ex: e.stage == stage and e is not ex)
            pytest_in_child(copy, union, log, extra=["-rA"])
            seen = outcomes(log)
            green = {t for t in union if seen.get(t) == "PASSED"}
            if green != set(ex.tests):
                problems.append(
                    f"only {ex.function} filled in: green {sorted(green)}, expected exactly {sorted(ex.tests)}"
                )
    finally:
        for f, text in originals.items():
            (copy / f).write_text(text, encoding="utf-8")
    return {
        "function": "(student copy)",
        "tests": len(union),
        "exit": None,
        "ok": not problems,
        "log": "\n".join(problems),
    }


def worker(copy: Path) -> None:
    """`_worker`: grade the tasks read from stdin (one JSON a line) in `copy`, one '@@ <JSON>' line each."""
    preimport()
    exercises = {ex.key: ex for ex in find_exercises(copy)}
    specs = load_mutants(copy)
    logs = Path(tempfile.mkdtemp(prefix="exercise-logs-"))
    for line in sys.stdin:
        task = json.loads(line)
        try:
            row = run_task(copy, task, exercises, specs, logs)
        except Exception as e:  # noqa: BLE001  (a broken spec or copy: this task's failure, not the check's)
            row = {
                "kind": task["kind"],
                "stage": task["stage"],
                "function": task.get("key", "?"),
                "mutant": task.get("index"),
                "ok": False,
                "exit": None,
                "tests": 0,
                "seconds": 0,
                "log": f"{type(e).__name__}: {e}",
            }
        sys.stdout.write("@@ " + json.dumps(row) + "\n")
        sys.stdout.flush()
    shutil.rmtree(logs, ignore_errors=True)


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def check_tasks(exercises, specs: dict, mutants: bool, student: list) -> list[dict]:
    """The work of `check`, slowest stages' tasks first so that the workers finish together."""
    stages = sorted({ex.stage for ex in exercises}, reverse=True)
    tasks = [
        {
            "kind": "full",
            "stage": s,
            "tests": sorted({t for ex in exercises if ex.stage == s for t in ex.tests}),
        }
        for s in stages
    ]
    tasks += [{"kind": "student", "stage": s} for s in student]
    for s in stages:
        for ex in (e for e in exercises if e.stage == s):
            tasks.append({"kind": "blank", "stage": s, "key": ex.key})
            if mutants:
                tasks += [
                    {"kind": "mutant", "stage": s, "key": ex.key, "index": i}
                    for i in range(1, len(specs.get(ex.key, [])) + 1)
                ]
    return tasks


def check(
    root: Path, stages, jobs: int, mutants: bool = False, student=(), progress=False, only=()
) -> list[dict]:
    """Every task of `check_tasks` in `jobs` worker processes, each in its own copy of the repository,
    each importing torch once and forking one pytest per task; a task goes to whichever is free.
    `only`: keep the exercises whose key contains one of these strings."""
    exercises = find_exercises(root, stages)
    specs = load_mutants(root) if mutants else {}
    errors = mutant_errors(root, exercises, specs)
    if errors:
        raise MarkerError("\n".join(errors))
    if only:
        exercises = [ex for ex in exercises if any(o in ex.key for o in only)]
    tasks = check_tasks(exercises, specs, mutants, list(student))
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    results = []
    with tempfile.TemporaryDirectory(prefix="exercise-check-") as tmp:
        base = Path(tmp) / "repo"
        make_copy(root, base, [])
        workers = []
        for w in range(max(1, min(jobs, len(tasks)))):
            copy = Path(tmp) / f"worker{w}"
            shutil.copytree(base, copy)
            workers.append(
                subprocess.Popen(
                    [sys.executable, str(copy / "tests" / "exercises.py"), "_worker"],
                    cwd=copy,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    bufsize=1,
                )
            )
        sel = selectors.DefaultSelector()
        busy = {}
        for p in workers:
            sel.register(p.stdout, selectors.EVENT_READ, p)
        pending = list(tasks)

        def feed(p):
            if pending:
                busy[p] = pending.pop(0)
                p.stdin.write(json.dumps(busy[p]) + "\n")
                p.stdin.flush()
            else:
                busy.pop(p, None)
                p.stdin.close()

        try:
            for p in workers:
                feed(p)
            while busy:
                for key, _ in sel.select():
                    p = key.data
                    line = p.stdout.readline()
                    if not line:  # the worker died: its task fails, the others take the rest
                        sel.unregister(p.stdout)
                        task = busy.pop(p, None)
                        if task:
                            results.append(
                                {
                                    "kind": task["kind"],
                                    "stage": task["stage"],
                                    "function": "(worker crashed)",
                                    "mutant": task.get("index"),
                                    "ok": False,
                                    "exit": p.wait(),
                                    "tests": 0,
                                    "seconds": 0,
                                    "log": task.get("key", ""),
                                }
                            )
                        continue
                    if line.startswith("@@ "):
                        results.append(json.loads(line[3:]))
                        if progress:
                            r = results[-1]
                            print(
                                f"[{len(results)}/{len(tasks)}] {time.time() - t0:4.0f} s  {r['stage']} "
                                f"{r['function']} {r['kind']} {r.get('mutant') or ''}: {'ok' if r['ok'] else 'NOT OK'}",
                                file=sys.stderr,
                                flush=True,
                            )
                        feed(p)
        finally:  # interrupted (Ctrl-C, SIGTERM): no worker outlives the check
            for p in workers:
                if p.poll() is None and p in busy:
                    p.kill()
        for p in workers:
            p.wait()
    failed = {r["stage"] for r in results if r["kind"] == "full" and not r["ok"]}
    for r in results:  # a stage whose full code fails proves nothing by blanking or mutating it
        if r["stage"] in failed and r["kind"] in ("blank", "mutant"):
            r |= {
                "ok": False,
                "log": "not graded: its stage's grading tests fail on the full code (see above)",
            }
    return results


def plant_bug(root: Path, out: Path, stage: str, seed: int):
    """A copy of the repository with one mutant of `stage`, chosen by `seed`, and no mutant list."""
    exercises = find_exercises(root, [stage])
    specs = load_mutants(root)
    choices = [
        (ex, i, m) for ex in exercises for i, m in enumerate(specs.get(ex.key, []), 1) if not m.survives
    ]
    if not choices:
        raise MarkerError(f"stage {stage} has no mutants in tests/exercise_mutants.py to plant")
    ex, i, m = random.Random(seed).choice(choices)
    make_copy(root, out, [], skip={"tests/exercise_mutants.py"})
    path = out / ex.file
    path.write_text(mutant_text(path.read_text(encoding="utf-8"), ex, i, m), encoding="utf-8")
    return ex, i, m


# --------------------------------------------------------------------------------- command line
def table(rows, columns) -> str:
    sys.path.insert(0, str(REPO))
    from common.files import markdown_table

    return markdown_table([{k: str(v).replace("|", "\\|") for k, v in r.items()} for r in rows], columns)


def summary_rows(results) -> list[dict]:
    """Per stage: exercises, blanked ones that fail, mutants, mutants killed, accepted survivors."""
    rows = {}
    for r in results:
        row = rows.setdefault(
            r["stage"],
            {"stage": r["stage"], "exercises": 0, "blank fails": 0, "mutants": 0, "killed": 0, "accepted": 0},
        )
        if r["kind"] == "blank":
            row["exercises"] += 1
            row["blank fails"] += r["ok"]
        elif r["kind"] == "mutant":
            row["mutants"] += 1
            row["killed"] += r["ok"] and r["exit"] in (1, 124)
            row["accepted"] += r["ok"] and r["exit"] not in (1, 124)
    return [rows[s] for s in sorted(rows)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_list = sub.add_parser("list", help="every exercise: stage, file, function, hint, grading tests")
    p_list.add_argument("--stage", action="append", help="only this stage (repeatable)")
    p_list.add_argument("--json", action="store_true", help="JSON instead of a table")
    p_make = sub.add_parser(
        "make", help="a copy of the repository with exercises blanked, or one bug planted"
    )
    which = p_make.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", action="append", help="blank this stage's exercises (repeatable)")
    which.add_argument("--all", action="store_true", help="blank every exercise")
    which.add_argument(
        "--bug", metavar="STAGE", help="plant one wrong line (a mutant) in this stage: find it"
    )
    p_make.add_argument("--out", required=True, help="a new (or empty) folder for the copy")
    p_make.add_argument("--seed", type=int, help="with --bug: which mutant (default: a random one)")
    p_make.add_argument("--answer", action="store_true", help="with --bug: print where the bug is (teachers)")
    p_check = sub.add_parser("check", help="prove every exercise is graded (what CI runs)")
    p_check.add_argument("--stage", action="append", help="only this stage (repeatable)")
    p_check.add_argument("--jobs", type=int, default=2, help="worker processes (each imports torch once)")
    p_check.add_argument(
        "--mutants",
        action="store_true",
        help="also require every wrong implementation in exercise_mutants.py to fail",
    )
    p_check.add_argument(
        "--student",
        action="append",
        metavar="STAGE",
        help="also prove STAGE's student copy: all blanked, every test fails on NotImplementedError; "
        "filling in one exercise turns exactly its tests green",
    )
    p_check.add_argument("--json", action="store_true", help="print the results as JSON")
    p_check.add_argument(
        "--exercise", action="append", metavar="TEXT", help="only exercises whose file:function contains TEXT"
    )
    p_check.add_argument("--progress", action="store_true", help="one line per task on stderr as it ends")
    sub.add_parser("_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    try:
        if args.cmd == "_worker":  # internal: runs inside a copy, reads tasks, prints results
            worker(REPO)
            os._exit(0)  # skip interpreter teardown: pre-imported triton prints leak warnings there
        known = [d.name for d in stage_dirs(REPO)]
        asked = (getattr(args, "stage", None) or []) + (getattr(args, "student", None) or [])
        asked += [args.bug] if getattr(args, "bug", None) else []
        for s in asked:
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
        specs = load_mutants(REPO)
        rows = [
            {
                "stage": e.stage,
                "file": e.file.split("/")[-1],
                "function": e.function,
                "hint": e.hint,
                "graded by": ", ".join(t.split("::", 1)[1] for t in e.tests) or "NOTHING",
                "mutants": len(specs.get(e.key, [])),
            }
            for e in exercises
        ]
        print(table(rows, ["stage", "file", "function", "hint", "graded by", "mutants"]))
        counts = {}
        for e in exercises:
            counts[e.stage] = counts.get(e.stage, 0) + 1
        n_mut = sum(r["mutants"] for r in rows)
        print(
            "\n"
            + ", ".join(f"{s}: {n}" for s, n in counts.items())
            + f"; {len(exercises)} exercises, {n_mut} mutants"
        )
        return 0
    if args.cmd == "make":
        out = Path(args.out).expanduser().resolve()
        if out == REPO or REPO in out.parents:
            print("error: --out is inside this repository; pass a folder outside it", file=sys.stderr)
            return 2
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            print(f"error: {out} is not an empty folder; pass a new folder to --out", file=sys.stderr)
            return 2
        if (args.seed is not None or args.answer) and not args.bug:
            print("error: --seed and --answer go with --bug; add --bug STAGE", file=sys.stderr)
            return 2
        if args.bug:
            seed = args.seed if args.seed is not None else random.randrange(10**6)
            try:
                ex, _, m = plant_bug(REPO, out, args.bug, seed)
            except MarkerError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            files = " ".join(f.relative_to(REPO).as_posix() for f in stage_test_files(REPO, args.bug))
            print(
                f"wrote {out} with one bug planted in {args.bug} (seed {seed}): a test fails; find the line."
            )
            print(
                f"  see it fail, then confirm the fix: cd {out} && python tests/exercises.py check --stage {args.bug}"
            )
            print(f"  or run the stage's whole test files: cd {out} && python -m pytest -q {files}")
            if args.answer:
                print(f"answer: {ex.file}, {ex.function}: {m.why}\n  was: {m.old!r}\n  now: {m.new!r}")
            return 0
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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the copies are removed on a kill
    try:
        results = check(
            REPO, stages, args.jobs, args.mutants, args.student or [], args.progress, args.exercise or []
        )
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
    else:
        print(
            table(
                summary_rows(results), ["stage", "exercises", "blank fails", "mutants", "killed", "accepted"]
            )
        )
        expect = {
            "full": "expected 0: the tests pass",
            "blank": "expected 1: a test fails",
            "mutant": "expected 1: a test fails",
            "student": "expected a working student copy",
        }
        for r in results:
            if not r["ok"]:
                what = f"mutant {r['mutant']} ({r['why']})" if r["kind"] == "mutant" else r["kind"]
                print(
                    f"\n{r['stage']} {r['function']} {what}: exit {r['exit']} ({expect[r['kind']]})\n{r['log']}"
                )
        for r in results:
            if r["ok"] and r["kind"] == "mutant" and r["exit"] not in (1, 124):
                print(
                    f"\naccepted survivor: {r['function']} mutant {r['mutant']} ({r['why']}): {r['survives']}"
                )
        print(f"\n{sum(r['ok'] for r in results)}/{len(results)} ok in {time.time() - t0:.0f} s")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
