"""Who may talk to the service from a browser: trusted Host names and a same-origin rule for writes.

`install_security(app, allowed_hosts=..., allowed_origins=...)` adds one pure ASGI middleware
(nothing buffered; it looks at headers only, before any body is read) that every app built by
`create_app` gets:

- **Trusted hosts.** A request must name this service in its Host header: the loopback names
  (localhost, 127.0.0.1, ::1), the address it is bound to, and each `--allowed-host` (exact
  names, `*.example.com` for sub-domains, `*` for any). Anything else is 400 `untrusted_host`.
  This is what defeats DNS rebinding: a page on attacker.example whose name has been re-pointed
  at 127.0.0.1 still sends `Host: attacker.example`, so it can neither read the gallery nor tag.
- **Same origin for writes.** A POST, PUT, PATCH or DELETE that a browser sends on behalf of
  another site is 403 `cross_origin`. The browser says where a request comes from in `Origin`;
  when it sends none, `Sec-Fetch-Site` (cross-site / same-site refused), and failing that
  `Referer`. The request's own origin is its scheme and its (already trusted) Host, so it is
  correct behind a proxy that keeps Host and sets X-Forwarded-Proto. `--allowed-origin` adds
  origins (`https://app.example.com`) that may write. A request that carries none of the three
  headers is not from a browser (curl, scripts, the Python client) and passes: it cannot
  carry a user's ambient access, which is what CSRF abuses.

Why not Starlette's TrustedHostMiddleware and CORSMiddleware: the first answers in plain text
(not the service's error shape) and knows nothing of origins; the second controls what a
browser may *read* cross-origin, while a simple multipart POST needs no preflight and runs
anyway, which is exactly the hole; refusing writes from foreign origins is what closes it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable
from urllib.parse import urlsplit

from ..errors import UsageError
from .limits import send_error

#: Names a request may always use for a service on this machine.
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: Methods that change state or upload; GET and HEAD only read (and the Host rule covers them).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Addresses that mean "every interface": never a name a client puts in Host.
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


def normalize_host(name: str) -> str:
    """Lower case, no trailing dot, IPv6 without brackets and in its compressed form."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def parse_host_header(value: str) -> tuple[str, int | None] | None:
    """`example.com:8000` -> ("example.com", 8000), `[::1]` -> ("::1", None); None when malformed."""
    value = value.strip()
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not (rest.startswith(":") and rest[1:].isdigit()):
                return None
            port = int(rest[1:])
        try:
            return ipaddress.IPv6Address(host).compressed, port
        except ValueError:
            return None
    host, sep, tail = value.rpartition(":")
    if not sep:
        host = value
    elif tail.isdigit():
        port = int(tail)
    else:
        return None
    host = normalize_host(host)
    if not host or ":" in host or not _HOSTNAME.match(host):
        return None
    if port is not None and not 0 < port < 65536:
        return None
    return host, port


def normalize_origin(origin: str) -> str | None:
    """`HTTPS://Example.com:443/` -> `https://example.com`; None when it is not scheme://host[:port]."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = normalize_host(parts.hostname)
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _rule_host(name: str) -> str:
    """A rule's host name without a port: requests are matched on their Host name alone, so
    `tagger.lan:8000` must mean `tagger.lan` (it would otherwise never match anything)."""
    parsed = parse_host_header(name)
    return parsed[0] if parsed is not None else normalize_host(name)


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """`--allowed-origin` values, refused in one line (UsageError) unless each is `*` or scheme://host[:port]."""
    origins = tuple(origins)
    for origin in origins:
        if origin.strip() != "*" and normalize_origin(origin) is None:
            raise UsageError(f"--allowed-origin takes scheme://host[:port] (e.g. https://app.example.com), not {origin!r}")
    return origins


class HostRule:
    """The set of trusted Host names: exact names, `*.domain` suffixes, or `*` for all."""

    def __init__(self, names: Iterable[str]):
        self.any = False
        self.exact: set[str] = set()
        self.suffixes: list[str] = []
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            if name == "*":
                self.any = True
            elif name.startswith("*."):
                self.suffixes.append("." + _rule_host(name[2:]))
            else:
                self.exact.add(_rule_host(name))

    def allows(self, host: str) -> bool:
        return self.any or host in self.exact or any(host.endswith(s) for s in self.suffixes)

    def describe(self) -> str:
        if self.any:
            return "any"
        return ", ".join(sorted(self.exact) + ["*" + s for s in self.suffixes])


