"""Provider registry: every module in this package that defines ``PROVIDER`` is a provider.

Adding a provider means adding a module here (and a corpus fixture for its tests);
nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Mapping

from collector.providers.base import Endpoint, Provider, RequestFacts, ResponseFacts, Usage

__all__ = [
    "Endpoint",
    "Provider",
    "ProviderRegistry",
    "RequestFacts",
    "ResponseFacts",
    "Usage",
    "builtin_providers",
]


def builtin_providers() -> list[Provider]:
    """Every provider defined by a module of this package, in module-name order."""
    found: list[Provider] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if (provider := getattr(module, "PROVIDER", None)) is not None:
            found.append(provider)
    return found


class ProviderRegistry:
    """Finds the provider for a host, from the built-in list plus user-configured hosts."""

    def __init__(
        self,
        providers: Iterable[Provider] | None = None,
        extra_hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.providers = list(providers if providers is not None else builtin_providers())
        by_name = {p.name: p for p in self.providers}
        pairs = [(h, p) for p in self.providers for h in p.hosts]
        for host, name in (extra_hosts or {}).items():
            if name not in by_name:
                known = ", ".join(sorted(by_name))
                raise ValueError(f"host {host!r} maps to unknown provider {name!r} (known: {known})")
            pairs.append((host, by_name[name]))
        self._exact: dict[str, Provider] = {}
        self._wildcards: list[tuple[re.Pattern[str], Provider]] = []
        for host, provider in pairs:
            host = host.lower()
            if "*" in host:
                self._wildcards.append((re.compile(_glob_regex(host) + "$"), provider))
            else:
                self._exact[host] = provider

    def for_host(self, host: str) -> Provider | None:
        host = host.lower()
        if (provider := self._exact.get(host)) is not None:
            return provider
        for pattern, provider in self._wildcards:
            if pattern.match(host):
                return provider
        return None

    def match(self, host: str, path: str, method: str = "POST") -> Endpoint | None:
        """The provider and api for a request; a POST to an unrecognised path on a known
        LLM host is still a call (api "unknown"), other methods there are not."""
        provider = self.for_host(host)
        if provider is None:
            return None
        api = provider.api_for(path)
        if api is None:
            return Endpoint(provider, "unknown") if method == "POST" else None
        return Endpoint(provider, api)

    def host_patterns(self) -> list[str]:
        """Regular expressions for mitmproxy's ``allow_hosts``: only these are intercepted."""
        exact = [rf"^{re.escape(h)}(:\d+)?$" for h in sorted(self._exact)]
        wild = [p.pattern.removesuffix("$") + r"(:\d+)?$" for p, _ in self._wildcards]
        return exact + wild


def _glob_regex(host: str) -> str:
    """``*`` matches one or more characters of a host name (never a port)."""
    return "^" + "[^:/]+".join(re.escape(part) for part in host.split("*"))
