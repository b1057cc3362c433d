"""The ``llmtap`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from app.report import FORMATS as REPORT_FORMATS
from app.report import METRICS, PERIODS
from app.report import VIEWS as REPORT_VIEWS
from collector.certs import client_env, ensure_ca
from collector.config import ConfigError, Settings, load_settings, resolve_data_dir
from collector.export import FORMATS, export_calls, parse_instant

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
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="llmtap: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mitmproxy", "asyncio", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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


def cmd_proxy(args: argparse.Namespace) -> int:
    from collector.proxy import LlmtapProxy

    proxy = LlmtapProxy(_settings(args, args.port))

    def announce(listening) -> None:
        print(f"llmtap proxy listening on {listening.url}", flush=True)
        print(f"CA bundle: {listening.ca_bundle}", flush=True)
        print(f"store: {proxy.settings.paths.db}", flush=True)
        print(f'point apps at it with: eval "$(llmtap env --port {listening.port})"', flush=True)

    try:
        asyncio.run(proxy.serve(announce))
    except OSError as exc:
        print(f"llmtap: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        proxy.close()
        return 1
    saved = proxy.close()
    print(f"llmtap: stopped; {proxy.recorder.calls_recorded} calls recorded", file=sys.stderr)
    return 0 if saved else 1


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cmd_run(args: argparse.Namespace) -> int:
    from collector.proxy import ProxyStartError, serving_in_background

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print(
            "llmtap: error: nothing to run; usage: llmtap run [options] -- CMD [ARG]...",
            file=sys.stderr,
        )
        return 2
    port = args.port if args.port is not None else _free_port(args.host)
    try:
        with serving_in_background(_settings(args, port)) as proxy:
            assert proxy.listening is not None
            env = {**os.environ, **client_env(proxy.listening.url, proxy.ca_bundle)}
            try:
                return subprocess.call(cmd, env=env)
            except FileNotFoundError:
                print(f"llmtap: error: command not found: {shlex.join(cmd[:1])}", file=sys.stderr)
                return 127
            except KeyboardInterrupt:
                return 130
    except ProxyStartError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1


def cmd_env(args: argparse.Namespace) -> int:
    settings = load_settings(data_dir=args.data_dir)
    bundle = ensure_ca(settings.paths)
    for name, value in client_env(f"http://{args.host}:{args.port}", bundle).items():
        print(f"export {name}={shlex.quote(value)}")
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
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from collector.pricing import PriceBook, reprice
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
    from collector.pricing import PriceBook
    from collector.rules import RULES_FILE

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
    try:
        return serve(settings.data_dir, Path(args.config) if args.config else None, args.host, args.port)
    except OSError as exc:
        print(f"llmtap: error: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo
    from collector.proxy import ProxyStartError

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
