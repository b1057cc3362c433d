"""llmtap's settings: every option in one place, from defaults, the config file and flags.

The config file is TOML::

    capture = "full"            # full | redacted | metadata
    app = "checkout"            # default app name when a request carries no X-Llmtap-App

    [upstreams]                 # HOST = URL, like --upstream
    "api.openai.com" = "http://127.0.0.1:9000"

    [hosts]                     # extra LLM hosts to intercept, and the API family they speak
    "llm.internal.example" = "openai"

    [prices."my-model"]         # USD per million tokens; wins over the genai-prices catalogue
    input = 2.5
    output = 10
    cache_read = 1.25           # optional; default: the input price
    cache_write = 3.125         # optional; default: the input price
    tiers = [{above = 200000, input = 5, output = 15}]   # optional; keys left out keep the base price

    [budgets."checkout-daily"]  # spend limits enforced at the proxy (see BudgetSpec)
    limit_usd = 5
    period = "day"              # hour | day | month, UTC
    action = "block"            # alert | downgrade | block
    app = "checkout"            # optional filters: app, user, properties = {team = "search"}
    per = "user"                # optional: a separate total per app | user | property:NAME
    alerts = [0.8, 0.9, 0.95]   # fractions of the limit that raise an alert (the default)
    webhook = "https://hooks.example/llmtap"   # optional: alerts are POSTed here as JSON

    [recommend]                 # the routing recommender (`llmtap recommend`, see RecommendSettings)
    confidence = 0.95           # of the Wilson interval on agreement
    min_agreement = 0.95        # its lower bound must reach this to recommend a swap
    min_samples = 30            # and at least this many shadow samples
    candidates = ["gpt-4o-mini"]   # or per incumbent: {"gpt-4o" = ["gpt-4o-mini"]}; default: the catalogue
    exclude = ["gpt-3.5-turbo"]    # never proposed

    [routing]                   # how the proxy and `llmtap evaluate` apply the rules file
    rules = "rules.yaml"        # default: DATA_DIR/rules.yaml; --rules FILE wins
    judge_model = "gpt-4.1-mini"  # compares free-text shadow answers; unset: they are not compared
    noise_floor_fraction = 0.02 # share of shadowed calls also copied to their own model
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.pricing.book import Rates, tier_ref
from collector.storage.spool import QUARANTINE_DIR

CAPTURE_MODES = ("full", "redacted", "metadata")


class ConfigError(ValueError):
    """Bad configuration; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    path_prefix: str

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"upstream URL must be http:// or https:// with a host, got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Paths:
    """Where everything lives inside the data directory."""

    data_dir: Path

    @property
    def db(self) -> Path:
        return self.data_dir / "llmtap.duckdb"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine(self) -> Path:
        """Spool lines the loader could not load (see :class:`collector.storage.spool.Quarantine`)."""
        return self.spool / QUARANTINE_DIR

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def ca_bundle(self) -> Path:
        return self.data_dir / "ca-bundle.pem"

    @property
    def budget_alerts(self) -> Path:
        """The budget alerts of the current periods, for the dashboard (JSON, replaced atomically)."""
        return self.data_dir / "budget_alerts.json"


BUDGET_PERIODS = ("hour", "day", "month")
BUDGET_ACTIONS = ("alert", "downgrade", "block")
DEFAULT_ALERTS = (0.8, 0.9, 0.95)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """One ``[budgets."NAME"]`` table: a USD limit on the spend of some calls per UTC period.

    The filters (``app``, ``user``, ``properties``) choose the calls it covers; ``per``
    (None, "app", "user" or "property:NAME") gives each distinct value its own total of
    ``limit_usd``. ``downgrade_to`` is one model for every call, or a table from the
    requested model to its cheaper replacement."""

    name: str
    limit_usd: Decimal
    period: str
    action: str = "alert"
    alerts: tuple[float, ...] = DEFAULT_ALERTS
    app: str | None = None
    user: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    per: str | None = None
    downgrade_to: str | dict[str, str] | None = None
    webhook: str | None = None


