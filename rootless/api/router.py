"""Which handler answers a request: Docker's paths, with or without the ``/vX.Y`` prefix, and
the API version the client asked for checked against the range we speak.

Handler modules register with ``@route("GET", "/containers/{name}/json")``; ``{name}`` is one
path segment, ``{name:path}`` any text (image names hold slashes: ``/images/{name:path}/json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from .http import ApiError, Request, Response

API_VERSION = (1, 41)
MIN_API_VERSION = (1, 24)

Handler = Callable[..., Awaitable[Response]]


def version_text(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def split_version(path: str) -> tuple[tuple[int, int], str]:
    """``/v1.41/containers/json`` → ((1, 41), "/containers/json"); no prefix: the newest we speak.
    A version outside our range is refused as Docker refuses it."""
    m = _PREFIX.match(path)
    if not m:
        return API_VERSION, path
    v = (int(m.group(1)), int(m.group(2)))
    if v > API_VERSION:
        raise ApiError(400, f"client version {version_text(v)} is too new. Maximum supported API version "
                            f"is {version_text(API_VERSION)}")
    if v < MIN_API_VERSION:
        raise ApiError(400, f"client version {version_text(v)} is too old. Minimum supported API version is "
                            f"{version_text(MIN_API_VERSION)}, please upgrade your client to a newer version")
    return v, m.group(3)


@dataclass
class _Route:
    method: str
    pattern: re.Pattern
    handler: Handler
    template: str = ""


_ROUTES: list[_Route] = []


def _compile(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)(:path)?\}", template):
        out += re.escape(template[pos:m.start()])
        out += f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(template[pos:]) + "/?$")


def route(method: str, template: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _ROUTES.append(_Route(method, _compile(template), handler, template))
        return handler
    return register


def find(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler and its path parameters; 404 for a path we do not serve (405 for a known
    path with another method)."""
    from urllib.parse import unquote
    known_path = False
    for r in _ROUTES:
        m = r.pattern.match(path)
        if not m:
            continue
        if r.method == method or (method == "HEAD" and r.method == "GET"):
            return r.handler, {k: unquote(v) for k, v in m.groupdict().items()}
        known_path = True
    if known_path:
        raise ApiError(405, f"method {method} is not allowed on {path}")
    raise ApiError(404, f"page not found: {method} {path} is not part of the API rootless serves")


def routes() -> list[tuple[str, str]]:
    """(method, template) of every route registered so far (the fuzz test draws from them)."""
    return [(r.method, r.template) for r in _ROUTES]


# The handler modules, each registering its routes when imported.
HANDLER_MODULES = ("system", "containers", "streams", "execs", "archive", "images", "volumes", "networks",
                   "events")


def load_handlers() -> None:
    import importlib
    for name in HANDLER_MODULES:
        try:
            importlib.import_module(f"rootless.api.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rootless.api.{name}":
                raise


__all__ = ["API_VERSION", "MIN_API_VERSION", "route", "find", "split_version", "load_handlers", "routes", "Request"]
