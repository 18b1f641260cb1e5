"""Outbound webhooks that cannot be turned against the sender (server-side request forgery).

A handler that POSTs to a URL a user gave (a callback, a webhook subscription) makes a
request, from inside your network, to wherever the user points it. `post` makes it so
that it reaches no more than the user could reach from outside (OWASP's SSRF cheat sheet):

- The host is resolved once, every address it resolves to is checked, and the connection
  goes to a checked address: no second lookup that a DNS rebinding could answer
  differently. The request still carries the URL's host, in ``Host`` and in TLS (SNI and
  the certificate's name). Loopback, private, link-local, multicast, unspecified, shared
  (100.64/10) and reserved addresses are refused, IPv4 inside IPv6 included
  (``::ffff:127.0.0.1``, 6to4), unless ``allow_private`` (tests, internal deployments).
- No redirect is followed: a 3xx is returned like any answer, and its caller decides.
- At most ``max_response`` bytes of the body are read, and at most 64 KiB more in all
  for the status line and headers; the connection is then closed, the rest never read.
- One deadline covers the lookup, connecting, TLS, sending and reading: each step gets
  the time left, so a server that trickles a byte at a time cannot hold the caller.

`check` applies the same refusal without sending, for validating a URL when it is given.
Standard library only.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEADLINE",
    "MAX_RESPONSE",
    "DeadlineExceeded",
    "OutboundError",
    "Refused",
    "Response",
    "SendFailed",
    "Unresolvable",
    "check",
    "post",
    "refusal",
]

MAX_RESPONSE = 64 * 1024  # bytes of response body read, by default
DEADLINE = 10.0  # seconds for the whole request, by default
MAX_HEAD = 64 * 1024  # bytes of status line and headers read, at most

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundError(Exception):
    """The request was not made, or not answered."""


class Refused(OutboundError):
    """The URL, or an address its host resolves to, may not be called: retrying is futile."""


class Unresolvable(OutboundError):
    """The URL's host did not resolve (it may later)."""


class DeadlineExceeded(OutboundError, TimeoutError):
    """The request did not finish within its deadline."""


