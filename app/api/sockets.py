"""Which addresses this process listens on, from /proc (Linux): the ASGI scope's "server" is the
local address of the accepted connection (127.0.0.1 for a client on loopback even when the
listening socket is bound to 0.0.0.0), so the listening socket itself is looked up here."""

from __future__ import annotations

import ipaddress
import os
import threading
import time

_CACHE: dict[int, tuple[float, tuple[str, ...] | None]] = {}
_LOCK = threading.Lock()
CACHE_S = 30.0


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 holds four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped or addr)


def _scan(port: int) -> tuple[str, ...] | None:
    try:
        inodes = _socket_inodes()
    except OSError:
        return None
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
                        continue
                    addr, _, hex_port = parts[1].partition(":")
                    if int(hex_port, 16) == port and parts[9] in inodes:
                        found.append(_decode(addr))
        except OSError:
            continue
    return tuple(found) or None


def listening_addresses(port: int | None) -> tuple[str, ...] | None:
    """The addresses this process listens on at TCP `port` (e.g. ("0.0.0.0",)), or None when unknown
    (no such listener in this process, e.g. an in-process test client, or no /proc)."""
    if port is None:
        return None
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(port)
        if hit is not None and hit[0] > now:
            return hit[1]
    found = _scan(port)
    with _LOCK:
        _CACHE[port] = (now + CACHE_S, found)
    return found
