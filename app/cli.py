"""The ``llmtap`` command line."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from app.report import FORMATS as REPORT_FORMATS
from app.report import METRICS, PERIODS
from app.report import VIEWS as REPORT_VIEWS
from collector.proxy.certs import client_env
from collector.settings.config import ConfigError, Paths, Settings, load_settings, resolve_data_dir
from collector.storage.export import FORMATS, export_calls, parse_instant
from collector.storage.spool import Quarantine
from collector.trust import logs
from collector.trust.private import PRIVATE_UMASK

log = logging.getLogger("llmtap")

DESCRIPTION = """\
llmtap records every LLM API call an app makes (model, tokens, latency, cost) through a
local intercepting proxy, with no change to the app. Records go to DATA_DIR/llmtap.duckdb.

quick start:
  llmtap demo                          # see it work: fake provider, real proxy, dashboard
  llmtap proxy &                       # start the proxy on 127.0.0.1:8080
  eval "$(llmtap env)"                 # point this shell's apps at it
  llmtap run -- python my_app.py       # or run one command through its own proxy
  llmtap report                        # what was called, and what it cost
  llmtap ui                            # the dashboard
  llmtap recommend                     # cheaper models the traffic proves safe
"""


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory (default: $LLMTAP_DATA_DIR, else ~/.llmtap)",
    )


def _add_proxy_options(p: argparse.ArgumentParser, default_port: int | None) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=default_port,
        help="port to listen on (default: %s)"
        % (default_port if default_port is not None else "a free port"),
    )
    _add_data_dir(p)
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="send traffic meant for HOST to URL instead, keeping Host header, path and "
        "query (repeatable), e.g. api.openai.com=http://127.0.0.1:9000",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (see README)")
    p.add_argument(
        "--rules",
        metavar="FILE",
        help="routing rules file (YAML; default: DATA_DIR/rules.yaml); reloaded when it changes",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtap", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the recording proxy in the foreground")
    _add_proxy_options(p, default_port=8080)
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser(
        "run",
        help="run a command with its traffic going through a recording proxy",
        description="Start a proxy (on a free port unless --port), run CMD with the proxy "
        "environment set, and exit with CMD's exit code once all its calls are stored.",
        usage="llmtap run [proxy options] -- CMD [ARG]...",
    )
    _add_proxy_options(p, default_port=None)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run, after --")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "env",
        help="print export lines for the proxy environment",
        description='Print `export NAME=VALUE` lines; use as: eval "$(llmtap env)"',
    )
    p.add_argument("--host", default="127.0.0.1", help="proxy address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="proxy port (default: %(default)s)")
    _add_data_dir(p)
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("export", help="write the recorded llm_calls rows")
    _add_data_dir(p)
    p.add_argument("--format", choices=sorted(FORMATS), default="jsonl", help="default: jsonl")
    p.add_argument("--since", metavar="ISO", help="only calls started at or after this time")
    p.add_argument("--until", metavar="ISO", help="only calls started before this time")
    p.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report",
        help="terminal summary: calls, tokens, cost, latency, errors",
        description="Summarise the recorded calls: one analysis (--show) grouped by any dimensions (--by).",
        epilog="views: " + "; ".join(f"{name}: {view.help}" for name, view in REPORT_VIEWS.items()),
    )
    _add_data_dir(p)
    p.add_argument("--since", metavar="ISO", help="only calls started at or after this time")
    p.add_argument("--until", metavar="ISO", help="only calls started before this time")
    p.add_argument(
        "--by",
        metavar="DIM[,DIM...]",
        help="group by these, comma-separated: model, provider, api, app, user, session, status_class, "
        "error_kind, hour, day, week, month, property:KEY (a metadata property) or an llm_calls column "
        "(default: the view's own; model for summary)",
    )
    p.add_argument(
        "--show", choices=list(REPORT_VIEWS), default="summary", help="the analysis (default: summary)"
    )
    p.add_argument("--format", choices=REPORT_FORMATS, default="table", help="default: table")
    p.add_argument("--period", choices=PERIODS, help="burn: the budget period (default: day)")
    p.add_argument("--limit", type=float, metavar="USD", help="burn: the period's budget, to compare against")
    p.add_argument("--bucket", choices=PERIODS, help="anomalies: bucket size (default: hour)")
    p.add_argument("--metric", choices=METRICS, help="anomalies: what to score (default: cost)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "reprice",
        help="recompute stored calls' costs after prices or overrides change",
        description="Recompute cost_usd, input_cost_usd, output_cost_usd and price_ref of stored "
        "calls from their stored usage, with the bundled genai-prices catalogue and the "
        "config's [prices] overrides. Nothing else changes; safe while a proxy runs.",
    )
    _add_data_dir(p)
    p.add_argument("--config", metavar="FILE", help="TOML config file with [prices] overrides (see README)")
    p.add_argument("--since", metavar="ISO", help="only calls started at or after this time")
    p.set_defaults(func=cmd_reprice)

    p = sub.add_parser(
        "recommend",
        help="cheaper models, prompt caching and batch APIs per route, with the evidence",
        description="Recommend, per route (app + provider + model), what the recorded traffic proves "
        "safe: a cheaper model whose shadow answers agreed with the incumbent's (Wilson lower bound "
        "at least [recommend] min_agreement over at least min_samples), provider prompt caching, or "
        "a batch API. Each record has its costs per 1k requests, projected monthly savings "
        "(low/mid/high), latency change and risks. --write-rules drafts routing rules for review.",
    )
    _add_data_dir(p)
    p.add_argument("--config", metavar="FILE", help="TOML config file ([recommend], [prices]; see README)")
    p.add_argument("--since", metavar="ISO", help="only calls started at or after this time")
    p.add_argument("--until", metavar="ISO", help="only calls started before this time")
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    p.add_argument(
        "--write-rules",
        action="store_true",
        help="draft rules into the rules file, merged by rule id with the rules already there",
    )
    p.add_argument(
        "--mode",
        choices=("shadow", "canary", "enforce"),
        default="shadow",
        help="drafted rules' mode: shadow (for swaps needing evidence), canary or enforce (for "
        "recommended swaps); default: shadow",
    )
    p.add_argument("--rules", metavar="FILE", help="rules file to write (default: DATA_DIR/rules.yaml)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser(
        "evaluate",
        help="shadow-evaluate stored calls offline: resend them with a rule's model and compare",
        description="Shadow mode, offline: every stored call (capture mode full or redacted) that a "
        "shadow rule matches and that has no copy to the rule's model yet is sent again with the "
        "rule's model to the same provider (through --upstream and the config's upstreams), its "
        "answer compared with the stored one, and recorded as the proxy records shadow copies "
        "(routing_arm shadow, shadow_of, comparison, agreement, cost), for `llmtap recommend`. "
        "Stored requests carry no key: each provider's key is read from the environment "
        "(OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENROUTER_API_KEY, GEMINI_API_KEY, MISTRAL_API_KEY, "
        "GROQ_API_KEY, ...); calls of a provider without one are skipped. Each rule's "
        "shadow_spend_cap_usd per UTC day holds, counting what the proxy's copies spent today.",
    )
    _add_data_dir(p)
    p.add_argument("--config", metavar="FILE", help="TOML config file ([routing], [prices], upstreams)")
    p.add_argument("--rules", metavar="FILE", help="rules file (default: DATA_DIR/rules.yaml)")
    p.add_argument("--rule", metavar="ID", help="evaluate this one rule, whatever its mode")
    p.add_argument("--since", metavar="ISO", help="only calls started at or after this time")
    p.add_argument("--until", metavar="ISO", help="only calls started before this time")
    p.add_argument("--limit", type=int, metavar="N", help="copy at most N stored calls")
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="send copies meant for HOST to URL instead (repeatable), as the proxy's --upstream",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "ui",
        help="start the dashboard (Streamlit) on the recorded calls",
        description="Serve the dashboard (overview, costs, latency, calls, budgets, recommendations) "
        "on the store, headless; open the printed URL in a browser. It stays live while a proxy "
        "records: new calls appear within seconds.",
    )
    _add_data_dir(p)
    p.add_argument("--config", metavar="FILE", help="TOML config file, for its budgets (see README)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default: %(default)s)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "demo",
        help="record made-up traffic through a real proxy and open the dashboard on it (no API key)",
        description="Start a local fake OpenAI/Anthropic server and an llmtap proxy, send a few "
        "minutes' worth of calls from four made-up apps through it with the official openai and "
        "anthropic SDKs (streams, cache hits, errors, budgets that block and downgrade), then "
        "start the dashboard on that data. Uses ~/.llmtap-demo (emptied first) unless --data-dir.",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="a new directory for the demo's store (default: ~/.llmtap-demo)"
    )
    p.add_argument("--calls", type=int, default=400, help="how many calls to make (default: %(default)s)")
    p.add_argument(
        "--concurrency", type=int, default=40, help="calls in flight at once (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8501, help="dashboard port (default: %(default)s)")
    p.add_argument("--no-ui", action="store_true", help="only record; do not start the dashboard")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(verbose=getattr(args, "verbose", False))
    # What llmtap writes (the store, the spool, exports) holds prompts: readable by this user
    # only. `llmtap run` gives its command the user's own umask back.
    args.user_umask = os.umask(PRIVATE_UMASK)
    try:
        return args.func(args) or 0
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace, port: int | None) -> Settings:
    return load_settings(
        data_dir=args.data_dir,
        config_file=args.config,
        listen_host=args.host,
        listen_port=port,
        upstream_flags=args.upstream,
        rules_file=args.rules,
    )


DEFAULT_HOST = "127.0.0.1"
PROXY_EXPOSURE = "can send traffic through it to any host and their LLM calls are recorded"
UI_EXPOSURE = "can read every recorded call, prompts included; it has no authentication"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only: 127.0.0.0/8, ::1,
    or a name resolving to nothing else. ``""`` and 0.0.0.0 / ``::`` mean every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False  # listening on it fails anyway
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def warn_if_exposed(host: str, port: int, exposure: str) -> None:
    """Say on stderr, before listening, what anyone on the network gets when ``host`` is not
    loopback: neither the proxy nor the dashboard has any authentication."""
    if is_loopback(host):
        return
    where = _host_port(host, port) if port else f"{host} on the port it picks"
    print(
        f"llmtap: warning: listening on {host or 'every interface'}, not loopback only: anyone who can "
        f"reach {where} {exposure}. Use --host 127.0.0.1 unless that is what you want.",
        file=sys.stderr,
        flush=True,
    )


def _host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as in a URL)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_host(host: str) -> str:
    """Where clients on this machine reach a proxy listening on ``host``: a wildcard address
    (every interface) is reached on loopback."""
    return {"": DEFAULT_HOST, "0.0.0.0": DEFAULT_HOST, "::": "::1"}.get(host, host)


def env_command(settings: Settings, port: int) -> str:
    """The `llmtap env` command that points a shell at this proxy: its port and data dir
    (whose CA bundle clients must trust; another data dir has another CA and TLS fails),
    and its host unless the default, shell-quoted."""
    command = ["llmtap", "env"]
    host = _client_host(settings.listen_host)
    if host != DEFAULT_HOST:
        command += ["--host", host]
    command += ["--port", str(port), "--data-dir", str(settings.data_dir)]
    return shlex.join(command)


def cmd_proxy(args: argparse.Namespace) -> int:
    from collector.proxy.server import LlmtapProxy

    settings = _settings(args, args.port)
    warn_if_exposed(settings.listen_host, settings.listen_port, PROXY_EXPOSURE)
    proxy = LlmtapProxy(settings)

    def announce(listening) -> None:
        print(f"llmtap proxy listening on {listening.url}", flush=True)
        print(f"CA bundle: {listening.ca_bundle}", flush=True)
        print(f"store: {proxy.settings.paths.db}", flush=True)
        print(f'point apps at it with: eval "$({env_command(settings, listening.port)})"', flush=True)

    try:
        asyncio.run(proxy.serve(announce))
    except OSError as exc:
        print(f"llmtap: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        proxy.close()
        return 1
    saved = proxy.close()
    print(f"llmtap: stopped; {proxy.recorder.calls_recorded} calls recorded", file=sys.stderr)
    return 0 if saved else 1


#: Commands that run their code on the ``node`` found on the PATH.
NODE_TOOLS = {"npm", "npx", "yarn", "pnpm", "tsx"}
#: Node's built-in fetch honours HTTPS_PROXY (with NODE_USE_ENV_PROXY=1) from these versions:
#: 22.21 in the 22 line, 24.0 onwards; 23 never had it.
NODE_ENV_PROXY_SINCE = ((22, 21), (24, 0))


def node_honours_env_proxy(version: str) -> bool:
    """Whether Node ``version`` (``node --version``, e.g. ``v22.21.0``) sends fetch through
    HTTPS_PROXY; True when the version cannot be read (better no warning than a wrong one)."""
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    if match is None:
        return True
    major, minor = int(match[1]), int(match[2])
    line_22, since_24 = NODE_ENV_PROXY_SINCE
    return (major, minor) >= since_24 or line_22 <= (major, minor) < (23, 0)


def _node_version(node: str, path: str | None) -> tuple[str, str] | None:
    """(the node executable ``node`` resolves to on ``path``, its version), or None when
    there is none or it does not answer within 5 s."""
    executable = shutil.which(node, path=path)
    if executable is None:
        return None
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (executable, done.stdout.strip()) if done.returncode == 0 else None


def warn_if_old_node(node: str = "node", path: str | None = None) -> bool:
    """Warn on stderr when ``node`` (default: the one on the PATH) is too old for its fetch
    to go through the proxy, so its calls would silently go unrecorded. Whether it warned."""
    found = _node_version(node, path)
    if found is None or node_honours_env_proxy(found[1]):
        return False
    executable, version = found
    print(
        f"llmtap: warning: {executable} is Node {version}: its built-in fetch ignores HTTPS_PROXY "
        "before Node 22.21 (or 24), so its LLM calls will not be recorded; use Node >= 22.21, "
        "or give the app a proxy agent",
        file=sys.stderr,
    )
    return True


def _node_of(cmd: list[str]) -> str | None:
    """The node that ``cmd`` runs on: itself when it is a node binary, the PATH's for npm,
    npx, yarn, pnpm and tsx; None for other commands."""
    name = os.path.basename(cmd[0])
    if name in ("node", "nodejs"):
        return cmd[0]
    return "node" if name in NODE_TOOLS else None


NOTHING_RECORDED_HINTS = (
    "llmtap: warning: no LLM calls were recorded. Does the app honour HTTPS_PROXY? Python's "
    "requests and httpx (so the openai and anthropic SDKs) and curl do; Node's built-in fetch only "
    "from Node 22.21 (or 24) with NODE_USE_ENV_PROXY=1, which is set; other clients may need their "
    "own proxy setting. Calls to hosts llmtap does not know pass through unrecorded (add them under "
    "[hosts] in the config)."
)


def _say_recorded(count: int, node_warned: bool) -> None:
    """The last word of `llmtap run`: how many calls were recorded; when none, why that may be."""
    print(f"llmtap: {count} LLM calls recorded", file=sys.stderr)
    if count == 0:
        print(NOTHING_RECORDED_HINTS, file=sys.stderr)
        if not node_warned:
            warn_if_old_node()


def _free_port(host: str) -> int:
    """A port free on ``host`` now (an IPv6 address needs an IPv6 socket)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _proxy_url(host: str, port: int) -> str:
    """The proxy URL clients on this machine use for a proxy listening on ``host``."""
    return f"http://{_host_port(_client_host(host), port)}"


