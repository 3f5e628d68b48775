"""``GET /events``: the store's event journal (``rootless/events.py``) as Docker's stream of
JSON objects.

Past events are sent when ``since`` is given; then, unless ``until`` has passed, the journal
is followed — every change made by the CLI, this service or a container's monitor shows up —
until ``until`` comes or the client goes (the server cancels the stream when the connection
closes; the follower's descriptor is closed then).
"""

from __future__ import annotations

import re
import time
from typing import Any, AsyncIterator

import trio

from .http import ApiError, Request, Response, json_stream
from .router import route

POLL = 0.2          # seconds between looks at the journal's size (a stat: no thread)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_time(value: str, now_ns: int) -> int:
    """Docker's time arguments, in nanoseconds: a Unix time (``1700000000``, ``1700000000.5``,
    what the CLI sends), an RFC 3339 date, or a Go duration before now (``10m``, ``1h30m``)."""
    value = value.strip()
    m = re.fullmatch(r"(\d+)(?:\.(\d{1,9}))?", value)
    if m:
        return int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "0").ljust(9, "0"))
    if re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+", value):
        total = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        return now_ns - int(total)
    import datetime
    try:
        d = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(value) from None
    if d.tzinfo is None:
        d = d.astimezone()
    return int(d.timestamp()) * 1_000_000_000 + d.microsecond * 1000


def _time_arg(req: Request, name: str, now_ns: int) -> int | None:
    value = req.arg(name)
    if not value:
        return None
    try:
        return parse_time(value, now_ns)
    except ValueError:
        raise ApiError(400, f"invalid {name} '{value}': give a Unix time (1700000000.5), an RFC 3339 date "
                            "or a duration before now (10m)") from None


@route("GET", "/events")
async def events(req: Request) -> Response:
    from .. import events as journal
    now = time.time_ns()
    since = _time_arg(req, "since", now)
    until = _time_arg(req, "until", now)
    filt = journal.Filter(req.filters())
    filt.check()
    if since is None and until is not None and until <= now:
        since = 0                # Docker: until alone in the past sends what happened before it
    store_root = req.store_root

    def start() -> tuple[list[dict[str, Any]], journal.Follower]:
        return journal.past(store_root, since, until)

    past, follower = await req.engine(start)

    async def stream() -> AsyncIterator[dict[str, Any]]:
        try:
            for e in past:
                if filt.match(e):
                    yield journal.docker_form(e)
            while until is None or time.time_ns() < until:
                delay = POLL if until is None else min(POLL, max(0.0, (until - time.time_ns()) / 1e9))
                await trio.sleep(delay)
                if not follower.changed():
                    continue
                for e in await trio.to_thread.run_sync(follower.read):
                    if until is not None and e["timeNano"] > until:
                        return
                    if filt.match(e):
                        yield journal.docker_form(e)
        finally:
            follower.close()
    return json_stream(stream(), on_close=follower.close)     # also when the client left before the head
