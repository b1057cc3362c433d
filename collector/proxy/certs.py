"""llmtap's certificate authority and the bundle clients trust.

mitmproxy creates the CA in ``DATA_DIR/ca`` on first start. llmtap then writes
``DATA_DIR/ca-bundle.pem``: the system's root certificates followed by llmtap's CA
certificate (never its key), so one file lets clients verify both intercepted LLM
hosts and every host passed through untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import certifi
from mitmproxy.certs import CertStore

from collector.settings.paths import Paths
from collector.trust.private import private_dir, write_private

SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSD
)
CA_BASENAME = "mitmproxy"  # mitmproxy's file names inside the CA directory


def system_roots() -> Path:
    for candidate in SYSTEM_BUNDLES:
        if os.path.exists(candidate):
            return Path(candidate)
    return Path(certifi.where())


def ensure_ca(paths: Paths) -> Path:
    """Create the CA if needed, lock its key down, and (re)write the client bundle."""
    private_dir(paths.ca_dir)
    CertStore.from_store(paths.ca_dir, CA_BASENAME, 2048)
    for key_file in paths.ca_dir.glob(f"{CA_BASENAME}-ca*.p12"):
        os.chmod(key_file, 0o600)
    os.chmod(paths.ca_dir / f"{CA_BASENAME}-ca.pem", 0o600)  # holds the private key
    ca_cert = (paths.ca_dir / f"{CA_BASENAME}-ca-cert.pem").read_text()
    bundle = system_roots().read_text().rstrip("\n") + "\n" + ca_cert
    write_private(paths.ca_bundle, bundle)
    return paths.ca_bundle


def client_env(proxy_url: str, bundle: Path) -> dict[str, str]:
    """The environment the contract lists for `llmtap run` and `llmtap env`."""
    env = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = env[name.lower()] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        env[name] = str(bundle)
    env["NODE_USE_ENV_PROXY"] = "1"
    return env
