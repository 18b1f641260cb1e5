"""Callbacks that cannot be turned against us (issue 13, part 4).

Reproduced before: a callback_url on 127.0.0.1 was accepted and called; a redirect to
another internal address was followed, the signature going with it; a 400 MB answer
raised a worker's memory from 55 MB to 861 MB. Every receiver here is a real local HTTP
server, so the specs that expect a call allow private addresses, as a test must.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings

import channels
from blog import signing
from blog.models import Post
from eventbus.integrations import outbound
from eventbus.models import EventRecord
from eventbus.testing import run_events
from tests.support import Listener, wait_until
from tests.test_api import NEW_POST, call

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]


def ok(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.end_headers()


class Receiver:
    """A real HTTP server on 127.0.0.1: counts the connections it accepts, records the
    POSTs it reads, answers each with `answer`, and notes when an answer ended early."""

    def __init__(
        self, answer: Answer = ok, path: str = "/hooks/done", tls: ssl.SSLContext | None = None
    ) -> None:
        self.connections = 0
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.cut_off: list[tuple[float, float, int]] = []  # (started, cut, bytes sent)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body))
                started = time.monotonic()
                self.sent = 0
                try:
                    answer(self)
                except OSError:  # the caller hung up mid-answer
                    receiver.cut_off.append((started, time.monotonic(), self.sent))

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                receiver.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        if tls is not None:  # https, under the name the certificate is for
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = self.url.replace("http://127.0.0.1", "https://localhost")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(answer: Answer = ok) -> Receiver:
        started.append(Receiver(answer))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def redirect_to(url: str) -> Answer:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", url)
        handler.end_headers()

    return answer


def stream(megabytes: int) -> Answer:
    """A 200 whose body is `megabytes` MiB, written as fast as the caller reads."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(megabytes << 20))
        handler.end_headers()
        chunk = b"x" * (1 << 20)
        for _ in range(megabytes):
            handler.wfile.write(chunk)
            handler.sent += len(chunk)  # type: ignore[attr-defined]

    return answer


def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
    """A 200 whose body comes one byte every 0.1 s, without end: each read gets a byte
    well within any per-read timeout."""
    handler.send_response(200)
    handler.end_headers()
    while True:
        handler.wfile.write(b".")
        handler.wfile.flush()
        handler.sent += 1  # type: ignore[attr-defined]
        time.sleep(0.1)


def publish_callback(url: str) -> int:
    """The event the post handlers publish when processing ends, for run_events."""
    return channels.post_processing_finished.publish(
        {"post_id": 1, "state": "done", "url": url, "word_count": 3}, key=1
    )


