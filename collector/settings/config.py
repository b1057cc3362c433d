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
    scope = "fleet"             # optional: count the whole fleet's spend (needs [fleet]); default "local"
    alerts = [0.8, 0.9, 0.95]   # fractions of the limit that raise an alert (the default)
    webhook = "https://hooks.example/llmtap"   # optional: alerts are POSTed here as JSON

    [recommend]                 # the routing recommender (`llmtap recommend`, see RecommendSettings)
    confidence = 0.95           # of the Wilson interval on agreement
    min_agreement = 0.95        # its lower bound must reach this to recommend a swap
    max_quality_loss = 0.02     # with scores: the candidate may lose at most this much (lower bound)
    min_samples = 30            # and at least this many shadow samples
    candidates = ["gpt-4o-mini"]   # or per incumbent: {"gpt-4o" = ["gpt-4o-mini"]}; default: the catalogue
    exclude = ["gpt-3.5-turbo"]    # never proposed

    [routing]                   # how the proxy and `llmtap evaluate` apply the rules file
    rules = "rules.yaml"        # default: DATA_DIR/rules.yaml; --rules FILE wins
    judge_model = "gpt-4.1-mini"  # compares free-text shadow answers; unset: they are not compared
    noise_floor_fraction = 0.02 # share of shadowed calls also copied to their own model

    [cache]                     # an exact-match response cache in the proxy (see CacheSettings)
    ttl_s = 3600                # how long an answer is served again
    max_mb = 256                # the most the stored answers take; least recently used go first
    apps = ["checkout"]         # optional filters: apps, models, providers (lists); none: every call
    share_across_keys = false   # true: callers with different API keys share answers

    [fleet]                     # ship every call to one PostgreSQL store (see FleetSettings)
    url = "postgresql://llmtap@db.internal/llmtap"   # password here or in PGPASSWORD
    node = "web-1"              # optional; default: this machine's host name

    [graders."correct"]         # scores answers in [0, 1] off the request path (see collector/grading)
    kind = "python"             # reference | json_schema | regex | judge | python | http
    function = "my_app.grading:score"
    apps = ["checkout"]         # optional: only these apps' calls (and their shadow copies)
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.grading.graders import GraderSpec, GraderTables, graders_from_table
from collector.pricing.rates import Rates, tier_ref
from collector.routing.fallbacks import FallbackTable
from collector.settings.paths import Paths, resolve_data_dir
from collector.settings.validation import (
    HttpUrl,
    Item,
    Names,
    Seconds,
    Table,
    Text,
    explain,
    field_error,
    is_http_url,
    not_as_described,
)

Capture = Literal["full", "redacted", "metadata"]
DEFAULT_ALERTS = (0.8, 0.9, 0.95)


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
        if not is_http_url(url):
            raise ConfigError(f"upstream URL must be http:// or https:// with a host, got {url!r}")
        parts = urlsplit(url)
        assert parts.hostname is not None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


# -- value types ------------------------------------------------------------------------------
# Numbers are strict: pydantic's lax mode would read "5" or true as a number, and a budget
# of "5" that silently did something else would let spend run past what the user set.


