"""`llmtap feedback import` (collector/storage/feedback_import.py, app/cli/feedback.py) and
`analytics.import_feedback`: scores the app collected, imported from a CSV or JSON Lines file
into a real store; which lines are stored, which are refused (line number and reason), the
exit code, and what importing twice does."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

import analytics
from analytics.recommender.quality import latest_scores
from app.cli import main
from collector.settings.paths import Paths
from collector.storage.database import WRITER_WAIT_S, read_connection
from collector.storage.feedback_import import Imported, import_feedback
from tests.test_recommend import call, store

ROOT = Path(__file__).parent.parent
IMPORT = [sys.executable, "-m", "app.cli", "feedback", "import"]
RANGE = "value: Value error, must be a number from 0 to 1"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A real store holding the calls c0 to c4."""
    return store(tmp_path / "data", [call(i) for i in range(5)])


def scores_in(data_dir: Path) -> list[dict]:
    """The scores table, in the order stored."""
    with read_connection(Paths(data_dir).db) as con:
        rows = con.execute(
            "SELECT call_id, name, value, source, created_at, error FROM scores ORDER BY created_at"
        ).fetchall()
    keys = ("call_id", "name", "value", "source", "created_at", "error")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def stored(data_dir: Path) -> list[tuple[str, str, float]]:
    return [(row["call_id"], row["name"], row["value"]) for row in scores_in(data_dir)]


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMPORT, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)


CSV_LINES = (
    "call_id,name,value",  # 1
    "c0,thumbs,1",  # 2
    "c1,thumbs,0.25",  # 3
    "no-such-call,thumbs,1",  # 4
    "c2,thumbs,1.5",  # 5: out of range
    "c2,thumbs,great",  # 6: not a number
    "c3,,1",  # 7: no name
    "c3,thumbs,",  # 8: no value
    ",thumbs,1",  # 9: no call id
    'c4,"task done",0',  # 10: quoted, fine
    "c4,thumbs,-0.1",  # 11: out of range
)
CSV_REFUSED = [
    (4, "no recorded call has the id no-such-call"),
    (5, RANGE),
    (6, "value: must be a number from 0 to 1, got 'great'"),
    (7, "name: String should have at least 1 character"),
    (8, "value: must be a number from 0 to 1, got ''"),
    (9, "call_id: String should have at least 1 character"),
    (11, RANGE),
]

JSONL_LINES = (
    '{"call_id": "c0", "name": "helpful", "value": 0.5}',  # 1
    '{"call_id": "ghost", "name": "helpful", "value": 1}',  # 2: unknown id
    '{"call_id": "c1", "name": "helpful", "value": 2}',  # 3: out of range
    '{"call_id": "c1", "name": "helpful", "value": "0.5"}',  # 4: a string, not a number
    '{"call_id": "c1", "value": 1}',  # 5: no name
    "{call_id: c1}",  # 6: not JSON
    "",  # 7: blank, skipped
    '{"call_id": "c2", "name": "helpful", "value": 1, "comment": "nice"}',  # 8: extra key
    '["c2", "helpful", 1]',  # 9: not an object
    '{"call_id": "c2", "name": "helpful", "value": true}',  # 10: a bool is no number
    '{"call_id": "c3", "name": "helpful", "value": 0}',  # 11
    '{"call_id": "c4", "name": "helpful", "value": 1e400}',  # 12: out of range (inf)
)
JSONL_REFUSED = [
    (2, "no recorded call has the id ghost"),
    (3, RANGE),
    (4, RANGE),
    (5, "name: Field required"),
    (6, "not JSON (Expecting property name enclosed in double quotes)"),
    (8, "comment: Extra inputs are not permitted"),
    (9, "not a JSON object"),
    (10, RANGE),
    (12, RANGE),
]


# The module --------------------------------------------------------------------------------------


def test_csv_stores_the_valid_lines_and_refuses_the_others_by_line(data_dir, tmp_path):
    source = write(tmp_path / "ratings.csv", *CSV_LINES)
    before = datetime.now(UTC)
    result = import_feedback(source, Paths(data_dir))
    after = datetime.now(UTC)
    assert result == Imported(stored=3, refused=CSV_REFUSED, loaded=True)
    rows = scores_in(data_dir)
    assert [(r["call_id"], r["name"], r["value"]) for r in rows] == [
        ("c0", "thumbs", 1.0),
        ("c1", "thumbs", 0.25),
        ("c4", "task done", 0.0),
    ]
    for row in rows:
        assert row["source"] == "feedback" and row["error"] is None
        assert before <= row["created_at"] <= after
    assert list(Paths(data_dir).spool.iterdir()) == []  # all loaded, nothing left waiting