class SendFailed(OutboundError):
    """Connecting, TLS, sending or reading failed (refused, reset, not HTTP...)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes  # at most max_response bytes
    truncated: bool  # the server had more to send than was read

    @property
    def redirect(self) -> str | None:
        """Where a 3xx points (not followed); None for any other answer."""
        if 300 <= self.status < 400:
            return self.headers.get("Location", "")
        return None


def refusal(address: str | IPAddress) -> str | None:
    """Why `address` may not be called ("loopback", "private", ...); None for a public one."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour  # ::ffff:a.b.c.d, 2002:aabb:ccdd::
        if embedded is not None:
            return refusal(embedded)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def check(url: str, *, allow_private: bool = False, deadline: float = DEADLINE) -> list[str]:
    """The addresses `post` would call for `url`; `Refused` or `Unresolvable` as it would."""
    target = _Target.parse(url)
    clock = _Clock(deadline)
    return [sockaddr[0] for _, sockaddr in _addresses(target, clock, allow_private)]


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    allow_private: bool = False,
    max_response: int = MAX_RESPONSE,
    deadline: float = DEADLINE,
    context: ssl.SSLContext | None = None,
) -> Response:
    """POST `body` to `url` under the guards above; the answer, whatever its status.

    Raises `Refused` (the URL or an address), `Unresolvable`, `DeadlineExceeded` or
    `SendFailed`; all are `OutboundError`. `context` verifies TLS (the system's CAs by
    default).
    """
    target = _Target.parse(url)
    clock = _Clock(deadline)
    addresses = _addresses(target, clock, allow_private)
    sock = _connect(target, addresses, clock)
    try:
        if target.scheme == "https":
            sock.settimeout(clock.left("the TLS handshake"))
            tls = context or ssl.create_default_context()
            sock = tls.wrap_socket(sock, server_hostname=target.host)
        return _exchange(target, _Deadlined(sock, clock), body, headers or {}, max_response)
    except TimeoutError as exc:  # a socket timeout is the time left running out
        if isinstance(exc, DeadlineExceeded):
            raise
        raise DeadlineExceeded(f"{url} took over the deadline of {deadline:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
    except UnicodeError as exc:  # a header that HTTP/1.1 cannot carry
        raise Refused(f"{type(exc).__name__}: {exc}") from exc
    finally:
        sock.close()


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # as in the URL, without brackets: the Host header and the TLS name
    port: int
    path: str  # with the query

    @classmethod
    def parse(cls, url: str) -> _Target:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:  # a bad port, an unclosed [IPv6 bracket
            raise Refused(f"not a valid URL: {url!r} ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise Refused(f"not an http(s) URL: {url!r}")
        if not parts.hostname:
            raise Refused(f"no host in {url!r}")
        try:  # an internationalised name, as DNS, Host and TLS spell it
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise Refused(f"not a valid host name in {url!r} ({exc})") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Non-ASCII or spaces, percent-encoded as UTF-8; what is already encoded stays.
        path = urllib.parse.quote(path, safe=_URL_SAFE)
        return cls(parts.scheme, host, port, path)


_URL_SAFE = "/?&=%:@!$'()*+,;~[]-._"


class _Clock:
    """One deadline for every step of a request."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, step: str) -> float:
        """Seconds left for `step`; `DeadlineExceeded` if none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the deadline of {self.seconds:g} s passed before {step}")
        return left


Sockaddr = tuple[Any, ...]


def _addresses(
    target: _Target, clock: _Clock, allow_private: bool
) -> list[tuple[socket.AddressFamily, Sockaddr]]:
    """Every address the host resolves to, each checked; refused if any one is refused."""
    found = _resolve(target, clock)
    if not allow_private:
        for _, sockaddr in found:
            ip = sockaddr[0].split("%")[0]  # an IPv6 zone (fe80::1%eth0)
            if reason := refusal(ip):
                named = ip if ip == target.host else f"{target.host} resolves to {ip}, which"
                a = "an" if reason[0] in "aeiou" else "a"
                raise Refused(f"{named} is {a} {reason} address")
    return found


def _resolve(target: _Target, clock: _Clock) -> list[tuple[socket.AddressFamily, Sockaddr]]:
    """getaddrinfo within the deadline (it takes no timeout, so it runs in a thread that
    is left behind if the resolver hangs)."""
    outcome: list[Any] = []

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lookup, name="outbound-resolve", daemon=True)
    thread.start()
    thread.join(clock.left(f"resolving {target.host}"))
    if not outcome:
        raise DeadlineExceeded(f"resolving {target.host} took over {clock.seconds:g} s")
    if isinstance(outcome[0], Exception):
        raise Unresolvable(f"{target.host} does not resolve: {outcome[0]}")
    found = [(family, sockaddr) for family, _, _, _, sockaddr in outcome[0]]
    if not found:
        raise Unresolvable(f"{target.host} resolves to no address")
    return found


def _connect(
    target: _Target, addresses: list[tuple[socket.AddressFamily, Sockaddr]], clock: _Clock
) -> socket.socket:
    """A connection to the first checked address that accepts one."""
    errors = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(clock.left(f"connecting to {target.host}"))
            sock.connect(sockaddr)
            return sock
        except TimeoutError:
            sock.close()
            raise DeadlineExceeded(
                f"connecting to {sockaddr[0]} took over {clock.seconds:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            errors.append(str(exc) if sockaddr[0] == target.host else f"{sockaddr[0]}: {exc}")
    raise SendFailed(f"could not connect to {target.host}: {'; '.join(errors)}")


def _exchange(
    target: _Target,
    sock: _Deadlined,
    body: bytes,
    headers: Mapping[str, str],
    max_response: int,
) -> Response:
    """The request and its answer, over a connected socket, with http.client."""
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.default_port = 443 if target.scheme == "https" else 80  # Host: without it
    connection.sock = sock  # type: ignore[assignment]  # so it never connects by itself
    sock.budget = MAX_HEAD + max_response + 1
    connection.request("POST", target.path, body, {"Connection": "close", **headers})
    response = connection.getresponse()
    data = bytearray()
    while len(data) <= max_response:
        chunk = response.read1(max_response + 1 - len(data))
        if not chunk:
            break
        data += chunk
    truncated = len(data) > max_response
    del data[max_response:]
    return Response(response.status, response.reason, response.headers, bytes(data), truncated)


class _Deadlined:
    """The socket as http.client uses it: each send and receive gets the time left, and
    at most `budget` bytes are received. Closing is left to `post`."""

    def __init__(self, sock: socket.socket, clock: _Clock) -> None:
        self.sock = sock
        self.clock = clock
        self.budget = MAX_HEAD

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # send by send: a receiver that reads slowly cannot stretch the time
            self.sock.settimeout(self.clock.left("sending"))
            view = view[self.sock.send(view) :]

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        pass


class _Reader(io.RawIOBase):
    def __init__(self, sock: _Deadlined) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sock.budget <= 0:
            return 0  # as if the server had closed
        view = memoryview(buffer)[: self.sock.budget]
        self.sock.sock.settimeout(self.sock.clock.left("reading the answer"))
        n = self.sock.sock.recv_into(view)
        self.sock.budget -= n
        return n