def trusted_hosts(bound_host: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Loopback names, the bound address (unless it is a wildcard), then `extra`."""
    names = list(LOOPBACK_HOSTS)
    if bound_host is not None and bound_host.strip() not in WILDCARD_BINDS:
        names.append(bound_host)
    names.extend(extra)
    return names


class SecurityMiddleware:
    """The Host and same-origin rules of the module docstring, as pure ASGI (headers only)."""

    def __init__(self, app, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()):
        self.app = app
        self.hosts = HostRule([*LOOPBACK_HOSTS, *allowed_hosts])
        self.any_origin = False
        self.origins: set[str] = set()
        for raw in check_origins(allowed_origins):
            if raw.strip() == "*":
                self.any_origin = True
            else:
                self.origins.add(normalize_origin(raw))  # type: ignore[arg-type] - checked above

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # `serve` runs without websockets; an app that adds them gets the Host rule
            # The first Host header, as for HTTP below (dict() would keep the last).
            host = next((v for n, v in scope.get("headers", ()) if n == b"host"), b"").decode("latin-1")
            parsed = parse_host_header(host)
            if parsed is None or not self.hosts.allows(parsed[0]):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers", ()):
            if name in (b"host", b"origin", b"sec-fetch-site", b"referer") and name not in headers:
                headers[name] = value.decode("latin-1")
        host_value = headers.get(b"host")
        if host_value is None:
            return await send_error(send, 400, "untrusted_host", "the request has no Host header")
        parsed = parse_host_header(host_value)
        if parsed is None or not self.hosts.allows(parsed[0]):
            shown = host_value if len(host_value) <= 100 else host_value[:100] + "..."
            return await send_error(
                send, 400, "untrusted_host",
                f"Host {shown!r} is not a name of this service (trusted: {self.hosts.describe()}); "
                "start it with --allowed-host NAME to accept that name")
        if scope["type"] == "http" and scope["method"] in WRITE_METHODS:
            refusal = self._cross_origin(scope, host_value, headers)
            if refusal is not None:
                return await send_error(send, 403, "cross_origin", refusal)
        return await self.app(scope, receive, send)

    def own_origin(self, scope, host_value: str) -> str | None:
        scheme = scope.get("scheme", "http")
        return normalize_origin(f"{'https' if scheme in ('https', 'wss') else 'http'}://{host_value.strip()}")

    def _allowed(self, origin: str | None, own: str | None) -> bool:
        if origin is None:
            return False
        return self.any_origin or origin == own or origin in self.origins

    def _cross_origin(self, scope, host_value: str, headers: dict) -> str | None:
        """None when the write may go ahead, else why not (the 403 message)."""
        own = self.own_origin(scope, host_value)
        hint = "; a page on another origin may not send requests that change or upload (add it with --allowed-origin)"
        origin = headers.get(b"origin")
        if origin is not None:
            norm = None if origin.strip() == "null" else normalize_origin(origin)
            if self._allowed(norm, own):
                return None
            return f"cross-origin request refused: Origin {origin[:100]!r} is not this service ({own}){hint}"
        site = headers.get(b"sec-fetch-site")
        if site is not None:
            if site.strip().lower() in ("same-origin", "none"):
                return None
            return f"cross-origin request refused: the browser reports Sec-Fetch-Site {site[:40]!r}{hint}"
        referer = headers.get(b"referer")
        if referer is not None:
            if self._allowed(normalize_origin(referer), own):
                return None
            return f"cross-origin request refused: Referer is not a page of this service ({own}){hint}"
        return None  # no browser header at all: not a browser, no ambient credentials to abuse


def install_security(app, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()) -> None:
    """Add the Host and same-origin rules to `app` as its outermost middleware.

    Call it after every other `add_middleware`, so that a refused request costs neither a body
    read nor a share of the in-flight budget. The loopback names are always trusted."""
    hosts, origins = tuple(allowed_hosts), tuple(allowed_origins)
    SecurityMiddleware(None, allowed_hosts=hosts, allowed_origins=origins)  # a bad origin fails now, not at startup
    app.add_middleware(SecurityMiddleware, allowed_hosts=hosts, allowed_origins=origins)
