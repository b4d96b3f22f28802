"""How a guest reaches its AVMA host: virtio-vsock (``vsock:CID:PORT``; every guest reaches
its host at CID 2 with no network) or a Unix socket (``unix:/path``: tests, containers).

One exchange per connection: each side sends one frame, a 2-byte big-endian length then
that many bytes (at most :data:`MAX_FRAME`); the whole exchange has one deadline."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from ..errors import AvmaError, InvalidInput

__all__ = ["DEFAULT_PORT", "MAX_FRAME", "Address", "exchange", "frame", "listen", "read_frame"]

#: the vsock port an AVMA host listens on unless told
DEFAULT_PORT = 1690
MAX_FRAME = 1024
#: well-known vsock CIDs (VMADDR_CID_ANY to listen on every one)
_CIDS = {"host": 2, "local": 1, "any": 0xFFFFFFFF}
_LEN = struct.Struct(">H")


@dataclass(frozen=True)
class Address:
    """``unix`` with a path, or ``vsock`` with a CID and a port."""

    family: str
    path: str = ""
    cid: int = 0
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Address:
        """``unix:/run/adba/avma.sock``, ``vsock:2:1690``, ``vsock:host`` (port 1690),
        ``vsock:any:1690`` (listen on every CID)."""
        kind, sep, rest = text.strip().partition(":")
        if not sep or not rest:
            raise InvalidInput(f"{text!r}: an AVMA address is unix:PATH or vsock:CID[:PORT]")
        if kind == "unix":
            if "\0" in rest or len(rest.encode()) > 107:
                raise InvalidInput(f"{text!r}: a Unix socket path of at most 107 bytes")
            return cls("unix", path=rest)
        if kind != "vsock":
            raise InvalidInput(f"{text!r}: the transport is unix or vsock, not {kind!r}")
        cid_text, _, port_text = rest.partition(":")
        try:
            cid = _CIDS[cid_text] if cid_text in _CIDS else int(cid_text, 10)
            port = int(port_text, 10) if port_text else DEFAULT_PORT
        except ValueError:
            raise InvalidInput(f"{text!r}: the vsock CID and port are numbers") from None
        if not 0 <= cid <= 0xFFFFFFFF or not 0 < port < 0xFFFFFFFF:
            raise InvalidInput(f"{text!r}: the vsock CID or port is out of range")
        return cls("vsock", cid=cid, port=port)

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.family == "unix" else f"vsock:{self.cid}:{self.port}"

    def socket(self) -> socket.socket:
        if self.family == "unix":
            return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise AvmaError("this system has no vsock (AF_VSOCK)")
        return socket.socket(family, socket.SOCK_STREAM)

    def sockaddr(self) -> str | tuple[int, int]:
        return self.path if self.family == "unix" else (self.cid, self.port)


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise AvmaError(f"a frame holds at most {MAX_FRAME} bytes, not {len(payload)}")
    return _LEN.pack(len(payload)) + payload


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AvmaError(f"the peer closed the connection after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket, deadline: float) -> bytes:
    """One frame's payload; a length over :data:`MAX_FRAME` is refused unread."""
    (size,) = _LEN.unpack(_read(sock, _LEN.size, deadline))
    if size > MAX_FRAME:
        raise AvmaError(f"a frame of {size} bytes announced (at most {MAX_FRAME})")
    return _read(sock, size, deadline)


def exchange(address: Address, payload: bytes, *, timeout: float) -> bytes:
    """Send one frame to ``address`` and read its one answer, all within ``timeout``."""
    deadline = time.monotonic() + timeout
    with address.socket() as sock:
        sock.settimeout(timeout)
        sock.connect(address.sockaddr())
        sock.sendall(frame(payload))
        return read_frame(sock, deadline)


def listen(address: Address, backlog: int = 64) -> socket.socket:
    """A listening socket on ``address`` (a stale Unix socket file is replaced)."""
    import os
    import stat

    sock = address.socket()
    try:
        if address.family == "unix":
            try:
                if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                    os.unlink(address.path)
            except FileNotFoundError:
                pass
        sock.bind(address.sockaddr())
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise AvmaError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock
