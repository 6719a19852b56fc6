"""The page's HTTP side: the token every request needs, and the page's files.

The token comes as ``?token=...`` in the URL (the page passes it on to its files and its WebSocket) or as an
``Authorization: token ...`` header; without it, 403, also on loopback. Responses never pass the URL on
(``Referrer-Policy: no-referrer``), are never cached, and the page may load nothing but its own files
(Content Security Policy).
"""

from __future__ import annotations

import hmac
import mimetypes
from importlib import resources
from typing import Any

from aiohttp import web

FORBIDDEN = ("gradbridge: this page needs the token that gradbridge printed with its address: open that whole "
             "address (?token=...)\n")
#: The page may load its own files only, and nothing from anywhere else.
CONTENT_POLICY = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
                  "script-src 'self'; object-src 'none'; base-uri 'none'")


def token_check(token: str) -> Any:
    """aiohttp middleware: 403 for a request without ``token``; the safety headers on every answer."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if not given and header.lower().startswith("token "):
            given = header[6:].strip()
        if not hmac.compare_digest(given.encode(), expected):
            return web.Response(status=403, text=FORBIDDEN)
        response: web.StreamResponse = await handler(request)
        response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL: never pass it on
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return check


def read_static() -> dict[str, bytes]:
    """The page's files, shipped in the package (``bridge/serve/static``), by name."""
    folder = resources.files("bridge.serve") / "static"
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}


class StaticFiles:
    """The page (``index`` at ``/``, its asset addresses carrying ``token``) and its files (``file``)."""

    def __init__(self, token: str) -> None:
        self._files = read_static()
        self._page = self._files["index.html"].decode("utf-8").replace("__TOKEN__", token)

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._page, content_type="text/html",
                            headers={"Content-Security-Policy": CONTENT_POLICY})

    async def file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._files.get(name)
        if body is None or name == "index.html":
            raise web.HTTPNotFound(text=f"no such file: {name}\n")
        kind = "text/javascript" if name.endswith(".js") else mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=body, content_type=kind)
