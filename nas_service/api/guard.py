"""Refusals before any route runs, token or not: a foreign ``Host``, a foreign ``Origin``, a body too large.

- **Host**: a web page can make its own name resolve to 127.0.0.1 (DNS rebinding) and then talk to this
  server as if it were the page's own; the Host header still carries the page's name, so only the
  server's own names are served.
- **Origin**: a browser names the page behind a request in ``Origin``; a request from another page
  is refused (this server grants no cross-origin access).

Changes must also declare JSON (``deps.require_json``), which no page can send to another site
without the browser asking first.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""Always allowed: the names a browser on this machine reaches a loopback server by."""
MAX_BODY_BYTES = 1 << 20
"""A whole search config, inline architectures included, is a few kB."""


class RequestGuard:
    """ASGI middleware answering refused requests with a JSON problem (403, 411 or 413)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str]) -> None:
        self.app = app
        self.allowed_hosts = frozenset(name.strip().strip("[]").lower().rstrip(".") for name in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(Headers(scope=scope)) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            code, detail = refusal
            await JSONResponse({"detail": detail}, status_code=code)(scope, receive, send)

    def refusal(self, headers: Headers) -> tuple[int, str] | None:
        """Why the request is refused (status and message), or None."""
        host = headers.get("host", "")
        if host_name(host) not in self.allowed_hosts:
            return 403, (
                f"Host {host!r} is not a name of this server (allowed: {', '.join(sorted(self.allowed_hosts))}); "
                "start nas serve with --allowed-host NAME to serve it under another name"
            )
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            return 403, f"Origin {origin!r}: this server answers its own pages only, not those of other sites"
        if "transfer-encoding" in headers:
            return 411, "send the body with a Content-Length"
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return 413, f"Content-Length: the body may have at most {MAX_BODY_BYTES} bytes, got {length}"
        return None


def host_name(host: str) -> str:
    """The name in a Host header: lower case, no port, no brackets, no final dot."""
    try:
        name = urlsplit(f"//{host.strip()}").hostname or ""
    except ValueError:  # e.g. an unbalanced "[" : matches no allowed name
        return ""
    return name.rstrip(".")


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://name[:port]``) is this server as the request's Host names it.

    The scheme is not compared with the connection's: behind a TLS proxy the page is https, the server http.
    """
    try:
        page, server = urlsplit(origin), urlsplit(f"//{host.strip()}")
        default = {"http": 80, "https": 443}.get(page.scheme)
        if default is None or page.path or page.query or not page.hostname:
            return False
        return (page.hostname, page.port or default) == (server.hostname, server.port or default)
    except ValueError:  # a port that is no number
        return False