def _usd(value: Any) -> Any:
    """A TOML number as an exact Decimal (via its text, so 0.05 stays 0.05)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise not_as_described()
    return Decimal(str(value))


def _file_path(value: Any) -> Any:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise not_as_described()
    return Path(value).expanduser()


#: The characters of an HTTP header name (RFC 9110 token).
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _property_name(name: str) -> str:
    """Properties come from X-Llmtap-Property-NAME headers: a name a header cannot carry
    would never match."""
    if not _HEADER_TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a property name (the NAME of an X-Llmtap-Property-NAME header)")
    return name.lower()


FilePath = Annotated[Path, BeforeValidator(_file_path), Field(description="a file path")]
Rate = Annotated[
    Decimal,
    BeforeValidator(_usd),
    Field(ge=0, description="a non-negative number (USD per million tokens)"),
]
Usd = Annotated[Decimal, BeforeValidator(_usd), Field(gt=0, description="a positive number of US dollars")]
Fraction = Annotated[float, Strict(), Field(gt=0, lt=1, description="a number between 0 and 1 (e.g. 0.95)")]


# -- [prices."MODEL"] ---------------------------------------------------------------------------


class PriceTier(Table):
    """One of ``tiers``: the rates for prompts above ``above`` tokens; keys left out keep
    the base price."""

    above: Annotated[int, Strict(), Field(gt=0, description="a positive whole number of prompt tokens")]
    input: Rate | None = None
    output: Rate | None = None
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    reasoning: Rate | None = None


class ModelPrices(Table):
    """A ``[prices."MODEL"]`` table. Users price models the catalogue lacks (fine-tunes,
    self-hosted models, negotiated rates), so a mistake here would silently misstate costs:
    every key is declared."""

    input: Rate
    output: Rate
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    reasoning: Rate | None = None
    tiers: tuple[PriceTier, ...] = Field(
        default=(), description="a list of tables like {above = 200000, input = 5, output = 15}"
    )

    @field_validator("tiers")
    @classmethod
    def _increasing(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        for lower, upper in pairwise(tiers):
            if upper.above <= lower.above:
                raise ValueError(f"not in increasing order of above ({upper.above} follows {lower.above})")
        return tiers

    def rates(self, model: str) -> Rates:
        ref = f"override: {model}"
        base = self.model_dump(exclude={"tiers"}, exclude_none=True)
        tiers = tuple(
            (
                tier.above,
                Rates(
                    **base | tier.model_dump(exclude={"above"}, exclude_none=True),
                    ref=tier_ref(ref, tier.above),
                ),
            )
            for tier in self.tiers
        )
        return Rates(**base, tiers=tiers, ref=ref)


# -- [budgets."NAME"] ---------------------------------------------------------------------------


def _alert_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sorted(set(levels)))


class BudgetTable(Table):
    """A ``[budgets."NAME"]`` table: a USD limit on the spend of some calls per UTC period.

    The filters (``app``, ``user``, ``properties``) choose the calls it covers; ``per``
    (None, "app", "user" or "property:NAME") gives each distinct value its own total of
    ``limit_usd``. ``downgrade_to`` is one model for every call, or a table from the
    requested model to its cheaper replacement."""

    limit_usd: Usd
    period: Literal["hour", "day", "month"]
    action: Literal["alert", "downgrade", "block"] = "alert"
    alerts: Annotated[
        tuple[Annotated[float, Strict(), Field(gt=0, lt=1)], ...], AfterValidator(_alert_levels)
    ] = Field(
        default=DEFAULT_ALERTS,
        description="a list of fractions of the limit like [0.8, 0.9]; each alert is a fraction of the "
        "limit between 0 and 1 (0.8 = 80%; reaching the limit always alerts)",
    )
    app: Text | None = None
    user: Text | None = None
    properties: dict[str, Item] = Field(
        default_factory=dict, description='a table of NAME = "value", e.g. {team = "search"}'
    )
    per: str | None = Field(
        default=None, pattern=r"^(app|user|property:.+)$", description='"app", "user" or "property:NAME"'
    )
    downgrade_to: Item | Annotated[dict[str, Item], Field(min_length=1)] | None = Field(
        default=None,
        description='a cheaper model for every call, e.g. "gpt-4o-mini", or a table from model to '
        'cheaper model, e.g. {"gpt-4o" = "gpt-4o-mini"}',
    )
    webhook: HttpUrl | None = None
    #: "fleet": the totals are the whole fleet's spend, from the fleet store (see
    #: collector/budgets/fleet.py); "local": this sidecar's own calls.
    scope: Literal["local", "fleet"] = "local"

    @field_validator("properties")
    @classmethod
    def _property_names(cls, properties: dict[str, str]) -> dict[str, str]:
        return {_property_name(name): value for name, value in properties.items()}

    @field_validator("per")
    @classmethod
    def _per_property(cls, per: str | None) -> str | None:
        if per is not None and per.startswith("property:"):
            return "property:" + _property_name(per.removeprefix("property:"))
        return per

    @model_validator(mode="after")
    def _downgrade_needs_a_model(self) -> BudgetTable:
        if self.action == "downgrade" and self.downgrade_to is None:
            expected = type(self).model_fields["downgrade_to"].description
            raise field_error("downgrade_to", f'is required with action = "downgrade": {expected}')
        if self.action != "downgrade" and self.downgrade_to is not None:
            raise field_error("downgrade_to", f'applies only to action = "downgrade", not {self.action!r}')
        return self


class BudgetSpec(BudgetTable):
    """One budget: its ``[budgets."NAME"]`` table and its NAME."""

    name: str


# -- [recommend], [routing] ---------------------------------------------------------------------


def _every_incumbent(candidates: Any) -> Any:
    """A plain list of candidates applies to every incumbent (the key ``"*"``)."""
    return {"*": candidates} if isinstance(candidates, list | tuple) else candidates


class RecommendSettings(Table):
    """The ``[recommend]`` table: how much shadow evidence a model swap needs, and which
    models may be proposed. Scores, where a route has them, decide on ``max_quality_loss``
    at ``confidence`` (see analytics/recommender/quality.py); agreement decides elsewhere.

    ``candidates`` maps an incumbent model to the models to consider for it; the key
    ``"*"`` (a plain list in the file) applies to every incumbent. Empty: every cheaper
    model of the catalogue (analytics/recommender/models.toml) behind the same provider."""

    confidence: Fraction = 0.95
    min_agreement: Fraction = 0.95
    #: Where answers are scored (graders, feedback): how much lower the candidate's mean score
    #: may be than the incumbent's (0.02: two points on a 0-1 score).
    max_quality_loss: Fraction = 0.02
    min_samples: Annotated[int, Strict(), Field(ge=1, description="a positive whole number")] = 30
    candidates: Annotated[dict[str, tuple[Item, ...]], BeforeValidator(_every_incumbent)] = Field(
        default_factory=dict,
        description="a list of models, or a table from incumbent model to a list, "
        'e.g. {"gpt-4o" = ["gpt-4o-mini"]}',
    )
    exclude: tuple[Item, ...] = Field(default=(), description="a list of model names")


class RoutingSpec(Table):
    """The ``[routing]`` table: where the rules file is (None: DATA_DIR/rules.yaml), the model
    that judges free-text shadow answers, and the share of shadowed calls also copied to
    their own model to measure the incumbent's disagreement with itself."""

    rules: FilePath | None = None
    judge_model: Text | None = None
    noise_floor_fraction: Annotated[
        float, Strict(), Field(ge=0, le=1, description="a number from 0 to 1")
    ] = 0.0