def test_jsonl_stores_the_valid_lines_and_refuses_the_others_by_line(data_dir, tmp_path):
    source = write(tmp_path / "thumbs.jsonl", *JSONL_LINES)
    result = import_feedback(source, Paths(data_dir))
    assert result == Imported(stored=2, refused=JSONL_REFUSED, loaded=True)
    assert stored(data_dir) == [("c0", "helpful", 0.5), ("c3", "helpful", 0.0)]
    assert {row["source"] for row in scores_in(data_dir)} == {"feedback"}


def test_any_suffix_but_csv_is_json_lines(data_dir, tmp_path):
    source = write(tmp_path / "export.txt", '{"call_id": "c0", "name": "n", "value": 1}')
    assert import_feedback(source, Paths(data_dir)) == Imported(stored=1)
    upper = write(tmp_path / "EXPORT.CSV", "call_id,name,value", "c1,n,0")
    assert import_feedback(upper, Paths(data_dir)) == Imported(stored=1)
    assert stored(data_dir) == [("c0", "n", 1.0), ("c1", "n", 0.0)]


@pytest.mark.parametrize(
    "header",
    [
        "id,name,value",  # the wrong column name
        "call_id,name",  # a missing column
        "call_id, name, value",  # spaces are part of the names
        "c0,thumbs,1",  # no header row at all: the first line is taken as one
        "",  # an empty file
    ],
)
def test_a_csv_without_the_right_header_is_refused_at_line_1(data_dir, tmp_path, header):
    source = write(tmp_path / "bad.csv", header, "c0,thumbs,1") if header else tmp_path / "bad.csv"
    if not header:
        source.write_text("")
    result = import_feedback(source, Paths(data_dir))
    assert result == Imported(
        stored=0, refused=[(1, "the header row must name the columns call_id, name and value")]
    )
    assert stored(data_dir) == []


def test_csv_columns_in_any_order_and_extra_columns_are_ignored(data_dir, tmp_path):
    source = write(tmp_path / "r.csv", "note,value,call_id,name", "great answer,0.75,c2,stars")
    assert import_feedback(source, Paths(data_dir)) == Imported(stored=1)
    assert stored(data_dir) == [("c2", "stars", 0.75)]


def test_csv_numbers_are_read_as_numbers(data_dir, tmp_path):
    source = write(
        tmp_path / "n.csv",
        "call_id,name,value",
        "c0,a, 0.5 ",  # 2: spaces around are fine
        "c0,b,1e-1",  # 3
        "c0,c,nan",  # 4
        "c0,d,inf",  # 5
        "c0,e,1",  # 6
        "c0,f,TRUE",  # 7
    )
    result = import_feedback(source, Paths(data_dir))
    assert result.refused == [
        (4, RANGE),
        (5, RANGE),
        (7, "value: must be a number from 0 to 1, got 'TRUE'"),
    ]
    assert stored(data_dir) == [("c0", "a", 0.5), ("c0", "b", 0.1), ("c0", "e", 1.0)]


def test_a_csv_row_with_more_fields_than_the_header_is_refused(data_dir, tmp_path):
    source = write(tmp_path / "r.csv", "call_id,name,value", "c0,thumbs,0,5")
    result = import_feedback(source, Paths(data_dir))
    assert result.stored == 0 and [number for number, _ in result.refused] == [2]
    assert stored(data_dir) == []


def test_a_csv_with_a_byte_order_mark_is_read(data_dir, tmp_path):
    source = tmp_path / "excel.csv"
    source.write_text("call_id,name,value\r\nc0,thumbs,1\r\n", encoding="utf-8-sig")
    assert import_feedback(source, Paths(data_dir)) == Imported(stored=1)


