"""``/volumes``: list, create, inspect, remove and prune named volumes (the ``local`` driver
only), as ``rootless volume`` does."""

from __future__ import annotations

from typing import Any

from .http import ApiError, Request, Response, json_response, no_content
from .router import route


def _volumes(req: Request):
    from ..volumes import Volumes
    return Volumes(req.store)


@route("GET", "/volumes")
async def list_volumes(req: Request) -> Response:
    filters = req.filter_args()
    rows = await req.engine(lambda: _volumes(req).listed(filters))
    return json_response({"Volumes": rows, "Warnings": []})


def _create(req: Request, name: str | None, labels: dict[str, str]) -> dict[str, Any]:
    vols = _volumes(req)
    with vols.store.lock():
        return vols.get(vols.create(name, labels))


@route("POST", "/volumes/create")
async def create(req: Request) -> Response:
    body = await req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object: {\"Name\": ..., \"Labels\": {...}}")
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise ApiError(400, f"volume driver '{driver}' is not supported: use 'local' (or give none)")
    if body.get("DriverOpts"):
        raise ApiError(400, "volume driver options (DriverOpts, 'docker volume create -o') are not supported: "
                            "the local driver here keeps plain directories")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ApiError(400, "Labels must be an object of strings")
    name = body.get("Name") or None
    v = await req.engine(_create, req, name, {str(k): str(val) for k, val in labels.items()})
    return json_response(v, 201)


@route("GET", "/volumes/{name}")
async def inspect(req: Request, name: str) -> Response:
    return json_response(await req.engine(lambda: _volumes(req).get(name)))


def _remove(req: Request, name: str, force: bool) -> None:
    from ..sandbox import idmap
    from ..volumes import VolumeNotFound
    vols = _volumes(req)
    try:
        with vols.store.lock():
            vols.remove(name, idmap.detect(), force)
    except VolumeNotFound:
        if not force:
            raise


@route("DELETE", "/volumes/{name}")
async def remove(req: Request, name: str) -> Response:
    await req.engine(_remove, req, name, req.flag("force"))
    return no_content()


@route("POST", "/volumes/prune")
async def prune(req: Request) -> Response:
    from ..sandbox import idmap
    filters = req.filters()
    # API 1.41 prunes every unused volume; the 'all' filter (1.42) asks for that too
    filters.pop("all", None)
    labels = [f"{k}={v}" for k, values in filters.items() for v in values]
    removed, space = await req.engine(lambda: _volumes(req).prune(idmap.detect(), True, labels))
    return json_response({"VolumesDeleted": removed, "SpaceReclaimed": space})