# -- [cache] ------------------------------------------------------------------------------------

Megabytes = Annotated[
    float, Strict(), Field(gt=0, allow_inf_nan=False, description="a positive number of megabytes (MB)")
]


class CacheSettings(Table):
    """The ``[cache]`` table: an exact-match response cache in the proxy
    (:mod:`collector.proxy.addons.cache`). No table, no cache: its stage is not even installed.

    The filters choose the calls it serves (all of them when none is set): the apps
    (``X-Llmtap-App`` or the config's ``app``), the models the clients ask for, the providers.
    ``share_across_keys`` lets callers with different API keys share answers (by default each
    key has its own)."""

    ttl_s: Seconds = 3600.0
    max_mb: Megabytes = 256.0
    apps: Names | None = Field(default=None, description='a list of app names, e.g. ["checkout"]')
    models: Names | None = Field(default=None, description='a list of model names, e.g. ["gpt-4o"]')
    providers: Names | None = Field(default=None, description='a list of provider names, e.g. ["openai"]')
    share_across_keys: StrictBool = False

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """A misspelt provider would silently never be cached. (Read here, not at import: the
        settings load for every command, the providers only for this table.)"""
        if names is None:
            return None
        from collector.providers import builtin_providers

        known = sorted(p.name for p in builtin_providers())
        if unknown := [name for name in names if name not in known]:
            raise ValueError(f"unknown providers {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
        return names

    def applies(self, app: str | None, model: str | None, provider: str) -> bool:
        """Whether a call of ``app`` asking ``provider`` for ``model`` may be cached."""
        return (
            (self.apps is None or app in self.apps)
            and (self.models is None or model in self.models)
            and (self.providers is None or provider in self.providers)
        )


#: Why ``[cache]`` and a capture mode other than ``full`` are refused together.
CACHE_CAPTURE_CONFLICT = (
    "cannot be used with capture = {mode!r}: the response cache keeps whole answers on disk "
    "(DATA_DIR/cache.sqlite3) to replay them, which that mode promises not to do; "
    'use capture = "full" or remove [cache]'
)


# -- [fleet] ------------------------------------------------------------------------------------

#: The URL schemes of the fleet store (libpq's); the scheme says the engine.
FLEET_SCHEMES = ("postgresql", "postgres")
#: What a URL query parameter named so holds: never shown.
_SECRET_PARAMS = ("password", "sslpassword")


def redacted_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) shown as
    ``***``: the only form of a fleet URL that llmtap logs, stores or puts in a message."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            name, colon, _ = user.partition(":")
            netloc = f"{name}{':***' if colon else ''}@{host}"
        query = urlencode(
            [
                (k, "***" if k in _SECRET_PARAMS else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(an unreadable URL)"


def _fleet_url(value: Any) -> Any:
    """A postgresql:// URL with a host. The message never repeats the value: it may hold the
    password."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError("must be a postgresql:// URL (a string)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("must be a postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL") from None
    if parts.scheme not in FLEET_SCHEMES or not host:
        raise ValueError(
            "must be a postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL "
            f"(scheme {parts.scheme or 'missing'!r}{'' if host else ', no host'})"
        )
    return value


class FleetSettings(Table):
    """The ``[fleet]`` table: ship every call, span and score this sidecar stores to one
    PostgreSQL database shared by the fleet (:mod:`collector.fleet`), and let ``scope =
    "fleet"`` budgets count the whole fleet's spend.

    ``url`` is a libpq URL; its password may be left out and given in ``PGPASSWORD`` (or
    ``~/.pgpass``). It is a secret string: printing the settings shows ``**********``, and
    llmtap only ever logs :meth:`redacted`. ``node`` names this sidecar in the fleet store
    (default: the host name). ``budget_refresh_s``: how often fleet budgets re-read the fleet's
    totals."""

    url: Annotated[SecretStr, BeforeValidator(_fleet_url)]
    node: Text = Field(default_factory=socket.gethostname)
    budget_refresh_s: Annotated[
        float, Strict(), Field(ge=0.1, le=3600, description="a number of seconds from 0.1 to 3600")
    ] = 5.0

    def redacted(self) -> str:
        return redacted_url(self.url.get_secret_value())


# -- the file and the settings ------------------------------------------------------------------


class ConfigFile(Table):
    """The config file as written: see the module's docstring."""

    capture: Capture = "full"
    app: Text | None = None
    upstreams: dict[str, HttpUrl] = Field(default_factory=dict, description="a table of HOST = URL")
    hosts: dict[str, Item] = Field(
        default_factory=dict,
        description='a table of HOST = API family, e.g. "llm.internal.example" = "openai"',
    )
    otlp_endpoint: HttpUrl | None = None
    data_dir: Text | None = None
    prices: dict[
        str,
        Annotated[
            ModelPrices, Field(description="a table with input and output prices (USD per million tokens)")
        ],
    ] = Field(default_factory=dict, description='a table of [prices."MODEL"] tables')
    stream_usage: dict[str, StrictBool] = Field(
        default_factory=dict, description="a table of provider = true|false, e.g. openai = false"
    )
    budgets: dict[
        str, Annotated[BudgetTable, Field(description='a table like {limit_usd = 5, period = "day"}')]
    ] = Field(default_factory=dict, description='a table of [budgets."NAME"] tables')
    recommend: RecommendSettings = Field(
        default=RecommendSettings(), description="a table, e.g. [recommend] min_agreement = 0.95"
    )
    routing: RoutingSpec = Field(
        default=RoutingSpec(),
        description='a table like {rules = "rules.yaml", judge_model = "gpt-4.1-mini"}',
    )
    graders: GraderTables = Field(default_factory=dict)
    fallbacks: dict[
        str,
        Annotated[
            FallbackTable,
            Field(description='a table like {match = {model = "gpt-4o"}, to = ["gpt-4o-mini"]}'),
        ],
    ] = Field(default_factory=dict, description='a table of [fallbacks."NAME"] tables')
    cache: CacheSettings | None = Field(default=None, description="a table like {ttl_s = 3600, max_mb = 256}")
    # No description: an error under [fleet] would then quote the whole table, URL included.
    fleet: FleetSettings | None = None

    @model_validator(mode="after")
    def _cache_keeps_answers(self) -> ConfigFile:
        if self.cache is not None and self.capture != "full":
            raise field_error("cache", CACHE_CAPTURE_CONFLICT.format(mode=self.capture))
        return self

    @model_validator(mode="after")
    def _fleet_budgets_need_a_fleet(self) -> ConfigFile:
        if self.fleet is None:
            for name, budget in self.budgets.items():
                if budget.scope == "fleet":
                    raise field_error(
                        f'budgets."{name}".scope',
                        '= "fleet" needs a [fleet] table with the url of the fleet store',
                    )
        return self


class Settings(Table):
    """Everything llmtap runs with: the config file's values, then the command line's."""

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535, description="a port number from 0 to 65535")
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    extra_hosts: dict[str, str] = Field(default_factory=dict)
    capture: Capture = "full"
    default_app: str | None = None
    #: The OTLP/HTTP URL spans are POSTed to (see :func:`otlp_url`); None: no export.
    otlp_endpoint: str | None = None
    #: The OTLP/HTTP URL metrics are POSTed to (see :func:`otlp_url`); None: no export.
    otlp_metrics_endpoint: str | None = None
    #: Seconds between two metrics exports (see :func:`otlp_metrics_interval`).
    otlp_metrics_interval_s: float = 60.0
    #: Per-model price overrides from the config's ``[prices."MODEL"]`` tables.
    prices: dict[str, Rates] = Field(default_factory=dict)
    #: Per provider: add ``stream_options.include_usage`` to streams that lack it (the
    #: provider module's default when absent).
    stream_usage: dict[str, bool] = Field(default_factory=dict)
    #: Spend limits from the config's ``[budgets."NAME"]`` tables, in file order.
    budgets: tuple[BudgetSpec, ...] = ()
    #: Graders from the config's ``[graders."NAME"]`` tables, in file order.
    graders: tuple[GraderSpec, ...] = ()
    #: Fallback chains from the config's ``[fallbacks."NAME"]`` tables, in file order.
    fallbacks: dict[str, FallbackTable] = Field(default_factory=dict)
    recommend: RecommendSettings = RecommendSettings()
    routing: RoutingSpec = RoutingSpec()
    #: The response cache from the config's ``[cache]`` table; None: no cache.
    cache: CacheSettings | None = None
    #: Serve Prometheus metrics on 127.0.0.1 at this port (``--metrics-port``); None: off.
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="a port number from 0 to 65535"
    )
    #: Where to ship calls, from the config's ``[fleet]`` table; None: this sidecar is an island.
    fleet: FleetSettings | None = None

    @property
    def paths(self) -> Paths:
        return Paths(self.data_dir, self.routing.rules)


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
    metrics_port: int | None = None,
) -> Settings:
    """Merge defaults, the config file and command-line flags (flags win)."""
    file = read_config(Path(config_file).expanduser()) if config_file else ConfigFile()
    upstreams = {host.lower(): Upstream.parse(url) for host, url in file.upstreams.items()}
    upstreams.update(parse_upstream_flag(flag) for flag in upstream_flags or ())
    routing = file.routing
    if rules_file:
        routing = routing.model_copy(update={"rules": Path(rules_file).expanduser()})
    values: dict[str, Any] = {
        "data_dir": resolve_data_dir(data_dir or file.data_dir),
        "listen_host": listen_host or "127.0.0.1",
        "listen_port": 8080 if listen_port is None else listen_port,
        "upstreams": upstreams,
        "extra_hosts": {host.lower(): family for host, family in file.hosts.items()},
        "capture": file.capture,
        "default_app": file.app,
        "otlp_endpoint": otlp_url("traces", file.otlp_endpoint, os.environ),
        "otlp_metrics_endpoint": otlp_url("metrics", file.otlp_endpoint, os.environ),
        "otlp_metrics_interval_s": otlp_metrics_interval(os.environ),
        "prices": {model: table.rates(model) for model, table in file.prices.items()},
        "stream_usage": file.stream_usage,
        "budgets": tuple(BudgetSpec(name=name, **dict(table)) for name, table in file.budgets.items()),
        "graders": graders_from_table(file.graders),
        "fallbacks": file.fallbacks,
        "recommend": file.recommend,
        "routing": routing,
        "cache": file.cache,
        "metrics_port": metrics_port,
        "fleet": file.fleet,
    }
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(
            explain(exc, source="command line", root=Settings, document=values, noun="settings")
        ) from None


