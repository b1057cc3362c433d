"""``llmtap demo``: a populated store, and the dashboard on it, without any API key.

It starts :class:`~app.demo.fake_provider.DemoProvider` (a local OpenAI- and
Anthropic-compatible server) and a real llmtap proxy sending ``api.openai.com`` and
``api.anthropic.com`` to it, then drives a few minutes' worth of traffic from four
"apps" (:data:`APPS`) through the proxy with the official ``openai`` and
``anthropic`` SDKs, each call tagged with the ``X-Llmtap-*`` metadata headers. So the
calls take exactly the path a real app's calls take, and every dashboard page has
something to show: several providers, APIs and models, streams, prompt-cache reads,
reasoning tokens, truncated answers, provider errors and their retries, repeated
prompts, and budgets (:func:`budgets_toml`) that the traffic crosses, so alerts fire,
one app is blocked and one is downgraded.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
from anthropic.types import MessageParam, TextBlockParam
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.demo.fake_provider import CHARS_PER_TOKEN, MODELS, WORDS, DemoProvider
from collector.pricing.book import PriceBook
from collector.proxy.certs import client_env
from collector.proxy.server import serving_in_background
from collector.routing.rules import Match, Rule, dump_rules
from collector.settings.config import load_settings
from collector.settings.paths import Paths

DEFAULT_DATA_DIR = Path("~/.llmtap-demo")
CONFIG_FILE = "demo.toml"
UI_HOST = "127.0.0.1"
PROVIDER_HOSTS = ("api.openai.com", "api.anthropic.com")
#: The SDKs' ``prices_id`` (genai-prices provider) per API, for the budget estimates.
PRICES_ID = {"chat": "openai", "responses": "openai", "embeddings": "openai", "messages": "anthropic"}


@dataclass(frozen=True, slots=True)
class CallKind:
    """One kind of call an app makes, and how often (``weight``) among its calls."""

    api: str  # chat | responses | embeddings | messages
    model: str
    weight: float
    stream: bool = False
    context_tokens: int = 200  # typical size of the user's part of the prompt
    max_tokens: int | None = None
    cache_system: bool = False  # Anthropic: mark the system prompt for the prompt cache


@dataclass(frozen=True, slots=True)
class AppProfile:
    """A simulated application: its share of the traffic, its users and what it calls."""

    name: str
    weight: float
    users: int
    system_tokens: int
    kinds: tuple[CallKind, ...]
    properties: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Share of its prompts that repeat an earlier one (cacheable, and waste when duplicated).
    repeat_share: float = 0.1


APPS = (
    AppProfile(
        "support-bot",
        weight=0.35,
        users=40,
        system_tokens=1400,
        properties={"channel": ("web", "email", "chat")},
        kinds=(
            CallKind("messages", "claude-3-5-haiku-latest", 0.55, stream=True, context_tokens=150),
            CallKind(
                "messages", "claude-sonnet-4-5", 0.3, stream=True, context_tokens=400, cache_system=True
            ),
            CallKind("chat", "gpt-4o-mini", 0.15, context_tokens=120),
        ),
        repeat_share=0.15,
    ),
    AppProfile(
        "code-review",
        weight=0.2,
        users=6,
        system_tokens=300,
        properties={"team": ("platform", "payments", "mobile")},
        kinds=(
            CallKind("chat", "gpt-4o", 0.55, context_tokens=2500),
            CallKind("responses", "o4-mini", 0.3, context_tokens=1800),
            CallKind("responses", "o4-mini", 0.15, stream=True, context_tokens=900),
        ),
    ),
    AppProfile(
        "search",
        weight=0.3,
        users=25,
        system_tokens=1200,
        properties={"index": ("docs", "tickets")},
        kinds=(
            CallKind("embeddings", "text-embedding-3-small", 0.45, context_tokens=60),
            CallKind("chat", "gpt-4.1-mini", 0.55, stream=True, context_tokens=900),
        ),
        repeat_share=0.25,
    ),
    AppProfile(
        "marketing-writer",
        weight=0.15,
        users=4,
        system_tokens=250,
        properties={"campaign": ("spring-sale", "newsletter")},
        kinds=(
            CallKind("chat", "gpt-4o", 0.6, stream=True, context_tokens=500, max_tokens=220),
            CallKind("messages", "claude-sonnet-4-5", 0.4, context_tokens=600, max_tokens=400),
        ),
    ),
)

#: The app whose daily budget blocks it part-way through the demo, and the share of its
#: expected spend that budget allows.
BLOCKED_APP, BLOCKED_SHARE = "marketing-writer", 0.5
#: The app whose users are each downgraded from gpt-4o once they pass a share of their expected spend.
DOWNGRADED_APP, DOWNGRADED_SHARE = "code-review", 0.3
#: The shadow rule the demo writes to DATA_DIR/rules.yaml, so the Recommendations page has
#: evidence: every gpt-4o call of this app is also sent to gpt-4o-mini and the answers compared.
SHADOW_RULE = Rule(
    id="code-review-4o-to-mini",
    match=Match(model="gpt-4o", app=DOWNGRADED_APP),
    to="gpt-4o-mini",
    mode="shadow",
    fraction=1.0,
)
JUDGE_MODEL = "gpt-4.1-mini"
#: The all-traffic budget that only alerts, as a share of the demo's whole expected spend.
TOTAL_SHARE = 0.7
#: The smallest budget limit the demo writes (four places, as it writes them).
MIN_LIMIT_USD = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call the demo makes: what to send, and the metadata headers it carries."""

    app: str
    kind: CallKind
    system: str
    prompt: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class DemoResult:
    data_dir: Path
    outcomes: Counter[str]
    seconds: float


