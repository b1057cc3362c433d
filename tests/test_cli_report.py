"""`llmtap report`: text from the traffic cannot drive the terminal; every format carries a
total over the window; sub-cent costs and unknown token counts read as what they are."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from app.cli import main
from tests.test_analytics import row, store

EMBEDDING = "text-embedding-3-small"


def embedding(i: int, **kw) -> dict:
    """An embeddings call: no output tokens at all (NULL, not 0), and a cost far below a cent."""
    return row(
        i,
        api="embeddings",
        path="/v1/embeddings",
        request_model=EMBEDDING,
        response_model=EMBEDDING,
        input_tokens=600,
        output_tokens=None,
        cache_read_tokens=None,
        cache_write_tokens=None,
        latency_ms=300.0,
        cost_usd=Decimal("0.000012"),
        finish_reasons=None,
        **kw,
    )


@pytest.fixture
def data(tmp_path) -> list[str]:
    """Two gpt-4o calls ($0.01 each, 1000 in / 100 out) and one embeddings call."""
    db = store(tmp_path, [row(0), row(1, latency_ms=2000.0), embedding(2)])
    return ["--data-dir", str(db.parent)]


def report(capsys, *args: str) -> str:
    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def cells(out: str, first: str) -> list[str]:
    """The cells of the table line starting with ``first`` (cells are space-separated)."""
    (line,) = [line for line in out.splitlines() if line.startswith(first)]
    return line.split()


# --- control characters --------------------------------------------------------------------


def test_table_escapes_control_characters_from_the_traffic(tmp_path, capsys):
    hostile = {
        "evil\x1b[2J": "c0 escape",
        "bell\x07\x08\rcr": "more c0",
        "csi\x9b31m": "c1",
        "del\x7f": "del",
    }
    db = store(
        tmp_path, [row(i, app=app, response_model=f"m\x1b]0;title\x07{i}") for i, app in enumerate(hostile)]
    )
    out = report(capsys, "--data-dir", str(db.parent), "--by", "app,model")
    for raw in ("\x1b", "\x07", "\x08", "\r", "\x9b", "\x7f"):
        assert raw not in out, repr(raw)
    assert "evil\\x1b[2J" in out and "bell\\x07\\x08\\x0dcr" in out
    assert "csi\\x9b31m" in out and "del\\x7f" in out
    assert "m\\x1b]0;title\\x070" in out
    # Data formats keep the values as they are (JSON escapes them itself).
    document = json.loads(report(capsys, "--data-dir", str(db.parent), "--by", "app", "--format", "json"))
    assert {r["app"] for r in document["rows"]} == set(hostile)
    rows = list(
        csv.DictReader(
            io.StringIO(report(capsys, "--data-dir", str(db.parent), "--by", "app", "--format", "csv"))
        )
    )
    assert set(hostile) <= {r["app"] for r in rows}


def test_unpriced_models_are_escaped_too(tmp_path, capsys):
    db = store(tmp_path, [row(0, response_model="x\x1b[31mred", cost_usd=None, price_ref=None)])
    assert main(["report", "--data-dir", str(db.parent)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("x\\x1b[31mred") == 2  # in the table and in the unpriced list
    assert main(["report", "--data-dir", str(db.parent), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "x\\x1b[31mred" in err


# --- totals --------------------------------------------------------------------------------


def test_table_has_a_total_line(data, capsys):
    out = report(capsys, *data)
    # model, calls, input, output, cost, p50, p95, errors: p50 and p95 over all three calls.
    assert cells(out, "total") == ["total", "3", "2,600", "200", "0.0200", "1,000.0", "1,900.0", "0"]
    assert out.splitlines()[-1].startswith("total")
    spend = report(capsys, *data, "--show", "spend")
    assert cells(spend, "total")[:4] == ["total", "3", "2,600", "200"]


def test_total_of_several_grouping_columns_fills_the_first(data, capsys):
    out = report(capsys, *data, "--by", "provider,model")
    assert cells(out, "total")[:2] == ["total", "3"]  # the second grouping column left blank


def test_json_has_a_total_object(data, capsys):
    document = json.loads(report(capsys, *data, "--format", "json"))
    assert document["total"] == {
        "calls": 3,
        "input_tokens": 2600,
        "output_tokens": 200,
        "cost_usd": 0.020012,
        "latency_p50_ms": 1000.0,
        "latency_p95_ms": 1900.0,
        "errors": 0,
    }
    assert len(document["rows"]) == 2
    spend = json.loads(report(capsys, *data, "--show", "spend", "--format", "json"))
    assert spend["total"]["calls"] == 3 and spend["total"]["cost_usd"] == 0.020012


def test_csv_ends_with_a_total_row(data, capsys):
    lines = report(capsys, *data, "--format", "csv").splitlines()
    assert lines[0].startswith("model,calls,")
    assert lines[-1].startswith("total,3,2600,200,0.020012")
    by_day = report(capsys, *data, "--show", "spend", "--by", "day,model", "--format", "csv").splitlines()
    assert by_day[1].startswith("2026-03-02T00:00:00Z,")  # time buckets keep their format
    assert by_day[-1].startswith("total,,3,2600,200,")
    by_list = report(capsys, *data, "--by", "finish_reasons", "--format", "csv").splitlines()  # a list column
    assert by_list[1].startswith("[stop],2,") and by_list[-1].startswith("total,3,")


def test_views_without_groups_or_totals_have_no_total(data, capsys):
    document = json.loads(report(capsys, *data, "--show", "latency", "--format", "json"))
    assert "total" not in document
    document = json.loads(report(capsys, *data, "--by", "", "--format", "json"))
    assert "total" not in document and len(document["rows"]) == 1  # the one row is the total


# --- money and unknown counts --------------------------------------------------------------


def test_sub_cent_costs_keep_their_significant_digits(data, tmp_path: Path, capsys):
    out = report(capsys, *data)
    assert cells(out, EMBEDDING)[4] == "0.000012"
    assert cells(out, "gpt-4o")[4] == "0.0200"  # a cent and above: 4 decimals, as before
    assert "0.0000 " not in out
    db = store(
        tmp_path / "tiny", [row(0, cost_usd=Decimal("0.000000001")), row(1, cost_usd=Decimal("0.00346"))]
    )
    tiny = report(capsys, "--data-dir", str(db.parent), "--by", "call_id")
    assert cells(tiny, "c0")[4] == "0.000000001" and cells(tiny, "c1")[4] == "0.0035"


def test_null_token_sums_are_not_zero(data, tmp_path, capsys):
    out = report(capsys, *data)
    assert cells(out, EMBEDDING)[1:5] == ["1", "600", "-", "0.000012"]
    document = json.loads(report(capsys, *data, "--format", "json"))
    (emb,) = [r for r in document["rows"] if r["model"] == EMBEDDING]
    assert emb["output_tokens"] is None and emb["input_tokens"] == 600
    spend = json.loads(report(capsys, *data, "--show", "spend", "--format", "json"))
    (emb,) = [r for r in spend["rows"] if r["model"] == EMBEDDING]
    assert emb["output_tokens"] is None and emb["cache_read_tokens"] is None
    lines = report(capsys, *data, "--format", "csv").splitlines()
    (line,) = [line for line in lines if line.startswith(EMBEDDING)]
    assert line.startswith(f"{EMBEDDING},1,600,,")
    # A window of embeddings only: the total's output tokens are unknown too.
    db = store(tmp_path / "emb", [embedding(0), embedding(1)])
    document = json.loads(report(capsys, "--data-dir", str(db.parent), "--format", "json"))
    assert document["total"]["output_tokens"] is None and document["total"]["input_tokens"] == 1200
