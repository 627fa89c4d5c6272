"""The shared helpers in 01_data/common.py: atomic writes, JSONL and readable errors."""
import json

import pytest

from common import UserError, atomic_path, read_jsonl, read_text, write_jsonl


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
    from common import atomic_write_text
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
