"""``llmtap demo`` on its default directory (``~/.llmtap-demo``), run the way a newcomer runs
it: twice in a row works and says the previous demo's data is replaced; a directory of the
same name that the demo did not write is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.demo_data import ROOT


def demo(home: Path) -> subprocess.CompletedProcess[str]:
    """``llmtap demo`` with ``home`` as the home directory, a few calls, no dashboard."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--calls", "3", "--no-ui"],
        cwd=ROOT,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_demo_twice_in_a_row_replaces_its_own_data(tmp_path: Path) -> None:
    first = demo(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "replacing" not in first.stderr
    second = demo(tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"replacing the previous demo's data in {tmp_path / '.llmtap-demo'}" in second.stderr
    assert "recorded 3 demo calls in" in second.stderr


def test_demo_leaves_a_default_directory_it_did_not_write(tmp_path: Path) -> None:
    notes = tmp_path / ".llmtap-demo" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    done = demo(tmp_path)
    assert done.returncode == 2
    assert "holds files that `llmtap demo` did not write" in done.stderr
    assert notes.read_text() == "mine"
