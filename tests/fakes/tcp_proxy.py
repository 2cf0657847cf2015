"""A TCP fault proxy (threads) between a client under test and a real server.

It forwards bytes both ways until the test injects a fault, for the connections open now
and for every new one, until heal():

- drop(): bytes are swallowed in both directions; nothing is closed (a black hole after the
  handshake: the peer's kernel still acknowledges, so only an application timeout helps);
- stall(): bytes are held back, not lost, and delivered at heal() (a frozen server or path);
- delay(seconds): each chunk is forwarded that much later (latency);
- reset(): every connection is reset (RST) now, and each new one right after it is
  accepted (a server or firewall that resets);
- refuse() / resume(): the port stops listening (connections refused, as to a stopped
  server) and listens again;
- cut(): reset the connections open now, once, and carry on forwarding.

RELIABILITY.md's harness notes ask for an asyncio proxy; this one uses a thread per
direction, as the suite's first fault tests did: the tests open a handful of connections,
and a blocking socket per thread keeps each fault a few lines.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

FORWARD, DROP, STALL, RESET = "forward", "drop", "stall", "reset"


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.mode = FORWARD
        self.latency = 0.0
        self.accepted = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        return listener

    # ----- the faults -------------------------------------------------------------------

    def drop(self) -> None:
        self._set(DROP)

    def stall(self) -> None:
        self._set(STALL)

    def delay(self, seconds: float) -> None:
        with self._lock:
            self.latency = seconds
            self.mode = FORWARD
            self._changed.notify_all()

    def reset(self) -> None:
        self._set(RESET)
        self.cut()

    def heal(self) -> None:
        """Forward again at full speed; stalled bytes go on their way."""
        with self._lock:
            self.latency = 0.0
            self.mode = FORWARD
            self._changed.notify_all()

    # Older tests' name for drop (a frozen path): a property so `proxy.frozen = True` works.
    @property
    def frozen(self) -> bool:
        return self.mode == DROP

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._set(DROP if value else FORWARD)

    def _set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            self._changed.notify_all()

    # ----- plumbing ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                resetting = self.mode == RESET
            if resetting:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    while self.mode == STALL and not self._closed:
                        self._changed.wait()
                    mode, latency = self.mode, self.latency
                if mode in (DROP, RESET):
                    continue
                if latency:
                    time.sleep(latency)
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> None:
        """Reset every connection open now, both sides (SO_LINGER 0 closes with RST)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def refuse(self) -> None:
        """Cut every connection and stop listening: the server is down, connecting to it
        is refused (as to a stopped Redis), until resume()."""
        self.cut()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()

    def resume(self) -> None:
        """Listen again on the same port: the server is back."""
        self.listener = self._listen(self.port)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self.cut()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # A blocked recv() in a pump thread keeps the socket alive past close(): shut the
        # read side to wake it, so the close really resets.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
