"""The connection layer of `animetagnet serve`: a capped number of connections, deadlines for request heads, quiet logs.

`server_config(app, host, port, limits)` gives the uvicorn Config the CLI (and the tests and
benchmarks) run: uvicorn's h11 protocol with these guards, in `GuardedH11Protocol`:

- **Connection cap.** At most `max_connections` are open. A connection beyond it closes the
  connection that has waited longest for a request head (idle keep-alive or a half-sent head;
  a request in progress is never touched); when every connection is busy with a request, the
  new one gets a fixed 503 and is closed. No log line per refusal: counters, and the rate-limited
  logger below. So 1,050 idle sockets cost at most `max_connections` file descriptors, and a
  good client still gets in (it pushes out the oldest idle one).
- **Head deadline (slowloris).** A connection must deliver a complete request head within
  `header_timeout` of connecting (or of the first byte of its next request on a kept-alive
  connection), however slowly it trickles bytes; else 408 (or a plain close when it sent
  nothing) and closed. Keep-alive idleness is uvicorn's `timeout_keep_alive`.
- **Bounded linger.** When a response is complete but the client is still sending a body that
  nobody read (a refused upload without `Connection: close`, a GET with a body), uvicorn would
  drain it for as long as bytes keep coming; here it is closed after `linger` seconds.
- **Header size.** h11's incomplete-event limit (`max_header_bytes`, 16 KiB): a longer head is
  a 400 and a close.

Why a protocol subclass and not uvicorn's settings alone: `limit_concurrency` checks only when
a request head has arrived, counts idle connections against the limit, logs a warning for
every refusal and answers in plain text, so 1,050 idle sockets would make every good request a
503 (with a log line each) rather than push an idle socket out; and uvicorn has no deadline at
all for a connection that never sends a complete head (its keep-alive timer starts only after
a first response, and any byte cancels it). Those settings that do the right thing are used
as they are: `timeout_keep_alive`, `h11_max_incomplete_event_size`, and `backlog`, lowered from
uvicorn's 2,048 to 256 because asyncio accepts up to `backlog` sockets per loop tick before any
can be refused. Why not a
front server (nginx): the default install is one Python process on loopback; behind nginx,
its own limits apply first (docs/serve.md has a configuration) and these stay as a backstop.
The h11 protocol is pinned (not httptools even when installed) so that the guards always apply.

`raise_file_limit()` lifts the soft RLIMIT_NOFILE to the hard limit, and `fit_connections`
keeps `max_connections + backlog` under what the process may open, so accept() does not run
out of file descriptors. asyncio logs "socket.accept() out of system resource" up to `backlog` times per
second when it does (that was the 135 MB log); `QuietRepeats` keeps such a message to one line
per interval, with the count of those held back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: File descriptors kept for everything but client connections (listening socket, model and
#: log files, the gallery database, temporary upload files, Python's own).
RESERVED_FDS = 128


@dataclass(frozen=True)
class ConnectionLimits:
    """What the server allows per connection; `serve` options, except the last three constants."""

    max_connections: int = 512
    #: Seconds to deliver a complete request head.
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive).
    keep_alive: float = 5.0
    #: Largest request head (request line and headers), h11's incomplete-event limit.
    max_header_bytes: int = 16 * 1024
    #: Seconds to keep reading (and discarding) a body nobody reads after the response.
    linger: float = 5.0
    #: Kernel accept queue. It also bounds how many connections asyncio accepts in one loop
    #: tick, before any of them can be refused or push an idle one out: so a burst can hold
    #: max_connections + backlog descriptors for a moment, and both must fit the file limit.
    backlog: int = 256


def _static_response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n")
    return head.encode("ascii") + body


REFUSED = _static_response(503, "Service Unavailable", "too_many_connections",
                           "the service has as many open connections as it allows; retry shortly", "retry-after: 1\r\n")
HEAD_TIMEOUT = _static_response(408, "Request Timeout", "request_timeout",
                                "the request head did not arrive in time; the connection is closed")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guards of the module docstring.

    `server_config` makes a subclass per server, holding that server's limits, the connections
    waiting for a request head (oldest first) and the counters."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    waiting: ClassVar[OrderedDict]  # protocol -> None, in the order they began to wait
    counters: ClassVar[Counter]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: Any = None  # asyncio.TimerHandle of the head deadline or the linger
        self._deadline_is_head = False
        self._refused = False

    # --- connection life ----------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.counters["accepted"] += 1
        if len(self.connections) > self.limits.max_connections and not self._evict_oldest():
            self._refused = True
            self.counters["refused"] += 1
            transport.write(REFUSED)
            transport.close()
            return
        self._arm(self.limits.header_timeout, self._head_timed_out)
        self._set_waiting(True)

    def connection_lost(self, exc) -> None:
        self._disarm()
        self._set_waiting(False)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._after_events()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._after_events()
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self._arm(self.limits.linger, self._linger_over)  # nobody reads the rest of this body

    # --- bookkeeping ----------------------------------------------------------------
    def _after_events(self) -> None:
        """Waiting for a head: evictable, and under a deadline once its first byte came."""
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            self._set_waiting(True)
            if self._deadline is None and self.conn.trailing_data[0]:
                self._arm(self.limits.header_timeout, self._head_timed_out)
        else:
            self._set_waiting(False)
            if self._deadline is not None and self._deadline_is_head:
                self._disarm()

    def _set_waiting(self, waiting: bool) -> None:
        if waiting:
            if self not in self.waiting:
                self.waiting[self] = None
        else:
            self.waiting.pop(self, None)

    def _evict_oldest(self) -> bool:
        while self.waiting:
            victim, _ = self.waiting.popitem(last=False)
            if victim is self or victim.transport is None or victim.transport.is_closing():
                continue
            self.counters["evicted"] += 1
            victim._disarm()
            victim.transport.close()
            return True
        return False

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)
        self._deadline_is_head = callback == self._head_timed_out

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.counters["head_timeouts"] += 1
        if self.conn.trailing_data[0]:  # a half-sent head gets an answer; a silent socket just a close
            self.transport.write(HEAD_TIMEOUT)
        self._set_waiting(False)
        self.transport.close()

    def _linger_over(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.counters["lingering_closed"] += 1
            self.transport.close()


class QuietRepeats(logging.Filter):
    """Lets a message through at most once per `interval` seconds; the next one says how many were held back."""

    def __init__(self, interval: float = 10.0, max_keys: int = 256):
        super().__init__()
        self.interval = interval
        self.max_keys = max_keys
        self.seen: dict[tuple[str, str], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        slot = self.seen.get(key)
        if slot is not None and now - slot[0] < self.interval:
            slot[1] += 1
            return False
        if len(self.seen) >= self.max_keys:
            self.seen.clear()
        held = slot[1] if slot else 0
        self.seen[key] = [now, 0]
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.interval:g} s were not logged]"
        return True


#: Loggers that can repeat one message per connection or per accept() under attack.
NOISY_LOGGERS = ("uvicorn.error", "asyncio")


def quiet_noisy_loggers(interval: float = 10.0) -> None:
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietRepeats) for f in logger.filters):
            logger.addFilter(QuietRepeats(interval))


def raise_file_limit() -> int | None:
    """Lift the soft RLIMIT_NOFILE to the hard limit; the soft limit in force (None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    targets = [hard] if hard != resource.RLIM_INFINITY else []
    targets.append(10240)  # macOS refuses more than OPEN_MAX even when the hard limit is unlimited
    for target in targets:
        if soft != resource.RLIM_INFINITY and soft < target:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def fit_connections(limits: ConnectionLimits, file_limit: int | None) -> tuple[ConnectionLimits, str | None]:
    """`limits` with max_connections lowered to what `file_limit` leaves, and the warning to print if it was."""
    if file_limit is None or limits.max_connections + limits.backlog + RESERVED_FDS <= file_limit:
        return limits, None
    fitted = max(1, file_limit - limits.backlog - RESERVED_FDS)
    from dataclasses import replace

    return replace(limits, max_connections=fitted), (
        f"--max-connections {limits.max_connections} lowered to {fitted}: the process may open only "
        f"{file_limit} files (ulimit -n), {limits.backlog + RESERVED_FDS} of them kept for bursts of new "
        "connections and other uses")


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol subclass with its own limits, waiting list and counters (one per server)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"limits": limits, "waiting": OrderedDict(), "counters": Counter()})


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000, limits: ConnectionLimits | None = None,
                  log_level: str = "info", **extra: Any):
    """The uvicorn Config of `animetagnet serve` (also used by the tests and benchmarks)."""
    import uvicorn

    limits = limits or ConnectionLimits()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol_class(limits), ws="none",
                            timeout_keep_alive=limits.keep_alive, h11_max_incomplete_event_size=limits.max_header_bytes,
                            backlog=limits.backlog, **extra)
    quiet_noisy_loggers()  # after Config: it (re)configures uvicorn's loggers
    return config