def read_config(path: Path) -> ConfigFile:
    """The config file at ``path``, or a ConfigError naming the file, the key and what it takes."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return ConfigFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(
            explain(exc, source=str(path), root=ConfigFile, document=document, noun="config")
        ) from None


def otlp_url(
    signal: Literal["traces", "metrics"], configured: str | None, environ: Mapping[str, str]
) -> str | None:
    """Where ``signal`` (spans, or metrics) goes: the config's ``otlp_endpoint``, else the
    OpenTelemetry variables in the precedence of the OTLP exporter spec.

    ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`` (that signal only) wins over
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (every signal) and is the full URL, used as is; the shared
    one, like ``otlp_endpoint``, is a base to which ``/v1/<signal>`` is added (a base that ends
    in a signal's path has it replaced). An empty variable is unset, as the spec says;
    ``OTEL_METRICS_EXPORTER=none`` turns metrics off, as it does in the SDKs."""
    if signal == "metrics" and environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
        return None
    if configured:
        return _with_path(configured, signal)
    if own := environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip():
        return own
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return _with_path(base, signal)
    return None


def _with_path(base: str, signal: str) -> str:
    base = base.rstrip("/")
    for path in ("/v1/traces", "/v1/metrics"):
        base = base.removesuffix(path)
    return f"{base}/v1/{signal}"


def otlp_metrics_interval(environ: Mapping[str, str]) -> float:
    """Seconds between two OTLP metrics exports: ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds,
    as the SDKs read it), 60 s when unset."""
    value = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not value:
        return 60.0
    try:
        interval_ms = float(value)
    except ValueError:
        interval_ms = float("nan")
    if not 100 <= interval_ms <= 86_400_000:
        raise ConfigError(
            "OTEL_METRIC_EXPORT_INTERVAL takes the milliseconds between two metrics exports,"
            f" from 100 to 86400000; got {value[:40]!r}"
        )
    return interval_ms / 1000