def words(n_tokens: int, rng: random.Random) -> str:
    """About ``n_tokens`` tokens of filler text (at :data:`CHARS_PER_TOKEN` characters a token)."""
    out: list[str] = []
    size = 0
    while size < n_tokens * CHARS_PER_TOKEN:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def plan_calls(n: int, seed: int = 0) -> list[PlannedCall]:
    """``n`` calls drawn from :data:`APPS`, the same for the same seed."""
    rng = random.Random(seed)
    systems = {app.name: f"You are {app.name}. " + words(app.system_tokens, rng) for app in APPS}
    earlier: dict[str, list[str]] = {app.name: [] for app in APPS}
    plan = []
    for index in range(n):
        app = rng.choices(APPS, weights=[a.weight for a in APPS])[0]
        kind = rng.choices(app.kinds, weights=[k.weight for k in app.kinds])[0]
        user = rng.randrange(app.users)
        if earlier[app.name] and rng.random() < app.repeat_share:
            prompt = rng.choice(earlier[app.name])
        else:
            prompt = words(round(kind.context_tokens * rng.lognormvariate(0, 0.4)), rng)
            earlier[app.name].append(prompt)
        headers = {
            "X-Llmtap-App": app.name,
            "X-Llmtap-User": f"{app.name}-user-{user}",
            "X-Llmtap-Session": f"{app.name}-{user}-{index // 25}",
        }
        for name, values in app.properties.items():
            headers[f"X-Llmtap-Property-{name}"] = rng.choice(values)
        plan.append(PlannedCall(app.name, kind, systems[app.name], prompt, headers))
    return plan


def expected_cost(call: PlannedCall, book: PriceBook, now: datetime) -> Decimal:
    """What ``call`` should cost with a typical answer, for setting budgets the demo crosses."""
    rates = book.rates(PRICES_ID[call.kind.api], call.kind.model, None, now)
    if rates is None:
        raise ValueError(f"demo model {call.kind.model} has no price in the catalogue")
    prompt = len(call.system if call.kind.api != "embeddings" else "") + len(call.prompt)
    output = MODELS[call.kind.model].output_median
    if call.kind.max_tokens:
        output = min(output, call.kind.max_tokens)
    tokens_in = Decimal(math.ceil(prompt / CHARS_PER_TOKEN))
    return (tokens_in * rates.input + output * (rates.output or 0)) / 1_000_000


def budget_limit(expected_usd: Decimal, share: float) -> str:
    """``share`` of an expected spend as a budget's ``limit_usd``: at least
    :data:`MIN_LIMIT_USD`, since the config wants a positive amount and a short demo may
    expect next to nothing of an app."""
    return f"{max(expected_usd * Decimal(str(share)), MIN_LIMIT_USD):.4f}"


def budgets_toml(plan: list[PlannedCall]) -> str:
    """The demo's config: budgets sized from the plan's expected spend so that the traffic
    crosses them (one app blocked, one app's users downgraded, an all-traffic alert), and
    the judge model for the shadow rule."""
    book = PriceBook()
    now = datetime.now(UTC)
    spend = dict.fromkeys((app.name for app in APPS), Decimal(0))  # an app may have no call in a short plan
    for call in plan:
        spend[call.app] += expected_cost(call, book, now)
    per_user = spend[DOWNGRADED_APP] / next(a.users for a in APPS if a.name == DOWNGRADED_APP)
    return f"""\
# Written by `llmtap demo`: budgets sized so the demo's traffic crosses them.

[budgets."{BLOCKED_APP}-daily"]
app = "{BLOCKED_APP}"
limit_usd = {budget_limit(spend[BLOCKED_APP], BLOCKED_SHARE)}
period = "day"
action = "block"

[budgets."{DOWNGRADED_APP}-per-user"]
app = "{DOWNGRADED_APP}"
per = "user"
limit_usd = {budget_limit(per_user, DOWNGRADED_SHARE)}
period = "day"
action = "downgrade"
downgrade_to = {{"gpt-4o" = "gpt-4o-mini"}}

[budgets."all-apps-daily"]
limit_usd = {budget_limit(sum(spend.values(), Decimal(0)), TOTAL_SHARE)}
period = "day"
alerts = [0.5, 0.8]

[routing]   # shadow answers in free text are compared by this model
judge_model = "{JUDGE_MODEL}"
"""