def _call(cmd: list[str], env: dict[str, str], umask: int) -> int:
    """Run ``cmd`` to its end, with ``umask``; its exit code (127 when it does not exist, 130
    on Ctrl-C)."""
    try:
        return subprocess.call(cmd, env=env, umask=umask)
    except FileNotFoundError:
        print(f"llmtap: error: command not found: {shlex.join(cmd[:1])}", file=sys.stderr)
        return 127
    except KeyboardInterrupt:
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    from collector.proxy.server import ProxyStartError, serving_in_background

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print(
            "llmtap: error: nothing to run; usage: llmtap run [options] -- CMD [ARG]...",
            file=sys.stderr,
        )
        return 2
    port = args.port if args.port is not None else _free_port(args.host)
    settings = _settings(args, port)
    warn_if_exposed(settings.listen_host, port, PROXY_EXPOSURE)
    node = _node_of(cmd)
    node_warned = node is not None and warn_if_old_node(node)
    try:
        with serving_in_background(settings) as proxy:
            assert proxy.listening is not None
            url = _proxy_url(settings.listen_host, proxy.listening.port)
            env = {**os.environ, **client_env(url, proxy.ca_bundle)}
            code = _call(cmd, env, args.user_umask)
    except ProxyStartError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1
    if code != 127:
        _say_recorded(proxy.recorder.calls_recorded, node_warned)
    return code