def test_names_are_printable_and_at_most_64_characters(data_dir, tmp_path):
    source = write(
        tmp_path / "names.jsonl",
        '{"call_id": "c0", "name": "' + "x" * 64 + '", "value": 1}',
        '{"call_id": "c0", "name": "' + "x" * 65 + '", "value": 1}',
        '{"call_id": "c0", "name": "bell\\u0007", "value": 1}',
        '{"call_id": "c0 c1", "name": "n", "value": 1}',  # not an id's characters
        '{"call_id": "c0", "name": "thumbs \\u2713", "value": 1}',
    )
    result = import_feedback(source, Paths(data_dir))
    assert [number for number, _ in result.refused] == [2, 3, 4]
    assert result.refused[0][1].startswith("name: String should have at most 64 characters")
    assert result.refused[2][1].startswith("call_id: String should match pattern")
    assert stored(data_dir) == [("c0", "x" * 64, 1.0), ("c0", "thumbs \u2713", 1.0)]


def test_without_a_store_every_line_names_an_unknown_call(tmp_path):
    empty = tmp_path / "nothing-here"
    source = write(tmp_path / "s.jsonl", '{"call_id": "c0", "name": "n", "value": 1}')
    result = import_feedback(source, Paths(empty))
    assert result == Imported(stored=0, refused=[(1, "no recorded call has the id c0")])
    assert not Paths(empty).db.exists()


def test_importing_twice_stores_twice_and_analytics_use_the_latest(data_dir, tmp_path):
    """An import is not idempotent: the same file twice stores each score twice. Analyses
    take the latest score per call and name (analytics.recommender.quality.latest_scores),
    so a re-import of the same values changes nothing they show, and a corrected file
    imported after wins."""
    first = write(tmp_path / "first.csv", "call_id,name,value", "c0,thumbs,0", "c1,thumbs,1")
    assert import_feedback(first, Paths(data_dir)).stored == 2
    assert import_feedback(first, Paths(data_dir)).stored == 2
    assert sorted(stored(data_dir)) == [("c0", "thumbs", 0.0)] * 2 + [("c1", "thumbs", 1.0)] * 2
    corrected = write(tmp_path / "corrected.jsonl", '{"call_id": "c0", "name": "thumbs", "value": 1}')
    assert analytics.import_feedback(corrected, data_dir).stored == 1
    assert len(stored(data_dir)) == 5
    latest = latest_scores(analytics.load_scores(data_dir)).collect().sort("call_id")
    assert latest.rows() == [("c0", "thumbs", 1.0), ("c1", "thumbs", 1.0)]


def test_analytics_import_feedback_takes_strings_and_the_store_file(data_dir, tmp_path):
    source = write(tmp_path / "f.jsonl", *JSONL_LINES)
    result = analytics.import_feedback(str(source), str(data_dir))
    assert result.stored == 2 and result.refused == JSONL_REFUSED
    again = analytics.import_feedback(source, Paths(data_dir).db)  # the .duckdb itself
    assert again.stored == 2
    scores = analytics.load_scores(data_dir).collect()
    assert scores.schema == analytics.SCORES_SCHEMA and scores.height == 4
    assert scores["source"].unique().to_list() == ["feedback"]


def test_imported_scores_join_their_calls(data_dir, tmp_path):
    source = write(tmp_path / "f.csv", "call_id,name,value", "c0,thumbs,1", "c3,thumbs,0")
    import_feedback(source, Paths(data_dir))
    joined = (
        analytics.load(data_dir)
        .join(analytics.load_scores(data_dir), on="call_id")
        .select("call_id", "app", "request_model", "value")
        .sort("call_id")
        .collect()
    )
    assert joined.rows() == [("c0", "qa", "gpt-4o", 1.0), ("c3", "qa", "gpt-4o", 0.0)]


# Beside readers ----------------------------------------------------------------------------------