class Clients:
    """The official SDK clients, sent through the proxy the way ``llmtap env`` configures apps:
    ``HTTPS_PROXY`` for the route, ``SSL_CERT_FILE`` (llmtap's CA bundle) for trust."""

    def __init__(self, proxy_url: str, ca_bundle: Path) -> None:
        env = client_env(proxy_url, ca_bundle)
        trust = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
        proxy = env["HTTPS_PROXY"]
        # Each SDK has its own HTTP client class (anthropic's is built on httpx2).
        # Fake keys: the fake provider ignores them, and llmtap never stores them.
        self.openai = openai.OpenAI(
            api_key="sk-demo-not-a-real-key",
            http_client=openai.DefaultHttpxClient(proxy=proxy, verify=trust, timeout=60),
            max_retries=1,
        )
        self.anthropic = anthropic.Anthropic(
            api_key="sk-ant-demo-not-a-real-key",
            http_client=anthropic.DefaultHttpxClient(proxy=proxy, verify=trust, timeout=60),
            max_retries=1,
        )

    def close(self) -> None:
        self.openai.close()
        self.anthropic.close()


def _chat(clients: Clients, call: PlannedCall) -> None:
    kind = call.kind
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": call.system},
        {"role": "user", "content": call.prompt},
    ]
    max_tokens = kind.max_tokens or openai.omit
    create = clients.openai.chat.completions.create
    if kind.stream:
        for _ in create(
            model=kind.model,
            messages=messages,
            stream=True,
            extra_headers=call.headers,
            max_tokens=max_tokens,
        ):
            pass
    else:
        create(model=kind.model, messages=messages, extra_headers=call.headers, max_tokens=max_tokens)


def _responses(clients: Clients, call: PlannedCall) -> None:
    kind = call.kind
    response = clients.openai.responses.create(
        model=kind.model,
        instructions=call.system,
        input=call.prompt,
        reasoning={"effort": "medium"},
        stream=kind.stream,
        extra_headers=call.headers,
    )
    if kind.stream:
        for _ in response:
            pass


def _embeddings(clients: Clients, call: PlannedCall) -> None:
    clients.openai.embeddings.create(model=call.kind.model, input=call.prompt, extra_headers=call.headers)


def _messages(clients: Clients, call: PlannedCall) -> None:
    kind = call.kind
    system: str | list[TextBlockParam] = call.system
    if kind.cache_system:
        system = [{"type": "text", "text": call.system, "cache_control": {"type": "ephemeral"}}]
    messages: list[MessageParam] = [{"role": "user", "content": call.prompt}]
    max_tokens = kind.max_tokens or 1024
    if kind.stream:
        with clients.anthropic.messages.stream(
            model=kind.model,
            system=system,
            messages=messages,
            max_tokens=max_tokens,
            extra_headers=call.headers,
        ) as stream:
            stream.until_done()
    else:
        clients.anthropic.messages.create(
            model=kind.model,
            system=system,
            messages=messages,
            max_tokens=max_tokens,
            extra_headers=call.headers,
        )


SENDERS: dict[str, Callable[[Clients, PlannedCall], None]] = {
    "chat": _chat,
    "responses": _responses,
    "embeddings": _embeddings,
    "messages": _messages,
}


def send(clients: Clients, call: PlannedCall) -> str:
    """Make one call; its outcome as the app saw it: ``ok`` or the error the SDK raised."""
    try:
        SENDERS[call.kind.api](clients, call)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return f"HTTP {exc.status_code}"
    except (openai.APIError, anthropic.APIError) as exc:
        return type(exc).__name__
    return "ok"


