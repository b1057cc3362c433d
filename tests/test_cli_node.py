"""A real Node 22 app's built-in fetch, run under `llmtap run`, is recorded.

Node's fetch honours HTTPS_PROXY only from 22.21 (with NODE_USE_ENV_PROXY=1, which `run` sets).
The Node used is $LLMTAP_TEST_NODE22 (`.ci/run` installs it), else it is installed here the
same way: `npm install node@22` into a cache folder, from the npm registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.upstream import Reply

ROOT = Path(__file__).resolve().parent.parent
#: Where .ci/run and this test install Node 22 (``npm install --prefix DIR node@22``).
NODE22_DIR = Path(os.environ.get("LLMTAP_NODE22_DIR") or Path.home() / ".cache" / "llmtap-node22")

FETCH = """
(async () => {
  const response = await fetch("https://api.openai.com/v1/chat/completions", {
    method: "POST",
    headers: {"content-type": "application/json", authorization: "Bearer sk-test"},
    body: JSON.stringify({model: "gpt-4o-mini", messages: [{role: "user", content: "hi"}]}),
  });
  const body = await response.json();
  console.log(response.status, body.id);
})().catch((error) => { console.error(error); process.exit(1); });
"""


def node22() -> Path:
    """The Node 22 binary: $LLMTAP_TEST_NODE22, else installed into NODE22_DIR (once)."""
    if given := os.environ.get("LLMTAP_TEST_NODE22"):
        return Path(given)
    binary = NODE22_DIR / "node_modules" / "node" / "bin" / "node"
    if not binary.exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(NODE22_DIR), "--no-audit", "--no-fund", "--silent", "node@22"],
            check=True,
            timeout=600,
        )
    return binary


@pytest.mark.timeout(900)
def test_node22_fetch_is_recorded(tmp_path, upstream):
    node = node22()
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    assert (major, minor) >= (22, 21), f"{node} is {version}; the test needs Node >= 22.21"
    upstream.routes["/v1/chat/completions"] = Reply.json(
        {
            "id": "node-1",
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2},
        }
    )
    data = tmp_path / "data"
    upstreams = ["--upstream", f"api.openai.com={upstream.url}"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            "--data-dir",
            str(data),
            *upstreams,
            "--",
            str(node),
            "-e",
            FETCH,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "node-1"]
    assert "llmtap: 1 LLM calls recorded" in result.stderr
    assert "ignores HTTPS_PROXY" not in result.stderr  # the command's own node is recent
    with duckdb.connect(str(data / "llmtap.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT provider, api, response_id, input_tokens, output_tokens FROM llm_calls"
        ).fetchall()
    assert rows == [("openai", "chat", "node-1", 8, 2)]