# --- Which addresses are refused (literal IPs: no DNS) --------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),  # unique local, fc00::/7
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "reserved"),  # NAT64 of 127.0.0.1
    ],
)
def test_internal_addresses_are_refused_with_their_kind(address: str, reason: str) -> None:
    assert outbound.refusal(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert outbound.refusal(address) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8000/hook", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address"),
        # Names are resolved, and the address is checked, whatever spells it.
        ("http://localhost:8000/", "localhost resolves to 127.0.0.1, which is a loopback"),
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, which is a loopback"),
        ("http://0x7f000001/", "resolves to 127.0.0.1, which is a loopback"),
        ("ftp://example.com/", "not an http(s) URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_a_url_is_refused_by_the_address_it_reaches(url: str, message: str) -> None:
    with pytest.raises(outbound.Refused) as refused:
        outbound.check(url)
    assert message in str(refused.value)


def test_allowing_private_addresses_lets_local_urls_through() -> None:
    assert outbound.check("http://localhost:8000/", allow_private=True) == ["127.0.0.1"]


# --- At POST time: a 400 ----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("callback_url", "message"),
    [
        ("http://127.0.0.1:8000/hooks/done", "127.0.0.1 is a loopback address"),
        ("http://localhost:8000/", "localhost resolves to 127.0.0.1, which is a loopback"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://10.0.0.7/", "10.0.0.7 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://0.0.0.0:8000/", "0.0.0.0 is an unspecified address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address"),
        ("http://nothing.invalid/", "nothing.invalid does not resolve"),
    ],
)
def test_a_post_with_an_internal_callback_url_is_a_400_and_writes_nothing(
    client: Client, author: User, callback_url: str, message: str
) -> None:
    """Reproduced before: `callback_url=http://127.0.0.1:…` was accepted (202)."""
    response = call(client, "POST", "/api/posts/", {**NEW_POST, "callback_url": callback_url})
    assert response.status_code == 400
    assert response.json()["error"].startswith("callback_url refused: ")
    assert message in response.json()["error"]
    assert not Post.objects.exists() and not EventRecord.objects.exists()


@pytest.mark.django_db
def test_a_local_callback_url_is_accepted_where_the_setting_allows_it(
    client: Client, author: User, settings: Settings
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    payload = {**NEW_POST, "callback_url": "http://127.0.0.1:8000/hooks/done"}
    assert call(client, "POST", "/api/posts/", payload).status_code == 202


# --- When called: in a real listener ------------------------------------------------


def callback_event(state: str) -> EventRecord | None:
    return EventRecord.objects.filter(channel="post_processing_finished", state=state).first()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_callback_to_an_internal_address_is_never_connected_to_and_dies(
    author: User, receivers: Callable[..., Receiver], start_listener: Callable[..., Listener]
) -> None:
    """A post written straight to the database (no API to refuse it), or a name that
    resolved elsewhere when it was given: the listener refuses at call time."""
    receiver = receivers()
    Post.objects.create(title="t", body="three words", author=author, callback_url=receiver.url)
    start_listener(env_extra={"CALLBACK_ALLOW_PRIVATE": "0"})
    callback = wait_until(lambda: callback_event("dead"), what="the callback event dead")
    assert callback.attempts == 1, "refused once and for all: no retries"
    assert "127.0.0.1 is a loopback address" in callback.last_error
    assert receiver.connections == 0 and receiver.requests == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_redirect_is_not_followed_and_the_signature_goes_nowhere_else(
    author: User, receivers: Callable[..., Receiver], start_listener: Callable[..., Listener]
) -> None:
    """Reproduced before: a 302 to another internal address was followed, with the
    signature header."""
    internal = receivers()
    redirecting = receivers(redirect_to(internal.url))
    Post.objects.create(title="t", body="three words", author=author, callback_url=redirecting.url)
    start_listener(env_extra={"CALLBACK_ALLOW_PRIVATE": "1"})
    callback = wait_until(lambda: callback_event("dead"), what="the callback event dead")
    assert len(redirecting.requests) == 1
    assert internal.connections == 0, "the redirect's target was never contacted"
    assert callback.attempts == 1
    assert f"answered HTTP 302, a redirect to {internal.url}: not followed" in callback.last_error


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_huge_answer_is_read_only_up_to_the_cap_and_memory_stays_flat(
    author: User, receivers: Callable[..., Receiver], start_listener: Callable[..., Listener]
) -> None:
    """Reproduced before: a 400 MB answer took a worker from 55 MB to 861 MB."""
    receiver = receivers(stream(megabytes=256))
    listener = start_listener(workers=1, env_extra={"CALLBACK_ALLOW_PRIVATE": "1"})
    (worker,) = wait_until(listener.worker_pids, what="the worker process")
    before = peak_memory(worker)
    Post.objects.create(title="t", body="three words", author=author, callback_url=receiver.url)
    callback = wait_until(lambda: callback_event("done"), what="the callback event done")
    grown = peak_memory(worker) - before
    assert callback.attempts == 1, "a 200 with a long body is a delivered callback"
    assert grown < 16 << 20, f"the worker's peak memory grew by {grown >> 20} MiB"
    _, _, sent = wait_until(lambda: receiver.cut_off and receiver.cut_off[0], 10)
    assert sent < 64 << 20, "the caller hung up instead of reading the rest"


# --- When called: the handler in this process (eventbus.testing.run_events) --------------


@pytest.mark.django_db
def test_a_trickling_receiver_is_cut_off_at_the_deadline(
    receivers: Callable[..., Receiver], settings: Settings
) -> None:
    """A byte every 0.1 s beats any per-read timeout; one deadline covers the whole call."""
    settings.CALLBACK_ALLOW_PRIVATE = True
    settings.CALLBACK_DEADLINE = 1.0
    receiver = receivers(trickle)
    event_id = publish_callback(receiver.url)
    began = time.monotonic()
    (outcome,) = run_events(["post_processing_finished"])
    took = time.monotonic() - began
    assert outcome.status == "failed", "an attempt that ran out of time is retried later"
    assert f"callback {receiver.url} failed" in outcome.error
    assert "took over the deadline of 1 s" in outcome.error
    assert 1.0 <= took < 3.0
    assert EventRecord.objects.get(pk=event_id).state == "failed"
    answering, cut, sent = wait_until(lambda: receiver.cut_off and receiver.cut_off[0], 5)
    assert sent >= 3, "the receiver did trickle"
    assert cut - answering < 1.0 + 1.0, "the caller hung up at the deadline"


@pytest.mark.django_db
def test_a_callback_host_that_no_longer_resolves_is_retried_not_dead() -> None:
    """It resolved when the post came in; DNS may come back."""
    publish_callback("http://nothing.invalid/hooks/done")
    (outcome,) = run_events(["post_processing_finished"])
    assert outcome.status == "failed"
    assert "nothing.invalid does not resolve" in outcome.error


@pytest.mark.django_db
def test_the_callback_carries_a_timestamped_signature(
    receivers: Callable[..., Receiver], settings: Settings
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    receiver = receivers()
    event_id = publish_callback(receiver.url)
    (outcome,) = run_events(["post_processing_finished"])
    assert outcome.status == "done"
    ((headers, body),) = receiver.requests
    header = headers[signing.HEADER]
    assert abs(int(header.split(",")[0].removeprefix("t=")) - time.time()) < 60
    signing.verify(header, "POST", "/hooks/done", body)  # raises unless signed, now, by us
    assert json.loads(body) == {
        "post_id": 1,
        "state": "done",
        "word_count": 3,
        "event_id": event_id,
    }


# --- TLS: the connection goes to the checked address, the name to the certificate ------


@pytest.fixture
def certificate(tmp_path: Path) -> Callable[[str], tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")

    def make(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
                *("-addext", f"subjectAltName=DNS:{name}"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key

    return make


def https_receiver(cert: Path, key: Path, names: list[str | None]) -> Receiver:
    """A receiver at https://localhost:PORT with this certificate; notes the SNI names."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, context: names.append(name)  # type: ignore[assignment]
    return Receiver(tls=tls)


def test_https_connects_to_the_checked_address_and_verifies_the_urls_name(
    certificate: Callable[[str], tuple[Path, Path]],
) -> None:
    cert, key = certificate("localhost")
    names: list[str | None] = []
    receiver = https_receiver(cert, key, names)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        response = outbound.post(receiver.url, b"{}", allow_private=True, context=trusted)
    finally:
        receiver.stop()
    assert response.status == 200
    assert names == ["localhost"], "SNI carries the URL's name, not the address"
    ((headers, _),) = receiver.requests
    assert headers["Host"] == receiver.url.split("/")[2]


def test_https_refuses_a_certificate_for_another_name(
    certificate: Callable[[str], tuple[Path, Path]],
) -> None:
    cert, key = certificate("elsewhere.example")
    receiver = https_receiver(cert, key, [])
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(outbound.SendFailed, match="certificate verify failed"):
            outbound.post(receiver.url, b"{}", allow_private=True, context=trusted)
    finally:
        receiver.stop()
    assert receiver.requests == []