def cmd_env(args: argparse.Namespace) -> int:
    """Print the exports; read-only: the CA and its bundle are the proxy's to create (else
    `env` would make a CA that no proxy uses). When the bundle is not there yet, the exports
    still name where the proxy will write it (so `llmtap proxy & eval "$(llmtap env)"` works
    on a first run) and stderr says to start the proxy with this data dir."""
    settings = load_settings(data_dir=args.data_dir)
    bundle = settings.paths.ca_bundle
    for name, value in client_env(_proxy_url(args.host, args.port), bundle).items():
        print(f"export {name}={shlex.quote(value)}")
    if not bundle.exists():
        start = shlex.join(["llmtap", "proxy", "--data-dir", str(settings.data_dir)])
        print(
            f"llmtap: note: no CA bundle in {settings.data_dir} yet; `{start}` creates it when it "
            "starts: start it before the apps, or their HTTPS calls fail",
            file=sys.stderr,
        )
    warn_if_old_node()
    return 0


def _db(args: argparse.Namespace) -> Path:
    return resolve_data_dir(args.data_dir) / "llmtap.duckdb"


def cmd_export(args: argparse.Namespace) -> int:
    since = parse_instant(args.since) if args.since else None
    until = parse_instant(args.until) if args.until else None
    out = Path(args.out) if args.out else None
    count = export_calls(_db(args), args.format, since, until, out)
    if out is not None:
        print(f"llmtap: wrote {count} calls to {out}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.report import build, parse_by, title, write

    since = parse_instant(args.since) if args.since else None
    until = parse_instant(args.until) if args.until else None
    by = parse_by(args.by) if args.by is not None else None
    options = {"period": args.period, "limit": args.limit, "bucket": args.bucket, "metric": args.metric}
    report = build(_db(args), args.show, by, since, until, **options)
    write(report, args.format, title(report, since, until))
    quarantine = Paths(resolve_data_dir(args.data_dir)).quarantine
    if set_aside := Quarantine(quarantine).count():
        print(
            f"llmtap: {set_aside} recorded call(s) could not be loaded into the store; they are kept "
            f"in {quarantine} (see README, Storage)",
            file=sys.stderr,
        )
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from collector.pricing.book import PriceBook, reprice
    from collector.providers import builtin_providers

    settings = load_settings(data_dir=args.data_dir, config_file=args.config)
    since = parse_instant(args.since) if args.since else None
    prices_ids = {p.name: p.prices_id for p in builtin_providers()}
    result = reprice(settings.paths.db, PriceBook(settings.prices), prices_ids, since)
    window = f" started since {since.isoformat()}" if since else ""
    print(
        f"llmtap: repriced {result.calls} calls{window}: {result.changed} changed, "
        f"{result.unpriced} with usage but no price (listed by `llmtap report`)"
    )
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from analytics.routing import draft_rules, recommend
    from app.recommend import write, write_rules
    from collector.pricing.book import PriceBook
    from collector.routing.rules import RULES_FILE

    settings = load_settings(data_dir=args.data_dir, config_file=args.config, rules_file=args.rules)
    since = parse_instant(args.since) if args.since else None
    until = parse_instant(args.until) if args.until else None
    print(f"llmtap: analysing the calls in {settings.paths.db} ...", file=sys.stderr)
    recs = recommend(settings.data_dir, since, until, settings.recommend, book=PriceBook(settings.prices))
    window = f"{since.isoformat() if since else 'start'} to {until.isoformat() if until else 'now'}"
    write(recs, args.format, f"llmtap recommend, {window} (UTC)")
    if args.write_rules:
        path = settings.routing.rules or settings.data_dir / RULES_FILE
        drafted, total = write_rules(Path(path), draft_rules(recs, args.mode))
        print(
            f"llmtap: drafted {drafted} {args.mode} rules into {path} ({total} rules in all); review them",
            file=sys.stderr,
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.evaluate import evaluate

    settings = load_settings(
        data_dir=args.data_dir, config_file=args.config, upstream_flags=args.upstream, rules_file=args.rules
    )
    since = parse_instant(args.since) if args.since else None
    until = parse_instant(args.until) if args.until else None
    return evaluate(settings, args.rule, since, until, args.limit)


def cmd_ui(args: argparse.Namespace) -> int:
    from app.ui.launch import serve

    settings = load_settings(data_dir=args.data_dir, config_file=args.config)  # a bad config stops here
    warn_if_exposed(args.host, args.port, UI_EXPOSURE)
    try:
        return serve(settings.data_dir, Path(args.config) if args.config else None, args.host, args.port)
    except OSError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo
    from collector.proxy.server import ProxyStartError

    try:
        return run_demo(
            Path(args.data_dir) if args.data_dir else None,
            args.calls,
            args.concurrency,
            args.port,
            not args.no_ui,
        )
    except (OSError, ProxyStartError) as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
