"""Ports, host names, ``host[:port]`` and LDAP URIs, checked where they are parsed.

Each function takes the text as given (a flag, a config value, a variable) and returns the
parsed value or raises :class:`ValueError` with a message that says what is wrong; the caller
adds where the text came from. No heavy imports: the CLI's argument types use these at
every boot.
"""

from __future__ import annotations

__all__ = ["dns_server", "host_name", "host_port", "ldap_uri", "port_number"]

_SCHEMES = ("ldap", "ldaps", "ldapi")


def port_number(text: str | int) -> int:
    """A TCP/UDP port, 1-65535."""
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"port must be a number 1-65535, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1-65535, not {port}")
    return port


def _ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_name(text: str) -> str:
    """An IPv4 or IPv6 address, or a DNS name (letters, digits, ``-`` and ``_``, dots)."""
    if not text:
        raise ValueError("empty host name")
    if _ip(text):
        return text
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253:
        raise ValueError(f"host name longer than 253 characters: {text[:40]!r}...")
    for label in name.split("."):
        if not label or len(label) > 63:
            raise ValueError(f"{text!r} is not a host name (empty or over-long label)")
        if label.startswith("-") or not all(
            c.isascii() and (c.isalnum() or c in "-_") for c in label
        ):
            raise ValueError(f"{text!r} is not a host name or address")
    return text


def host_port(text: str, *, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [address]:port")
        if not _ip(host) or ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
        return host, port_number(rest[1:]) if rest else default_port
    if text.count(":") > 1:  # a bare IPv6 address takes no port
        if not _ip(text):
            raise ValueError(f"{text!r} is not host[:port] (IPv6 with a port: [addr]:port)")
        return text, default_port
    host, sep, port = text.partition(":")
    return host_name(host), port_number(port) if sep else default_port


def dns_server(text: str) -> tuple[str, int]:
    """A DNS server: an IP address with an optional port (``192.0.2.53``, ``[::1]:5353``)."""
    host, port = host_port(text, default_port=53)
    if not _ip(host):
        raise ValueError(f"DNS server {text!r} must be an IP address (with an optional :port)")
    return host, port


def ldap_uri(text: str, *, schemes: tuple[str, ...] = _SCHEMES) -> str:
    """``ldap://host[:port]``, ``ldaps://…`` or ``ldapi://<percent-encoded socket path>``."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in schemes:
        shown = ", ".join(f"{s}://" for s in schemes)
        what = "an LDAP URI" if schemes == _SCHEMES else f"an {' or '.join(schemes)} URI"
        raise ValueError(f"{text!r} is not {what}: use {shown}")
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise ValueError(f"{text!r}: an LDAP URI has no spaces or control characters")
    hostport = rest.split("/", 1)[0].split("?", 1)[0]
    if scheme.lower() == "ldapi":
        return text
    if "@" in hostport:
        raise ValueError(f"{text!r}: no user name in an LDAP URI (give --bind-dn)")
    if not hostport:
        raise ValueError(f"{text!r} names no host")
    default = 636 if scheme.lower() == "ldaps" else 389
    try:
        host_port(hostport, default_port=default)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return text
