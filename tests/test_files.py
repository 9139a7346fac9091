"""Atomic outputs: an interrupted write leaves the old output whole, or nothing; CSV text."""

from __future__ import annotations

import csv
import io

import pytest

from pipeline.core import files


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    files.write_text(target, "old")

    class Interrupted(Exception):
        pass

    def interrupted(fd):  # the new bytes are written, then the process is stopped
        raise Interrupted

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(Interrupted):
        files.write_bytes(target, b"new, but never finished")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_staged_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "curves"
    with files.staged_directory(target) as staging:
        (staging / "a.csv").write_text("1")
    assert [p.name for p in target.iterdir()] == ["a.csv"]

    with pytest.raises(RuntimeError), files.staged_directory(target) as staging:
        (staging / "b.csv").write_text("half")
        raise RuntimeError("killed halfway")
    assert [p.name for p in target.iterdir()] == ["a.csv"]  # the old folder, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["curves"]  # no staging folder left

    with files.staged_directory(target) as staging:
        (staging / "c.csv").write_text("2")
    assert [p.name for p in target.iterdir()] == ["c.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["curves"]


def test_csv_text_has_unix_line_ends_and_quotes_what_needs_it():
    text = files.csv_text(["name", "value"], [("plain", 1), ("with, comma", repr(0.1))])
    assert text == 'name,value\nplain,1\n"with, comma",0.1\n'
    assert list(csv.reader(io.StringIO(text))) == [
        ["name", "value"],
        ["plain", "1"],
        ["with, comma", "0.1"],
    ]
