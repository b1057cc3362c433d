"""Where the routing rules are, for the proxy that follows them and the commands that write
them: one answer, so that what ``llmtap recommend --write-rules`` writes is what the proxies
read.

* A rules file named by ``--rules`` or ``[routing] rules``: that file, always.
* Else, across a fleet (``[fleet] url`` in the config, or a command reading the fleet store
  with ``--store postgresql://...``): the fleet store's rules document
  (:mod:`collector.fleet.rules`). A proxy follows the sidecar's ``DATA_DIR/rules.yaml`` until
  the fleet holds a document.
* Else ``DATA_DIR/rules.yaml``.
"""

from __future__ import annotations

from collector.fleet.names import is_fleet_url
from collector.fleet.rules import FleetRulesFeed, FleetRulesTable
from collector.routing.rules import RulesFile, RulesSource, RulesTarget
from collector.settings.config import Settings

__all__ = ["proxy_rules", "rules_target"]


def _fleet_url(settings: Settings, store: str | None) -> str | None:
    """The fleet store the rules live in, if they live in one."""
    if settings.paths.rules_file is not None:
        return None
    if store is not None and is_fleet_url(store):
        return store
    return settings.fleet.url.get_secret_value() if settings.fleet is not None else None


def proxy_rules(settings: Settings) -> RulesSource:
    """The rules a proxy with ``settings`` follows (polled, for the fleet's)."""
    file = RulesFile(settings.paths.rules)
    url = _fleet_url(settings, None)
    return FleetRulesFeed(url, file) if url is not None else file


def rules_target(settings: Settings, store: str | None = None) -> RulesTarget:
    """Where a command with ``settings`` reading ``store`` reads and writes the rules."""
    url = _fleet_url(settings, store)
    return FleetRulesTable(url) if url is not None else RulesFile(settings.paths.rules)
