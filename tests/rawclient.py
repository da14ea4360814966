"""A minimal PostgreSQL client over a plain socket, for sending exactly the bytes a test wants.

Written independently of proxy.wire on purpose: the tests should not trust the code
they test to frame the messages that test it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field


def startup_packet(user: str = "postgres", database: str = "postgres", version: int = 3 << 16) -> bytes:
    body = struct.pack("!I", version)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(type_code: bytes, body: bytes = b"") -> bytes:
    return type_code + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


@dataclass
class RawConnection:
    sock: socket.socket
    process_id: int = 0
    secret_key: bytes = b""
    buffered: bytes = b""
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def open(cls, host: str, port: int, timeout: float = 10) -> RawConnection:
        return cls(socket.create_connection((host, port), timeout=timeout))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, user: str = "postgres", database: str = "postgres", version: int = 3 << 16) -> None:
        """Log in (trust auth) and read up to the first ReadyForQuery."""
        self.send(startup_packet(user, database, version))
        for type_code, body in self.read_until(b"Z"):
            if type_code == b"K":
                self.process_id = struct.unpack_from("!I", body)[0]
                self.secret_key = body[4:]
            if type_code == b"E":
                raise RuntimeError(f"login failed: {body!r}")

    def read_message(self) -> tuple[bytes, bytes] | None:
        """The next typed message, or None when the peer closed the connection."""
        while len(self.buffered) < 5 or len(self.buffered) < 1 + struct.unpack_from("!I", self.buffered, 1)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffered += chunk
        length = struct.unpack_from("!I", self.buffered, 1)[0]
        type_code, body = self.buffered[:1], self.buffered[5 : 1 + length]
        self.buffered = self.buffered[1 + length :]
        return type_code, body

    def read_until(self, stop: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            m = self.read_message()
            if m is None:
                raise ConnectionError(f"closed before {stop!r}; got {out!r}")
            out.append(m)
            if m[0] == stop:
                return out

    def read_to_close(self) -> list[tuple[bytes, bytes]]:
        """Every message until the peer closes the connection."""
        out = []
        while (m := self.read_message()) is not None:
            out.append(m)
        return out

    def close(self) -> None:
        self.sock.close()


def error_fields(body: bytes) -> dict[str, str]:
    return {p[:1].decode(): p[1:].decode() for p in body.split(b"\0") if p}


def cancel_packet(process_id: int, secret_key: bytes) -> bytes:
    return struct.pack("!III", 12 + len(secret_key), 80877102, process_id) + secret_key
