"""``/containers/{id}/archive``: ``docker cp`` and docker-py's get_archive/put_archive.

GET: a tar of the path, its stat in ``X-Docker-Container-Path-Stat`` (base64 JSON: name,
size, mode as Go's FileMode, mtime, linkTarget); HEAD: the stat alone (404 if nothing is
there); PUT: the body's tar extracted into the path, which must be a directory (404 if it
does not exist, 400 if it is not a directory).  The engine's ``container.copying`` does the
work inside the container's view of its files.
"""

from __future__ import annotations

import base64
import json

from .http import ApiError, Request, Response
from .router import route
from .streaming import BodyReader, bytes_from_thread, first_then_rest

STAT_HEADER = "X-Docker-Container-Path-Stat"


def _path(req: Request) -> str:
    path = req.arg("path")
    if not path:
        raise ApiError(400, "give the path in the container: path=/some/where")
    return path


def _stat_header(found: dict) -> tuple[str, str]:
    return STAT_HEADER, base64.b64encode(json.dumps(found).encode()).decode()


@route("GET", "/containers/{name}/archive")
async def get_archive(req: Request, name: str) -> Response:
    from ..container.copying import archive_out, stat_path
    path = _path(req)
    store = req.store
    found = await req.engine(stat_path, store, name, path)
    if req.method == "HEAD":
        return Response(200, b"", None, [_stat_header(found)])
    body = await first_then_rest(bytes_from_thread(lambda out: archive_out(store, name, path, out)))
    return Response(200, body, "application/x-tar", [_stat_header(found)])


@route("PUT", "/containers/{name}/archive")
async def put_archive(req: Request, name: str) -> Response:
    from ..container.copying import archive_in
    path = _path(req)
    store = req.store
    no_replace = req.flag("noOverwriteDirNonDir")
    keep_owner = req.flag("copyUIDGID")
    body = BodyReader(req)
    await req.engine(lambda: archive_in(store, name, path, body, no_overwrite_dir_non_dir=no_replace,
                                        keep_owner=keep_owner))
    return Response(200, b"", None)