@dataclass(frozen=True, slots=True)
class RecommendSettings:
    """The ``[recommend]`` table: how much shadow evidence a model swap needs, and which
    models may be proposed.

    ``candidates`` maps an incumbent model to the models to consider for it; the key
    ``"*"`` (a plain list in the file) applies to every incumbent. Empty: every cheaper
    model of the catalogue (analytics/routing/models.toml) behind the same provider."""

    confidence: float = 0.95
    min_agreement: float = 0.95
    min_samples: int = 30
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoutingSpec:
    """The ``[routing]`` table: where the rules file is (None: DATA_DIR/rules.yaml), the model
    that judges free-text shadow answers, and the share of shadowed calls also copied to
    their own model to measure the incumbent's disagreement with itself."""

    rules: Path | None = None
    judge_model: str | None = None
    noise_floor_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    capture: str = "full"
    default_app: str | None = None
    #: The OTLP/HTTP URL spans are POSTed to (see :func:`otlp_traces_url`); None: no export.
    otlp_endpoint: str | None = None
    #: Per-model price overrides from the config's ``[prices."MODEL"]`` tables.
    prices: dict[str, Rates] = field(default_factory=dict)
    #: Per provider: add ``stream_options.include_usage`` to streams that lack it (the
    #: provider module's default when absent).
    stream_usage: dict[str, bool] = field(default_factory=dict)
    #: Spend limits from the config's ``[budgets."NAME"]`` tables, in file order.
    budgets: tuple[BudgetSpec, ...] = ()
    recommend: RecommendSettings = field(default_factory=RecommendSettings)
    routing: RoutingSpec = field(default_factory=RoutingSpec)

    @property
    def paths(self) -> Paths:
        return Paths(self.data_dir)


def resolve_data_dir(flag: str | None) -> Path:
    """--data-dir, else $LLMTAP_DATA_DIR, else ~/.llmtap (the contract's order)."""
    raw = flag or os.environ.get("LLMTAP_DATA_DIR") or "~/.llmtap"
    return Path(raw).expanduser().resolve()


def parse_upstream_flag(value: str) -> tuple[str, Upstream]:
    host, sep, url = value.partition("=")
    if not sep or not host or not url:
        raise ConfigError(f"--upstream takes HOST=URL, got {value!r}")
    return host.strip().lower(), Upstream.parse(url.strip())


def load_settings(
    *,
    data_dir: str | None = None,
    config_file: str | None = None,
    listen_host: str | None = None,
    listen_port: int | None = None,
    upstream_flags: list[str] | None = None,
    rules_file: str | None = None,
) -> Settings:
    """Merge defaults, the config file and command-line flags (flags win)."""
    file_values: dict = {}
    if config_file:
        path = Path(config_file).expanduser()
        try:
            file_values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    known = {
        "capture",
        "app",
        "upstreams",
        "hosts",
        "otlp_endpoint",
        "data_dir",
        "prices",
        "stream_usage",
        "budgets",
        "recommend",
        "routing",
    }
    if unknown := set(file_values) - known:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")

    upstreams = {host.lower(): Upstream.parse(url) for host, url in file_values.get("upstreams", {}).items()}
    for flag in upstream_flags or ():
        host, upstream = parse_upstream_flag(flag)
        upstreams[host] = upstream

    capture = file_values.get("capture", "full")
    if capture not in CAPTURE_MODES:
        raise ConfigError(f"capture must be one of {', '.join(CAPTURE_MODES)}, got {capture!r}")

    port = listen_port if listen_port is not None else 8080
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port}")

    return Settings(
        data_dir=resolve_data_dir(data_dir or file_values.get("data_dir")),
        listen_host=listen_host or "127.0.0.1",
        listen_port=port,
        upstreams=upstreams,
        extra_hosts={h.lower(): p for h, p in file_values.get("hosts", {}).items()},
        capture=capture,
        default_app=file_values.get("app"),
        otlp_endpoint=otlp_traces_url(file_values.get("otlp_endpoint"), os.environ),
        prices=_parse_prices(file_values.get("prices", {})),
        stream_usage=_parse_stream_usage(file_values.get("stream_usage", {})),
        budgets=_parse_budgets(file_values.get("budgets", {})),
        recommend=parse_recommend(file_values.get("recommend", {})),
        routing=_parse_routing(file_values.get("routing", {}), rules_file),
    )


def otlp_traces_url(configured: str | None, environ: Mapping[str, str]) -> str | None:
    """Where spans go: the config's ``otlp_endpoint``, else the OpenTelemetry variables in the
    precedence of the OTLP exporter spec.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (traces only) wins over ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (every signal) and is the full URL, used as is; the shared one, like ``otlp_endpoint``, is a
    base to which ``/v1/traces`` is added (unless it already ends so). An empty variable is unset,
    as the spec says."""
    if configured:
        return _with_traces_path(configured)
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return _with_traces_path(base)
    return None