def prepare_data_dir(data_dir: Path | None, console: Console) -> Path:
    """The demo's own directory (a previous demo's data in it replaced), or a given one that
    holds no store yet: the demo's calls are made up and must not mix with real ones."""
    if data_dir is None:
        target = DEFAULT_DATA_DIR.expanduser()
        if (target / CONFIG_FILE).exists():
            console.print(f"replacing the previous demo's data in {target}", soft_wrap=True)
            shutil.rmtree(target)
        elif target.exists() and any(target.iterdir()):
            raise ValueError(
                f"{target} holds files that `llmtap demo` did not write; move them away, "
                "or give the demo a new directory with --data-dir"
            )
        target.mkdir(parents=True, exist_ok=True)
        return target
    target = data_dir.expanduser().resolve()
    if Paths(target).db.exists():
        raise ValueError(
            f"{target} already holds an llmtap store; the demo's calls are made up, "
            "so give it a new directory (or none, for ~/.llmtap-demo)"
        )
    target.mkdir(parents=True, exist_ok=True)
    return target


def record(data_dir: Path | None, calls: int, concurrency: int, console: Console) -> DemoResult:
    """Run the fake provider and a proxy, drive ``calls`` planned calls through it with
    ``concurrency`` threads, and return once every call is in the store."""
    if calls < 1 or concurrency < 1:
        raise ValueError("--calls and --concurrency must be at least 1")
    target = prepare_data_dir(data_dir, console)
    plan = plan_calls(calls)
    config = target / CONFIG_FILE
    config.write_text(budgets_toml(plan))
    Paths(target).rules.write_text(dump_rules([SHADOW_RULE], "Written by `llmtap demo`."))
    started = datetime.now(UTC)
    with DemoProvider() as provider:
        settings = load_settings(
            data_dir=str(target),
            config_file=str(config),
            listen_port=0,
            upstream_flags=[f"{host}={provider.url}" for host in PROVIDER_HOSTS],
        )
        with serving_in_background(settings) as proxy:
            assert proxy.listening is not None
            clients = Clients(proxy.listening.url, proxy.ca_bundle)
            try:
                outcomes = drive(clients, plan, concurrency, console)
            finally:
                clients.close()
    return DemoResult(target, outcomes, (datetime.now(UTC) - started).total_seconds())


class ConsoleLog(logging.Handler):
    """Log records printed through a Rich console: while its progress bar is live they land
    above the bar, where a plain stream handler's lines would be glued to it and redrawn over."""

    def __init__(self, console: Console, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), soft_wrap=True, markup=False, highlight=False)


@contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """The root logger's records go through ``console`` (in its handlers' format) meanwhile."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [ConsoleLog(console, saved[0].formatter if saved else None)]
    try:
        yield
    finally:
        root.handlers = saved


def drive(clients: Clients, plan: list[PlannedCall], concurrency: int, console: Console) -> Counter[str]:
    """Send the planned calls from ``concurrency`` threads, with a progress bar."""
    outcomes: Counter[str] = Counter()
    columns = (
        TextColumn("[bold]demo traffic"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
    )
    with (
        logs_through(console),
        Progress(*columns, console=console) as progress,
        ThreadPoolExecutor(concurrency, thread_name_prefix="demo-app") as pool,
    ):
        task = progress.add_task("calls", total=len(plan), tally="")
        for future in as_completed(pool.submit(send, clients, call) for call in plan):
            outcomes[future.result()] += 1
            tally = ", ".join(f"{name}: {count}" for name, count in outcomes.most_common())
            progress.update(task, advance=1, tally=tally)
    return outcomes


def run_demo(data_dir: Path | None, calls: int, concurrency: int, ui_port: int, open_ui: bool) -> int:
    """``llmtap demo``: record, say what was recorded, then serve the dashboard on it."""
    from app.ui.launch import check_port, serve

    console = Console(stderr=True)
    for sdk_logger in ("httpx", "httpx2", "openai", "anthropic"):  # one INFO line per request
        logging.getLogger(sdk_logger).setLevel(logging.WARNING)
    if open_ui:
        check_port(UI_HOST, ui_port)  # before recording, not after
    result = record(data_dir, calls, concurrency, console)
    tally = ", ".join(f"{name}: {count}" for name, count in result.outcomes.most_common())
    config = result.data_dir / CONFIG_FILE
    # soft_wrap: commands stay whole, to be copied, however narrow the terminal.
    console.print(
        f"recorded {calls} demo calls in {result.seconds:.1f} s ({tally}) into {result.data_dir}\n"
        f"the dashboard again later: llmtap ui --data-dir {result.data_dir} --config {config}\n"
        f"in the terminal:           llmtap report --data-dir {result.data_dir}",
        soft_wrap=True,
    )
    if not open_ui:
        return 0
    return serve(result.data_dir, config, UI_HOST, ui_port)
