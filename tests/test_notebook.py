"""The notebooks run top to bottom on the demo's data (in a real ipykernel, this project's
Python), so they cannot rot as the analytics API changes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.demo_data import APP_CALLS

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def run_notebook(path: Path, kernels: Path) -> nbformat.NotebookNode:
    """Execute ``path`` in a kernel of this interpreter (the project's venv), registered in
    ``kernels`` only, so no other Jupyter kernel named like it can be picked instead."""
    spec_dir = kernels / "llmtap"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "llmtap", "language": "python"})
    )
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    notebook = nbformat.read(path, as_version=4)
    kernel = KernelManager(kernel_name="llmtap", kernel_spec_manager=specs)
    NotebookClient(
        notebook, km=kernel, timeout=120, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return notebook


def text_outputs(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_the_demo_data(
    path: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMTAP_DATA_DIR", str(demo_data))  # the kernel inherits it
    notebook = run_notebook(path, tmp_path / "kernels")
    charts = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "vegaEmbed" in output.get("data", {}).get("text/html", "")  # Altair's HTML renderer
    ]
    assert charts, "no chart was drawn"
    if path.name == "cost_and_latency.ipynb":
        con = duckdb.connect(str(demo_data / "llmtap.duckdb"), read_only=True)
        calls, cost = con.execute(
            "SELECT count(*), sum(cost_usd)::DOUBLE FROM llm_calls WHERE " + APP_CALLS
        ).fetchone()
        con.close()
        found = re.search(r"(\d+) calls, \$([\d.]+) in total", text_outputs(notebook))
        assert found is not None
        assert int(found.group(1)) == calls
        assert float(found.group(2)) == pytest.approx(cost, abs=1e-4)
