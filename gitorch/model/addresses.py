"""Addresses: "ip:port" text to a normalised (ip, port) and back; purely computational."""

from __future__ import annotations

import ipaddress


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """Split "ip:port", "[ipv6]:port", "ip" or "ipv6" into a normalised (ip, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}: expected [ipv6]:port")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address {text!r}: expected an IP literal with a port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad address {text!r}: port out of range")
    return str(ip), port


def format_hostport(host: str, port: int) -> str:
    """The inverse of parse_hostport: "ip:port", or "[ipv6]:port"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
