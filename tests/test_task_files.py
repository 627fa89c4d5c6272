"""Task files with parseable JSON but wrong field types: every reader answers with the file, the line, the
problem and the fix (`error: <file>:<line>: <problem>; <fix>`), never a traceback deep in training."""

import json

import pytest

from common.cli import UserError
from common.files import read_jsonl
from fact_recall import load_probes
from arithmetic_task import read_problems
from preference_data import read_hh_pairs, read_preference_pairs
from sft_data import read_conversations

TURNS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}
CASES = [  # (reader, the bad record, what the one line must name)
    (read_jsonl, [1, 2], "expected a JSON object, got list"),
    (read_jsonl, {"text": 5}, "'text' must be a string, got int"),
    (read_conversations, {"messages": "hello"}, "'messages' must be a non-empty list"),
    (read_conversations, {"messages": [TURNS[0], ["assistant", "a"]]}, "turn 1 must be an object"),
    (
        read_conversations,
        {"messages": [{"role": "user", "content": 3}, TURNS[1]]},
        "turn 0 must be an object",
    ),
    (read_conversations, {"instruction": 7, "output": "a"}, "Alpaca record has no string 'instruction'"),
    (
        read_conversations,
        {"instruction": "q", "input": 7, "output": "a"},
        "Alpaca record has no string 'input'",
    ),
    (read_preference_pairs, {**PAIR, "prompt": 3}, "'prompt' must be a string or a non-empty list"),
    (read_preference_pairs, {**PAIR, "chosen": ["a"]}, "'chosen' must be a string, got list"),
    (read_hh_pairs, {"chosen": 1, "rejected": "b"}, "'chosen' must be a string, got int"),
    (read_problems, {"prompt": "1 + 1?", "answer": "2"}, "'answer' must be an integer, got str"),
    (read_problems, {"prompt": "1 + 1?", "answer": True}, "'answer' must be an integer, got bool"),
    (read_problems, {"prompt": ["1 + 1?"], "answer": 2}, "'prompt' must be a string, got list"),
    (load_probes, {"prompt": "p", "answer": 3, "attribute": "job"}, "'answer' must be a string, got int"),
]


@pytest.mark.parametrize(
    "reader, bad, problem", CASES, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]
)
def test_a_wrong_field_type_names_file_line_problem_and_fix(tmp_path, reader, bad, problem):
    good = {
        read_jsonl: {"text": "ok"},
        read_conversations: {"messages": TURNS},
        read_preference_pairs: PAIR,
        read_hh_pairs: {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        read_problems: {"prompt": "1 + 1?", "answer": 2},
        load_probes: {"prompt": "p", "answer": "a", "attribute": "job"},
    }[reader]
    text = json.dumps(good) + "\n\n" + json.dumps(bad) + "\n"  # the bad record is on line 3
    if reader is load_probes:
        tasks = tmp_path / "data" / "tasks"
        tasks.mkdir(parents=True)
        (tasks / "recall_train.jsonl").write_text(json.dumps(good) + "\n")  # only the held-out file is bad
        (tasks / "recall_heldout.jsonl").write_text(text)
        path, call = tasks / "recall_heldout.jsonl", lambda: load_probes(tmp_path)
    else:
        path = tmp_path / "f.jsonl"
        path.write_text(text)
        call = lambda: reader(path)
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert message.startswith(f"{path}:3: ") and problem in message, message
    assert "; " in message.split(problem, 1)[1] or "; " in message.split(":3: ", 1)[1], message  # the fix
