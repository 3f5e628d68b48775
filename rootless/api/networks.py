"""``/networks``: Docker's predefined networks and the user networks of ``rootless network``
(``bridge`` driver, one per subnet): list, inspect, create, remove, prune, connect and
disconnect containers.

The predefined ``bridge``, ``host`` and ``none`` are listed because clients and compose look
them up: ``bridge`` is the default mode (slirp4netns or pasta: a network namespace of the
container's own, no bridge shared with other containers), ``host`` and ``none`` the modes
of those names.  They cannot be removed, and containers cannot be connected to them later.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .http import ApiError, Request, Response, json_response
from .router import route

PREDEFINED = {"bridge": "bridge", "host": "host", "none": "null"}


def _predefined_id(name: str) -> str:
    return hashlib.sha256(f"rootless predefined network {name}".encode()).hexdigest()


def _predefined(name: str) -> dict[str, Any]:
    config = [{"Subnet": "10.0.2.0/24", "Gateway": "10.0.2.2"}] if name == "bridge" else []
    options = {"com.docker.network.bridge.default_bridge": "true"} if name == "bridge" else {}
    return {"Name": name, "Id": _predefined_id(name), "Created": "0001-01-01T00:00:00Z", "Scope": "local",
            "Driver": PREDEFINED[name], "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None, "Config": config},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": {}, "Options": options, "Labels": {}}


def _which_predefined(ref: str) -> str | None:
    for name in PREDEFINED:
        if ref == name or (len(ref) >= 3 and _predefined_id(name).startswith(ref)):
            return name
    return None


def _networks(req: Request):
    from ..network.user_networks import Networks
    return Networks(req.store)


def _all(req: Request) -> list[dict[str, Any]]:
    nets = _networks(req)
    return [_predefined(n) for n in PREDEFINED] + [nets.inspect(n.name) for n in nets.all()]


def _matches(pattern: str, text: str) -> bool:
    """Docker's filter match: a regular expression searched in the text (a bad one: a substring)."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return pattern in text


