"""The command line: `env`, `run`, and clear errors for bad input."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import duckdb

from collector.proxy.certs import ensure_ca
from collector.settings.paths import Paths
from tests.upstream import Reply

LLMTAP = [sys.executable, "-m", "app.cli"]


def llmtap(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLMTAP, *args], capture_output=True, text=True, timeout=60, **kw)


def test_env_prints_every_contract_variable(tmp_path):
    ensure_ca(Paths(tmp_path))  # as `llmtap proxy` does when it starts; `env` creates nothing
    out = llmtap("env", "--port", "9123", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in out.stdout.splitlines())
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert env[name] == "http://127.0.0.1:9123"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    bundle = tmp_path / "ca-bundle.pem"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[name] == str(bundle)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    text = bundle.read_text()
    ca_cert = (tmp_path / "ca" / "mitmproxy-ca-cert.pem").read_text()
    assert ca_cert in text and text.count("BEGIN CERTIFICATE") > 10  # system roots + llmtap CA
    assert "PRIVATE KEY" not in text
    assert (tmp_path / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600


def test_run_exits_with_command_code_after_calls_are_stored(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(
        {
            "id": "run-1",
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )
    script = textwrap.dedent(
        """
        import subprocess, sys
        for _ in range(3):
            subprocess.run(["curl", "-sS", "--fail", "https://api.openai.com/v1/chat/completions",
                            "-d", '{"model": "gpt-4o-mini"}'], check=True, capture_output=True)
        sys.exit(7)
        """
    )
    data = tmp_path / "data"
    result = llmtap(
        "run",
        "--data-dir",
        str(data),
        "--upstream",
        f"api.openai.com={upstream.url}",
        "--",
        sys.executable,
        "-c",
        script,
    )
    assert result.returncode == 7, result.stderr
    assert "llmtap: 3 LLM calls recorded" in result.stderr
    assert "no LLM calls were recorded" not in result.stderr
    with duckdb.connect(str(data / "llmtap.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM llm_calls WHERE response_id = 'run-1'").fetchone() == (3,)
    assert not list((data / "spool").glob("*.jsonl"))


def test_run_without_command_is_an_error(tmp_path):
    result = llmtap("run", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "nothing to run" in result.stderr


def test_bad_upstream_flag_is_a_clear_error(tmp_path):
    result = llmtap("proxy", "--data-dir", str(tmp_path), "--upstream", "api.openai.com")
    assert result.returncode == 2
    assert "--upstream takes HOST=URL" in result.stderr
    result = llmtap("proxy", "--data-dir", str(tmp_path), "--upstream", "api.openai.com=ftp://x")
    assert result.returncode == 2 and "http:// or https://" in result.stderr


def test_bad_config_is_a_clear_error(tmp_path):
    missing = llmtap("proxy", "--data-dir", str(tmp_path), "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('capture = "everything"\n')
    result = llmtap("proxy", "--data-dir", str(tmp_path), "--config", str(bad))
    assert result.returncode == 2 and "capture must be one of" in result.stderr
    bad.write_text('colour = "blue"\n')
    result = llmtap("proxy", "--data-dir", str(tmp_path), "--config", str(bad))
    assert result.returncode == 2 and "unknown config keys: colour" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_summarises_by_model(tmp_path, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(
        {
            "id": "x",
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 34},
        }
    )
    data = tmp_path / "data"
    script = (
        "import subprocess\n"
        "for _ in range(2): subprocess.run(['curl','-sS','https://api.openai.com/v1/chat/completions',"
        "'-d','{\"model\": \"gpt-4o-mini\"}'], check=True, capture_output=True)\n"
    )
    assert (
        llmtap(
            "run",
            "--data-dir",
            str(data),
            "--upstream",
            f"api.openai.com={upstream.url}",
            "--",
            sys.executable,
            "-c",
            script,
        ).returncode
        == 0
    )
    report = llmtap("report", "--data-dir", str(data), "--by", "model")
    assert report.returncode == 0, report.stderr
    (row,) = [line for line in report.stdout.splitlines() if line.startswith("gpt-4o-mini")]
    assert row.split()[1:4] == ["2", "2,400", "68"]
