"""Checkpoint files are parsed row by row and never written in a way that splits a row
(issue 25, item 13: a topic named "nl\\n" split a row of the replication-offset
checkpoint, and the broker then discarded the whole high-watermark checkpoint)."""

from __future__ import annotations

import logging
import os

import pytest

from dmq.log import OffsetCheckpointFile
from dmq.log.checkpoint import read_entries, write_entries


def _path(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "replication-offset-checkpoint")


def test_a_row_split_by_a_newline_in_a_name_costs_only_that_row(
        tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    path = _path(tmp_path)
    with open(path, "w") as f:  # exactly what the old writer made of topic "nl\n"
        f.write("0\n3\na-0 5\nnl\n-0 7\nz-1 9\n")
    with caplog.at_level(logging.WARNING, logger="dmq.log"):
        got = OffsetCheckpointFile(path).read()
    assert got["a-0"] == 5 and got["z-1"] == 9
    assert "nl" not in got
    assert any("skipping bad row 'nl'" in r.getMessage() for r in caplog.records)


def test_bad_rows_are_skipped_and_good_rows_kept(tmp_path: object,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = _path(tmp_path)
    with open(path, "wb") as f:
        f.write(b"0\n5\nt-0 notanumber\nt-1 4\n\xff\xfe-0 3\nt-2 1 extra\nt-3 8\n")
    with caplog.at_level(logging.WARNING, logger="dmq.log"):
        assert OffsetCheckpointFile(path).read() == {"t-1": 4, "t-3": 8}
    assert len([r for r in caplog.records if "skipping bad row" in r.getMessage()]) == 3
    with open(path, "w") as f:
        f.write("7\n1\nt-0 1\n")  # an unknown version: the whole file is ignored
    assert OffsetCheckpointFile(path).read() == {}


@pytest.mark.parametrize("name", ["nl\n-0", "sp ace-1", "pct%41-2", "\u00fcn\u00ef-3",
                                  "tab\t\r-4", "%-5", "plain.topic_name-6"])
def test_any_name_round_trips(tmp_path: object, name: str) -> None:
    path = _path(tmp_path)
    f = OffsetCheckpointFile(path)
    f.write({name: 11, "other-0": 12})
    assert OffsetCheckpointFile(path).read() == {name: 11, "other-0": 12}
    with open(path) as fh:
        lines = fh.read().split("\n")
    assert lines[1] == "2" and len(lines) == 5  # two rows, nothing split


def test_legal_names_are_written_as_before(tmp_path: object) -> None:
    path = _path(tmp_path)
    OffsetCheckpointFile(path).write({"orders.v1_x-0": 3})
    with open(path) as fh:
        assert fh.read() == "0\n1\norders.v1_x-0 3\n"


@pytest.mark.parametrize("field", ["a b", "nl\n", "", "\u00e9", "x\x00"])
def test_write_entries_refuses_a_field_that_breaks_the_format(tmp_path: object,
                                                             field: str) -> None:
    path = os.path.join(str(tmp_path), "meta.checkpoint")
    write_entries(path, [("recovery_point", 5)])
    with pytest.raises(ValueError, match="field"):
        write_entries(path, [("recovery_point", 6), (field, 1)])
    assert read_entries(path) == [["recovery_point", "5"]]  # the old file is intact