def _filtered(rows: list[dict[str, Any]], filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    known = {"name", "id", "label", "driver", "type", "scope", "dangling"}
    for key in filters:
        if key not in known:
            raise ApiError(400, f"invalid filter '{key}': use one of {', '.join(sorted(known))}")

    def keep(n: dict[str, Any]) -> bool:
        f = filters
        if f.get("name") and not any(_matches(v, n["Name"]) for v in f["name"]):
            return False
        if f.get("id") and not any(n["Id"].startswith(v) for v in f["id"]):
            return False
        if f.get("driver") and n["Driver"] not in f["driver"]:
            return False
        if f.get("scope") and n["Scope"] not in f["scope"]:
            return False
        if f.get("type"):
            kind = "builtin" if n["Name"] in PREDEFINED else "custom"
            if any(t not in ("builtin", "custom") for t in f["type"]):
                raise ApiError(400, "invalid filter 'type': use builtin or custom")
            if kind not in f["type"]:
                return False
        for want in f.get("label", ()):
            k, eq, v = want.partition("=")
            if k not in n["Labels"] or (eq and str(n["Labels"][k]) != v):
                return False
        for d in f.get("dangling", ()):
            if d.lower() not in ("true", "false", "1", "0"):
                raise ApiError(400, "invalid filter 'dangling': use true or false")
            if (d.lower() in ("true", "1")) != (n["Name"] not in PREDEFINED and not n["Containers"]):
                return False
        return True
    return [n for n in rows if keep(n)]


@route("GET", "/networks")
async def list_networks(req: Request) -> Response:
    filters = req.filters()
    return json_response(_filtered(await req.engine(_all, req), filters))


@route("GET", "/networks/{ref}")
async def inspect(req: Request, ref: str) -> Response:
    name = _which_predefined(ref)
    if name:
        return json_response(_predefined(name))
    return json_response(await req.engine(lambda: _networks(req).inspect(ref)))


@route("POST", "/networks/create")
async def create(req: Request) -> Response:
    body = await req.json()
    if not isinstance(body, dict) or not body.get("Name"):
        raise ApiError(400, "the body must be a JSON object with a Name: {\"Name\": \"mynet\"}")
    name = str(body["Name"])
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise ApiError(400, f"network driver '{driver}' is not supported: use bridge (or give none)")
    if name in PREDEFINED:
        raise ApiError(409, f"network with name {name} already exists (a predefined network)")
    if body.get("EnableIPv6"):
        raise ApiError(400, "IPv6 on user networks is not supported yet: leave EnableIPv6 off")
    ipam = body.get("IPAM") or {}
    if (ipam.get("Driver") or "default") != "default":
        raise ApiError(400, f"IPAM driver '{ipam.get('Driver')}' is not supported: use default")
    configs = ipam.get("Config") or []
    if len(configs) > 1:
        raise ApiError(400, "one IPAM Config (one IPv4 subnet) per network is supported")
    subnet = None
    if configs:
        cfg = configs[0] or {}
        subnet = cfg.get("Subnet") or None
        if cfg.get("IPRange") or cfg.get("AuxiliaryAddresses"):
            raise ApiError(400, "IPRange and AuxiliaryAddresses are not supported: give a Subnet only")
        if cfg.get("Gateway") and subnet:
            import ipaddress
            try:
                first = str(next(ipaddress.ip_network(subnet).hosts()))
            except ValueError:
                first = None
            if cfg["Gateway"] != first:
                raise ApiError(400, f"the gateway is the subnet's first address ({first}): leave Gateway out")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ApiError(400, "Labels must be an object of strings")
    net = await req.engine(lambda: _networks(req).create(name, subnet, bool(body.get("Internal")),
                                                         {str(k): str(v) for k, v in labels.items()}))
    return json_response({"Id": net.id, "Warning": ""}, 201)


@route("DELETE", "/networks/{ref}")
async def remove(req: Request, ref: str) -> Response:
    name = _which_predefined(ref)
    if name:
        raise ApiError(403, f"{name} is a pre-defined network and cannot be removed")
    await req.engine(lambda: _networks(req).remove(ref))
    return Response(204, b"", None)


@route("POST", "/networks/prune")
async def prune(req: Request) -> Response:
    filters = req.filters()
    args = []
    for key, values in filters.items():
        for v in values:
            args.append(f"{key}={_timestamp(v) if key == 'until' else v}")
    removed = await req.engine(lambda: _networks(req).prune(args))
    return json_response({"NetworksDeleted": removed})


def _timestamp(value: str) -> str:
    """until=: a Unix time, an RFC 3339 date, or a duration before now (10m, 24h)."""
    import time
    from .events import parse_time
    try:
        return str(parse_time(value, time.time_ns()) / 1e9)
    except ValueError:
        raise ApiError(400, f"invalid until '{value}': give a Unix time, a date or a duration such as 24h") from None


async def _container_body(req: Request, ref: str) -> tuple[str, dict[str, Any]]:
    name = _which_predefined(ref)
    if name:
        raise ApiError(400, f"containers cannot be connected to or disconnected from '{name}' once made: "
                            "it is their network mode (--network), chosen when they are created")
    body = await req.json()
    if not isinstance(body, dict) or not body.get("Container"):
        raise ApiError(400, "the body must name the container: {\"Container\": \"NAME\"}")
    return str(body["Container"]), body


@route("POST", "/networks/{ref}/connect")
async def connect(req: Request, ref: str) -> Response:
    from ..network.user_networks import connect as join
    from ..paths import runtime_dir
    from ..sandbox import idmap
    container, body = await _container_body(req, ref)
    endpoint = body.get("EndpointConfig") or {}
    ipam = endpoint.get("IPAMConfig") or {}
    if ipam.get("IPv4Address") or ipam.get("IPv6Address"):
        raise ApiError(400, "a fixed address (IPAMConfig) is not supported: the network gives the next free one")
    aliases = [str(a) for a in endpoint.get("Aliases") or ()]
    await req.engine(lambda: join(req.store, idmap.detect(), runtime_dir(), ref, container, aliases))
    return Response(200, b"", None)


@route("POST", "/networks/{ref}/disconnect")
async def disconnect(req: Request, ref: str) -> Response:
    from ..network.user_networks import disconnect as leave
    from ..paths import runtime_dir
    container, _body = await _container_body(req, ref)
    await req.engine(lambda: leave(req.store, runtime_dir(), ref, container))
    return Response(200, b"", None)
