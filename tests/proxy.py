"""A TCP proxy to PostgreSQL that can black-hole its connections: a half-open network.

Black-holed connections stay open but every byte is dropped, as when a NAT or a load
balancer forgets a connection. New connections made afterwards pass normally.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    blackholed: bool = False


@dataclass
class Proxy:
    target: tuple[str, int] | str  # (host, port), or a unix socket path
    port: int = 0
    _server: socket.socket = field(init=False)
    _pairs: list[_Pair] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Proxy:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            return upstream
        return socket.create_connection(self.target)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            pair = _Pair(client, self._connect_upstream())
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(
                target=self._pump, args=(pair, client, pair.upstream), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(pair, pair.upstream, client), daemon=True
            ).start()

    @staticmethod
    def _pump(pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if pair.blackholed:
                continue
            try:
                sink.sendall(data)
            except OSError:
                return

    def blackhole_existing(self) -> int:
        """Silently drop all traffic of the connections open now; returns how many."""
        with self._lock:
            for pair in self._pairs:
                pair.blackholed = True
            return len(self._pairs)

    def stop(self) -> None:
        self._server.close()
        with self._lock:
            for pair in self._pairs:
                for sock in (pair.client, pair.upstream):
                    with contextlib.suppress(OSError):
                        sock.close()