def _with_traces_path(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def _parse_routing(table: Any, rules_flag: str | None) -> RoutingSpec:
    if not isinstance(table, dict):
        raise ConfigError('routing must be a table like {rules = "rules.yaml", judge_model = "gpt-4.1-mini"}')
    _check_keys("routing", table, ("rules", "judge_model", "noise_floor_fraction"))
    rules = rules_flag or _optional_text("routing.rules", table.get("rules"))
    fraction = table.get("noise_floor_fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ConfigError(f"routing.noise_floor_fraction must be a number from 0 to 1, got {fraction!r}")
    return RoutingSpec(
        rules=Path(rules).expanduser() if rules else None,
        judge_model=_optional_text("routing.judge_model", table.get("judge_model")),
        noise_floor_fraction=float(fraction),
    )


_RATE_KEYS = ("input", "output", "cache_read", "cache_write", "reasoning")


def _parse_prices(table: Any) -> dict[str, Rates]:
    """The ``[prices."MODEL"]`` tables as Rates, or a ConfigError naming the bad entry.

    Users price models the catalogue lacks (fine-tunes, self-hosted models, negotiated
    rates), so mistakes here would silently misstate costs: every key is checked."""
    if not isinstance(table, dict):
        raise ConfigError('prices must be a table of [prices."MODEL"] tables')
    return {model: _parse_model_prices(model, entry) for model, entry in table.items()}


def _parse_model_prices(model: str, entry: Any) -> Rates:
    where = f'prices."{model}"'
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table with input and output prices (USD per million tokens)")
    _check_keys(where, entry, (*_RATE_KEYS, "tiers"))
    for required in ("input", "output"):
        if required not in entry:
            raise ConfigError(f"{where} needs {required} (USD per million tokens)")
    ref = f"override: {model}"
    base = {key: _rate(f"{where}.{key}", entry[key]) for key in _RATE_KEYS if key in entry}
    tiers_raw = entry.get("tiers", [])
    if not isinstance(tiers_raw, list):
        raise ConfigError(
            f"{where}.tiers must be a list of tables like {{above = 200000, input = 5, output = 15}}"
        )
    tiers: list[tuple[int, Rates]] = []
    for i, tier in enumerate(tiers_raw):
        at = f"{where}.tiers[{i}]"
        if not isinstance(tier, dict):
            raise ConfigError(f"{at} must be a table like {{above = 200000, input = 5, output = 15}}")
        _check_keys(at, tier, (*_RATE_KEYS, "above"))
        above = tier.get("above")
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise ConfigError(f"{at}.above must be a positive whole number of prompt tokens, got {above!r}")
        if tiers and above <= tiers[-1][0]:
            raise ConfigError(
                f"{where}.tiers must be in increasing order of above ({above} follows {tiers[-1][0]})"
            )
        rates = base | {key: _rate(f"{at}.{key}", tier[key]) for key in _RATE_KEYS if key in tier}
        tiers.append((above, Rates(**rates, ref=tier_ref(ref, above))))
    return Rates(**base, tiers=tuple(tiers), ref=ref)


def _check_keys(where: str, table: dict, allowed: tuple[str, ...]) -> None:
    if unknown := set(table) - set(allowed):
        raise ConfigError(
            f"{where}: unknown keys {', '.join(sorted(unknown))} (allowed: {', '.join(allowed)})"
        )


def _rate(where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{where} must be a non-negative number (USD per million tokens), got {value!r}")
    return Decimal(str(value))


def _parse_stream_usage(table: Any) -> dict[str, bool]:
    if not isinstance(table, dict) or not all(isinstance(v, bool) for v in table.values()):
        raise ConfigError("stream_usage must be a table of provider = true|false, e.g. openai = false")
    return dict(table)


#: The characters of an HTTP header name (RFC 9110 token).
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BUDGET_KEYS = (
    "limit_usd",
    "period",
    "action",
    "alerts",
    "app",
    "user",
    "properties",
    "per",
    "downgrade_to",
    "webhook",
)


def _parse_budgets(table: Any) -> tuple[BudgetSpec, ...]:
    """The ``[budgets."NAME"]`` tables, or a ConfigError naming the bad entry.

    A budget that silently did nothing (a typo in a key, a limit of "5") would let spend
    run past what the user set, so every key is checked."""
    if not isinstance(table, dict):
        raise ConfigError('budgets must be a table of [budgets."NAME"] tables')
    return tuple(_parse_budget(name, entry) for name, entry in table.items())


def _parse_budget(name: str, entry: Any) -> BudgetSpec:
    where = f'budgets."{name}"'
    if not isinstance(entry, dict):
        raise ConfigError(f'{where} must be a table like {{limit_usd = 5, period = "day"}}')
    _check_keys(where, entry, _BUDGET_KEYS)
    limit = entry.get("limit_usd")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit < math.inf:
        raise ConfigError(f"{where}.limit_usd must be a positive number of US dollars, got {limit!r}")
    period = _choice(f"{where}.period", entry.get("period"), BUDGET_PERIODS)
    action = _choice(f"{where}.action", entry.get("action", "alert"), BUDGET_ACTIONS)
    downgrade_to = _downgrade_to(where, entry.get("downgrade_to"), action)
    return BudgetSpec(
        name=name,
        limit_usd=Decimal(str(limit)),
        period=period,
        action=action,
        alerts=_alert_levels(where, entry.get("alerts", DEFAULT_ALERTS)),
        app=_optional_text(f"{where}.app", entry.get("app")),
        user=_optional_text(f"{where}.user", entry.get("user")),
        properties=_property_filter(where, entry.get("properties", {})),
        per=_per(where, entry.get("per")),
        downgrade_to=downgrade_to,
        webhook=_webhook(where, entry.get("webhook")),
    )


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _optional_text(where: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _alert_levels(where: str, value: Any) -> tuple[float, ...]:
    at = f"{where}.alerts"
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{at} must be a list of fractions of the limit like [0.8, 0.9], got {value!r}")
    for level in value:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
            raise ConfigError(
                f"{at}: each alert is a fraction of the limit between 0 and 1 (0.8 = 80%; reaching "
                f"the limit always alerts), got {level!r}"
            )
    return tuple(sorted({float(level) for level in value}))


def _property_filter(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigError(f'{where}.properties must be a table of NAME = "value", e.g. {{team = "search"}}')
    for name in value:
        _property_name(f"{where}.properties", name)
    return {name.lower(): v for name, v in value.items()}


def _per(where: str, value: Any) -> str | None:
    if value is None or value in ("app", "user"):
        return value
    if isinstance(value, str) and value.startswith("property:") and value[len("property:") :]:
        return "property:" + _property_name(f"{where}.per", value[len("property:") :]).lower()
    raise ConfigError(f'{where}.per must be "app", "user" or "property:NAME", got {value!r}')


def _property_name(where: str, name: str) -> str:
    """Properties come from X-Llmtap-Property-NAME headers: a name a header cannot carry
    would never match."""
    if not _HEADER_TOKEN.fullmatch(name):
        raise ConfigError(
            f"{where}: {name!r} is not a property name (the NAME of an X-Llmtap-Property-NAME header)"
        )
    return name


def _downgrade_to(where: str, value: Any, action: str) -> str | dict[str, str] | None:
    at = f"{where}.downgrade_to"
    if action != "downgrade":
        if value is not None:
            raise ConfigError(f'{at} applies only to action = "downgrade", not {action!r}')
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and value and all(isinstance(v, str) and v for v in value.values()):
        return dict(value)
    raise ConfigError(
        f'{at} is required with action = "downgrade": a cheaper model for every call, e.g. "gpt-4o-mini", '
        f'or a table from model to cheaper model, e.g. {{"gpt-4o" = "gpt-4o-mini"}}; got {value!r}'
    )


def _webhook(where: str, value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.webhook must be an http:// or https:// URL, got {value!r}")
    return value


_RECOMMEND_KEYS = ("confidence", "min_agreement", "min_samples", "candidates", "exclude")


def parse_recommend(table: Any) -> RecommendSettings:
    """The ``[recommend]`` table, or a ConfigError naming the bad key."""
    if not isinstance(table, dict):
        raise ConfigError("recommend must be a table, e.g. [recommend] min_agreement = 0.95")
    _check_keys("recommend", table, _RECOMMEND_KEYS)
    defaults = RecommendSettings()
    fractions = {}
    for key in ("confidence", "min_agreement"):
        value = table.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ConfigError(f"recommend.{key} must be a number between 0 and 1 (e.g. 0.95), got {value!r}")
        fractions[key] = float(value)
    samples = table.get("min_samples", defaults.min_samples)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"recommend.min_samples must be a positive whole number, got {samples!r}")
    candidates = table.get("candidates", {})
    if isinstance(candidates, list):
        candidates = {"*": candidates}
    if not isinstance(candidates, dict) or not all(_model_list(v) for v in candidates.values()):
        raise ConfigError(
            "recommend.candidates must be a list of models, or a table from incumbent model to a list, "
            f'e.g. {{"gpt-4o" = ["gpt-4o-mini"]}}; got {candidates!r}'
        )
    exclude = table.get("exclude", [])
    if not _model_list(exclude):
        raise ConfigError(f"recommend.exclude must be a list of model names, got {exclude!r}")
    return RecommendSettings(
        **fractions,
        min_samples=samples,
        candidates={model: tuple(models) for model, models in candidates.items()},
        exclude=tuple(exclude),
    )


def _model_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, str) and m for m in value)
