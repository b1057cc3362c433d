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
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.pricing import Rates, tier_ref

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
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def ca_bundle(self) -> Path:
        return self.data_dir / "ca-bundle.pem"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    extra_hosts: dict[str, str] = field(default_factory=dict)
    capture: str = "full"
    default_app: str | None = None
    otlp_endpoint: str | None = None
    #: Per-model price overrides from the config's ``[prices."MODEL"]`` tables.
    prices: dict[str, Rates] = field(default_factory=dict)
    #: Per provider: add ``stream_options.include_usage`` to streams that lack it (the
    #: provider module's default when absent).
    stream_usage: dict[str, bool] = field(default_factory=dict)

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

    known = {"capture", "app", "upstreams", "hosts", "otlp_endpoint", "data_dir", "prices", "stream_usage"}
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
        otlp_endpoint=file_values.get("otlp_endpoint") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        prices=_parse_prices(file_values.get("prices", {})),
        stream_usage=_parse_stream_usage(file_values.get("stream_usage", {})),
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
