"""The session's demo store: ``llmtap demo --no-ui`` run once, shared by the demo, notebook
and browser tests (imported into ``tests/conftest.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: Enough calls for every kind of row (errors, blocks, downgrades, shadow copies) to appear.
DEMO_CALLS = 160


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of a finished ``llmtap demo`` run (the real command, proxy and SDKs)."""
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    command = ["demo", "--data-dir", str(data_dir), "--calls", str(DEMO_CALLS), "--no-ui"]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return data_dir


#: SQL condition for the calls the demo's apps made: not llmtap's own shadow copies and judge
#: calls, which the analytics and the dashboard report apart.
APP_CALLS = "(routing_arm IS NULL OR routing_arm NOT IN ('shadow', 'noise_floor', 'judge'))"
