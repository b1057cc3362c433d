"""Start the dashboard: ``streamlit run`` on :mod:`app.ui.dashboard`, headless, in a child
process, with the data directory, config and store passed in its environment.

Shared by ``llmtap ui`` and anything else that opens the dashboard on a data directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from analytics.engines import STORE_ENV

DASHBOARD = Path(__file__).resolve().parent / "dashboard.py"
#: The environment variable that carries the config file to the app (read by :mod:`app.ui.widgets`).
CONFIG_ENV = "LLMTAP_CONFIG"


def check_port(host: str, port: int) -> None:
    """OSError with a clear message when ``host:port`` cannot be listened on (busy)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the dashboard's server does: else the TIME_WAIT connections a just-stopped
        # dashboard leaves for a minute read as busy, while a listening server still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"cannot listen on {host}:{port} ({exc.strerror}); is another dashboard running? "
                "pick another port with --port"
            ) from None


def command(host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no file watcher."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(DASHBOARD),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
    ]


def serve(
    data_dir: Path,
    config: Path | None,
    host: str = "127.0.0.1",
    port: int = 8501,
    store: str | None = None,
    store_label: str | None = None,
) -> int:
    """Run the dashboard in the foreground until it exits, Ctrl-C or SIGTERM; its exit code.

    ``store`` (a fleet store's URL) is read instead of ``data_dir``'s store; it reaches the app
    in ``$LLMTAP_STORE``, the only place its password goes (``store_label`` is what is printed)."""
    check_port(host, port)
    env = {**os.environ, "LLMTAP_DATA_DIR": str(data_dir)}
    for name in (CONFIG_ENV, STORE_ENV):
        env.pop(name, None)
    if config is not None:
        env[CONFIG_ENV] = str(config.expanduser().resolve())
    if store is not None:
        env[STORE_ENV] = store
    shown = store_label or store or data_dir
    print(f"llmtap dashboard on http://{host}:{port} (store: {shown}); Ctrl-C stops it", flush=True)
    child = subprocess.Popen(command(host, port), env=env, stdout=subprocess.DEVNULL)
    # A SIGTERM (a service manager, a test) stops the dashboard too instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 0
