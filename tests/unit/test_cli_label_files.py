"""`sfhq taste train --from-labels`: the label files it reads, and the one-line errors it gives."""

from __future__ import annotations

import pytest
import typer

from sfhq.cli import _read_label_file


def test_csv_with_a_header_and_json_lines(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("item_id,label\njob/i000001-c0,good\n# a comment\n\nSFHQ_pt1_00000003, bad\n")
    assert _read_label_file(csv) == {"job/i000001-c0": True, "SFHQ_pt1_00000003": False}
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"item_id": "a", "good": true}\n{"item_id": "b", "good": false}\n')
    assert _read_label_file(jsonl) == {"a": True, "b": False}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,good\nb,maybe\n", "'maybe' is not good or bad"),
        ('{"item_id": "a"}\n', "needs item_id and good"),
        ('{"item_id": "a", "good": "yes"}\n', "good must be true or false"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, capsys, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(typer.Exit):
        _read_label_file(path)
    err = " ".join(capsys.readouterr().err.split())  # the console may wrap a long line
    assert message in err and "labels.txt:" in err


def test_a_missing_file_is_an_error(tmp_path, capsys):
    with pytest.raises(typer.Exit):
        _read_label_file(tmp_path / "nope.csv")
    assert "is not a file" in capsys.readouterr().err