def hold_store(data_dir: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process reading the store (a dashboard, a notebook) for ``seconds``."""
    code = (
        "import duckdb, sys, time\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "con.execute('SELECT count(*) FROM llm_calls').fetchall()\n"
        "print('open', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "con.close()\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", code, str(Paths(data_dir).db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    return reader


def test_import_while_another_process_reads_the_store(data_dir, tmp_path):
    source = write(tmp_path / "f.csv", "call_id,name,value", "c0,thumbs,1", "nope,thumbs,1")
    reader = hold_store(data_dir, 0.5)
    try:
        result = import_feedback(source, Paths(data_dir))
    finally:
        reader.wait(timeout=30)
    assert result == Imported(stored=1, refused=[(3, "no recorded call has the id nope")], loaded=True)
    assert stored(data_dir) == [("c0", "thumbs", 1.0)]


def test_import_while_a_reader_holds_the_store_longer_than_the_writer_waits(data_dir, tmp_path):
    source = write(tmp_path / "f.csv", "call_id,name,value", "c0,thumbs,1")
    reader = hold_store(data_dir, WRITER_WAIT_S + 0.2)
    try:
        result = import_feedback(source, Paths(data_dir))
    finally:
        reader.wait(timeout=30)
    assert result.stored == 1
    if result.loaded:
        assert stored(data_dir) == [("c0", "thumbs", 1.0)]


# The command line --------------------------------------------------------------------------------


def test_cli_lists_refused_lines_on_stderr_and_exits_1(data_dir, tmp_path):
    source = write(tmp_path / "ratings.csv", *CSV_LINES)
    out = run_cli("--data-dir", str(data_dir), str(source))
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == [
        f"llmtap: {source}:{number}: {reason}" for number, reason in CSV_REFUSED
    ]
    assert out.stdout.strip() == f"llmtap: imported 3 scores from {source}, refused {len(CSV_REFUSED)}"
    assert len(stored(data_dir)) == 3


def test_cli_exits_0_when_every_line_is_valid(data_dir, tmp_path):
    source = write(
        tmp_path / "ok.jsonl",
        '{"call_id": "c0", "name": "thumbs", "value": 1}',
        "",
        '{"call_id": "c1", "name": "thumbs", "value": 0}',
    )
    # The data directory from the environment this time.
    env = {**os.environ, "LLMTAP_DATA_DIR": str(data_dir)}
    out = run_cli(str(source), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.strip() == f"llmtap: imported 2 scores from {source}, refused 0"
    assert stored(data_dir) == [("c0", "thumbs", 1.0), ("c1", "thumbs", 0.0)]


def test_cli_refuses_a_csv_without_the_header(data_dir, tmp_path, capsys):
    """In-process from here on (app.cli.main, what `python -m app.cli` runs): the same
    output and exit codes, without a Python start each."""
    source = write(tmp_path / "noheader.csv", "c0,thumbs,1", "c1,thumbs,1")
    assert main(["feedback", "import", "--data-dir", str(data_dir), str(source)]) == 1
    out = capsys.readouterr()
    assert (
        out.err.strip() == f"llmtap: {source}:1: the header row must name the columns call_id, name and value"
    )
    assert out.out.strip() == f"llmtap: imported 0 scores from {source}, refused 1"
    assert stored(data_dir) == []


def test_cli_lists_20_refusals_then_counts_the_rest(data_dir, tmp_path, capsys):
    lines = [f'{{"call_id": "c{i % 5}", "name": "n", "value": {2 + i}}}' for i in range(25)]
    source = write(tmp_path / "bad.jsonl", *lines, '{"call_id": "c0", "name": "n", "value": 1}')
    assert main(["feedback", "import", "--data-dir", str(data_dir), str(source)]) == 1
    out = capsys.readouterr()
    errors = out.err.splitlines()
    assert len(errors) == 21
    assert errors[0] == f"llmtap: {source}:1: {RANGE}"
    assert errors[19] == f"llmtap: {source}:20: {RANGE}"
    assert errors[20] == "llmtap: ... and 5 more refused lines"
    assert out.out.strip() == f"llmtap: imported 1 scores from {source}, refused 25"


def test_cli_without_the_file_is_a_usage_error(data_dir, tmp_path, capsys):
    assert main(["feedback", "import", "--data-dir", str(data_dir), str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["feedback", "import"]) == 2
    assert "Missing argument 'FILE'" in capsys.readouterr().err


def test_scores_frame_of_an_import_matches_the_schema(data_dir, tmp_path):
    source = write(tmp_path / "f.csv", "call_id,name,value", "c0,thumbs,1")
    import_feedback(source, Paths(data_dir))
    frame = analytics.load_scores(data_dir).collect()
    assert frame.schema == analytics.SCORES_SCHEMA
    row = frame.row(0, named=True)
    assert (row["call_id"], row["value"], row["source"], row["error"]) == ("c0", 1.0, "feedback", None)
    assert isinstance(frame["created_at"].dtype, pl.Datetime)
