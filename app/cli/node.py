"""Node's built-in fetch goes through HTTPS_PROXY only from some versions: which, and a
warning when the node an app runs on is older (its calls would silently go unrecorded)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

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


def node_of(cmd: list[str]) -> str | None:
    """The node that ``cmd`` runs on: itself when it is a node binary, the PATH's for npm,
    npx, yarn, pnpm and tsx; None for other commands."""
    name = os.path.basename(cmd[0])
    if name in ("node", "nodejs"):
        return cmd[0]
    return "node" if name in NODE_TOOLS else None
