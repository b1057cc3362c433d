"""Hosts that are not LLM APIs pass through the proxy untouched; LLM hosts are intercepted.

A local TLS echo server with its own self-signed certificate stands in for any other
HTTPS site. A client opens an HTTP CONNECT tunnel to it through the real ``llmtap proxy``
and must see the origin's own certificate, byte for byte, and get its bytes echoed back
unchanged; nothing is recorded. The contrast: a tunnel to api.openai.com is terminated by
llmtap with a certificate issued by llmtap's CA, and the call is recorded.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.upstream import Reply

ORIGIN_NAME = "origin.passthrough.test"


def self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    """A self-signed server certificate for ORIGIN_NAME and 127.0.0.1: (cert PEM, key PEM, DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ORIGIN_NAME)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(ORIGIN_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "origin-cert.pem", tmp / "origin-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Origin:
    port: int
    cert_file: Path
    cert_der: bytes
    received: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """A TLS echo server on 127.0.0.1 with its own self-signed certificate."""
    cert_file, key_file, der = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    server = Origin(listener.getsockname()[1], cert_file, der)
    ctx.sni_callback = lambda sslobj, name, _ctx: server.sni.append(name)

    def echo(conn: socket.socket) -> None:
        got = b""
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(65536):
                    got += data
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        server.received.append(got)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server
    listener.close()


def connect_tunnel(proxy_port: int, host: str, port: int) -> socket.socket:
    """A socket through the proxy's HTTP CONNECT tunnel to host:port."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, f"proxy closed the CONNECT; got {head!r}"
        head += data
    assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
    assert head.endswith(b"\r\n\r\n"), head
    return sock


def read_http_response(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = tls.recv(65536)
        assert chunk, body
        body += chunk
    return int(lines[0].split()[1]), body


def chat_request(host: str, body: bytes) -> bytes:
    """An OpenAI-style chat request, with a metadata header llmtap would strip if it intercepted."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        b"Host: " + host.encode() + b"\r\n"
        b"Authorization: Bearer sk-test-passthrough\r\n"
        b"X-Llmtap-App: passthrough-check\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT_REPLY = {
    "id": "chatcmpl-intercepted",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


def intercepted_call(proxy, ca_file: Path) -> tuple[bytes, int, bytes]:
    """A chat call to api.openai.com over a raw CONNECT tunnel: (peer cert DER, status, body)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        connect_tunnel(proxy.port, "api.openai.com", 443) as sock,
        ctx.wrap_socket(sock, server_hostname="api.openai.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(chat_request("api.openai.com", CHAT_BODY))
        status, body = read_http_response(tls)
    return der, status, body


def test_non_llm_host_passes_through_untouched(proxy, upstream, origin):
    # The client trusts only the origin's own certificate: an intercepted tunnel cannot verify.
    ctx = ssl.create_default_context(cafile=str(origin.cert_file))
    # Bytes that would look like an LLM call (and lose their X-Llmtap header) if llmtap decrypted them.
    payload = chat_request("api.openai.com", CHAT_BODY)
    with (
        connect_tunnel(proxy.port, "127.0.0.1", origin.port) as sock,
        ctx.wrap_socket(sock, server_hostname=ORIGIN_NAME) as tls,
    ):
        assert tls.getpeercert(binary_form=True) == origin.cert_der
        tls.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            data = tls.recv(65536)
            assert data, echoed
            echoed += data
        assert echoed == payload

    # The origin did the TLS handshake with the client itself (it saw the client's SNI)
    # and received exactly what the client sent.
    assert origin.sni == [ORIGIN_NAME]
    deadline = time.monotonic() + 5
    while not origin.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert origin.received == [payload]

    # Nothing was recorded for it: a following intercepted call is the only row.
    upstream.routes["/v1/chat/completions"] = Reply.json(CHAT_REPLY)
    _, status, _ = intercepted_call(proxy, proxy.data_dir / "ca-bundle.pem")
    assert status == 200
    rows = proxy.rows(wait_for=1)
    assert [(r["host"], r["response_model"]) for r in rows] == [("api.openai.com", "gpt-4o-mini-2024-07-18")]
    assert len(upstream.received) == 1


def test_llm_host_is_intercepted_with_llmtap_certificate(proxy, upstream):
    upstream.routes["/v1/chat/completions"] = Reply.json(CHAT_REPLY)
    ca_file = proxy.data_dir / "ca" / "mitmproxy-ca-cert.pem"
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())

    # Trusting llmtap's CA alone is enough to verify api.openai.com through the proxy.
    der, status, body = intercepted_call(proxy, ca_file)
    assert status == 200 and json.loads(body)["id"] == "chatcmpl-intercepted"

    leaf = x509.load_der_x509_certificate(der)
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)  # raises if llmtap's CA did not sign it
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.openai.com" in san.get_values_for_type(x509.DNSName)

    # The CA in the client bundle is the one that issued it.
    assert ca_file.read_text().strip() in (proxy.data_dir / "ca-bundle.pem").read_text()

    # Intercepted means recorded, and the metadata header was taken off before the upstream.
    (row,) = proxy.rows(wait_for=1)
    assert (row["provider"], row["api"], row["host"], row["app"]) == (
        "openai",
        "chat",
        "api.openai.com",
        "passthrough-check",
    )
    assert (row["input_tokens"], row["output_tokens"]) == (8, 1)
    (received,) = upstream.received
    assert "x-llmtap-app" not in received.headers
    assert received.headers["host"] == "api.openai.com"
