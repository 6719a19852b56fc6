"""``gradbridge serve``: a web page that plays, plots and routes a run to Web MIDI, from anywhere.

The server is one more output of the follower (``bridge.outputs.OutputSpec(serve=PORT)``): it sees every
frame (for the plots) and the live events the follower sounds (for the page's synth and Web MIDI), and
serves them over HTTP and a WebSocket from a thread of the follower's process. Nothing here is imported
until a page is asked for; the HTTP and WebSocket library (aiohttp) is the optional ``serve`` extra.

- ``bridge.serve.protocol``: the bytes the page receives (documented in docs/serve.md);
- ``bridge.serve.history``: what a page opened mid-run gets for its plots;
- ``bridge.serve.pacing``: thinning live steps to what a listener can hear, never an alarm;
- ``bridge.serve.server``: the HTTP and WebSocket server, its token, its clients;
- ``bridge.serve.output``: the follower's side: ``PageOutput``, a sink for the live events and a consumer of
  every frame;
- ``bridge/serve/static/``: the page (no library, nothing fetched from elsewhere: it works offline).
"""

from __future__ import annotations

import ipaddress
import secrets

__all__ = ["DEFAULT_HOST", "EXTRA_MISSING", "check_token", "is_loopback", "new_token", "reach_hint", "require_aiohttp"]

#: Where the server listens unless told otherwise: this machine only (reach it through an SSH tunnel).
DEFAULT_HOST = "127.0.0.1"

#: The one-line error when aiohttp is missing.
EXTRA_MISSING = ('serving a page needs aiohttp, which is not installed. Fix: pip install "gradbridge[serve]" '
                 "(or pip install aiohttp)")


def require_aiohttp() -> None:
    """Raise ``ImportError`` with ``EXTRA_MISSING`` unless aiohttp can be imported."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ImportError(EXTRA_MISSING) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh token: 48 hex digits (192 random bits)."""
    return secrets.token_hex(24)


def check_token(token: object) -> str:
    """The token, checked: a str of 8-256 letters, digits, ``-`` or ``_``; ``ValueError`` otherwise."""
    if not isinstance(token, str):
        raise TypeError(f"serve_token must be a str or None, got {type(token).__name__}")
    if not 8 <= len(token) <= 256 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in token):
        raise ValueError(f"serve_token must be 8-256 letters, digits, '-' or '_' (it goes in the URL), got "
                         f"{token!r}; leave it out for a random one")
    return token


def reach_hint(url: str) -> str:
    """How to open the page at ``url`` from another machine, in words (the SSH tunnel for a loopback address)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not is_loopback(parts.hostname or ""):
        return "open it from any machine that can reach this one"
    return (f"from another machine: ssh -N -L {parts.port}:127.0.0.1:{parts.port} {socket.gethostname()}, "
            "then open it there")
