"""Images: pull (``POST /images/create``), list, inspect, history, tag, remove, push, save
(``/images/get``), load, prune, search (refused), build (``POST /build``) and commit.

Long work streams Docker's JSON messages (``{"status": ..., "progressDetail": ..., "id": ...}``
for pull and push, ``{"stream": ...}`` for load and build) from an engine call running in a
thread (``streaming.from_thread``); an error before the first message is an HTTP error, one
after it an ``{"errorDetail": ..., "error": ...}`` message in the stream, as Docker does.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
from typing import Any, AsyncIterator, Callable

from ..errors import RootlessError, StoreError, UsageError
from ..image.reference import UNTAGGED_REPO
from .http import ApiError, Request, Response, json_response, json_stream
from .router import route as _route
from .server import status_of
from .streaming import Disconnected, bytes_from_thread, first_then_rest, from_thread, spool

UNTAGGED = UNTAGGED_REPO + "/"           # names of images loaded or committed without one


# --- shared ---------------------------------------------------------------------------------

def no_such_image(e: BaseException) -> BaseException:
    """An image the store does not have, in the words Docker's clients look for ("No such
    image": docker-py raises ImageNotFound for it)."""
    from ..errors import ImageNotFound
    if isinstance(e, ImageNotFound) and not str(e).startswith("No such image"):
        return ApiError(404, f"No such image: {e}")
    return e


def route(method: str, template: str):
    """``router.route``, with the store's ImageNotFound worded as Docker's."""
    def register(handler):
        import functools

        @functools.wraps(handler)
        async def wrapped(req: Request, **params: str) -> Response:
            try:
                return await handler(req, **params)
            except RootlessError as e:
                raise no_such_image(e) from None
        return _route(method, template)(wrapped)
    return register


def error_message(e: BaseException, code: int | None = None) -> dict[str, Any]:
    """Docker's in-stream error (after the 200 was sent)."""
    _status, message = status_of(_translated(e))
    detail: dict[str, Any] = {"message": message}
    if code:
        detail["code"] = code
    return {"errorDetail": detail, "error": message}


def _translated(e: BaseException) -> BaseException:
    """Registry errors as the status codes Docker gives them."""
    from ..registry import errors as reg
    e = no_such_image(e)
    if not isinstance(e, reg.RegistryError):
        return e
    text = str(e).replace("'rootless login", "'docker login")     # the client logs in, not us
    if isinstance(e, reg.NotFound):
        return ApiError(404, text)
    if isinstance(e, reg.AuthenticationRequired):
        return ApiError(401, text)
    if isinstance(e, reg.AccessDenied):
        return ApiError(403, text)
    return RootlessError(text)          # a 500, worded for the client


async def started_stream(items: AsyncIterator[Any]) -> Response:
    """A JSON stream whose first message is awaited before answering: a failure before it is
    an HTTP error status, a later one an error message in the stream."""
    it = items.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        first = None
    except Exception as e:  # noqa: BLE001 - answered as an HTTP error (Cancelled goes on as it is)
        await it.aclose()
        raise _translated(e) from None

    async def rest() -> AsyncIterator[Any]:
        try:
            if first is not None:
                yield first
            async for item in it:
                yield item
        except Disconnected:
            return
        except Exception as e:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            yield error_message(e, e.exit_code if isinstance(e, BuildFailed) else None)
        finally:
            await it.aclose()
    return json_stream(rest())


def credentials(req: Request, header: str = "x-registry-auth"):
    """The credentials of an ``X-Registry-Auth`` header (base64 JSON: username, password,
    serveraddress), or None."""
    raw = (req.headers.get(header) or "").strip()
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, RecursionError):
        raise ApiError(400, f"{header} is not base64-encoded JSON: send {{\"username\", \"password\", "
                            "\"serveraddress\"}} encoded with base64") from None
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        return None
    from ..registry import Credentials
    return Credentials(str(data["username"]), str(data["password"]))


def _unix(created: str | None) -> int:
    """An RFC 3339 time (nanoseconds allowed) as seconds since 1970; 0 when unreadable."""
    if not created:
        return 0
    text = str(created).replace("Z", "+00:00")
    date, dot, rest = text.partition(".")
    if dot:          # fractions longer than Python reads
        n = len(rest) - len(rest.lstrip("0123456789"))
        text = date + "." + rest[:n][:6].ljust(6, "0") + rest[n:]
    try:
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _visible_tags(tags: list[str]) -> list[str]:
    return [t for t in tags if not t.startswith(UNTAGGED)]


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}MB" if n >= 1e6 else f"{n / 1e3:.1f}kB"


class JsonProgress:
    """The engine's progress sink (``progress.ProgressFactory``) as Docker's messages."""

    def __init__(self, emit: Callable[[Any], None], verbs: dict[str, tuple[str, str, str]], verb: str,
                 items: list[tuple[str, int | None]]):
        self.emit = emit
        self.first, self.doing, self.finished = verbs.get(verb, ("Waiting", verb.capitalize(), "Complete"))
        self.sent: dict[str, int] = {}
        self.complete: set[str] = set()
        self.keys = [key for key, _size in items]
        for key, _size in items:
            emit({"status": self.first, "progressDetail": {}, "id": key[7:19]})

    def update(self, key: str, done: int, total: int | None = None) -> None:
        if key in self.complete:
            return
        last = self.sent.get(key, -1)
        step = max((total or 0) // 40, 256 << 10)
        finished = total is not None and done >= total
        if finished or done - last >= step:
            self.sent[key] = done
            bar = ""
            if total:
                filled = int(50 * min(done, total) / total)
                bar = "[" + "=" * filled + (">" if filled < 50 else "") + " " * max(0, 49 - filled) + "] "
            self.emit({"status": self.doing, "progressDetail": {"current": done, **({"total": total} if total else {})},
                       "progress": f"{bar}{_mb(done)}/{_mb(total)}", "id": key[7:19]})
        if finished:
            self.complete.add(key)
            self.emit({"status": self.finished, "progressDetail": {}, "id": key[7:19]})


def _factory(emit: Callable[[Any], None], verbs: dict[str, tuple[str, str, str]], made: list[JsonProgress],
             before: Callable[[], None] | None = None):
    def make(verb: str, items: list[tuple[str, int | None]]) -> JsonProgress:
        if before:
            before()
        sink = JsonProgress(emit, verbs, verb, items)
        made.append(sink)
        return sink
    return make


# --- pull and import: POST /images/create ------------------------------------------------------

PULL_VERBS = {"download": ("Pulling fs layer", "Downloading", "Download complete")}


def _pull_ref(image: str, tag: str | None) -> str:
    if not tag:
        return image
    if tag.startswith("sha256:"):
        return f"{image}@{tag}"
    return f"{image}:{tag}"


@route("POST", "/images/create")
async def create(req: Request) -> Response:
    image, src = req.arg("fromImage"), req.arg("fromSrc")
    if src:
        return await _import(req, src)
    if not image:
        raise ApiError(400, "give fromImage=NAME (pull) or fromSrc=- (import a root filesystem tar in the body)")
    tag = req.arg("tag") or ""
    from ..image.reference import normalize
    from ..registry import Reference
    ref_text = _pull_ref(image, tag)
    try:
        ref = Reference.parse(ref_text)
    except RootlessError as e:
        raise ApiError(400, f"invalid reference format: {e}") from None
    if not (ref.tag or ref.digest):
        ref = Reference.parse(ref_text + ":latest")
    creds = credentials(req)
    platform = req.arg("platform") or None
    store = req.store

    def work(emit: Callable[[Any], None]) -> None:
        from ..image.pull import pull
        from ..sandbox import idmap
        try:
            before = store.tags().get(normalize(str(ref))) if ref.tag else None
        except RootlessError:
            before = None
        said = []

        def pulling() -> None:
            if not said:
                said.append(True)
                emit({"status": f"Pulling from {ref.repository}", "id": ref.tag or ref.digest})
        sinks: list[JsonProgress] = []
        img = pull(store, idmap.detect(), str(ref), platform, True, progress=_factory(emit, PULL_VERBS, sinks, pulling),
                   credentials=creds)
        pulling()
        fetched = [key for sink in sinks for key in sink.keys]
        if before != img.manifest_digest:          # what the store had already
            try:
                layers = [d["digest"] for d in store.read_json(img.manifest_digest).get("layers") or []]
            except (OSError, ValueError, RootlessError):
                layers = []
            for digest in dict.fromkeys(layers):
                if digest not in fetched:
                    emit({"status": "Already exists", "progressDetail": {}, "id": digest[7:19]})
        for key in fetched:
            emit({"status": "Pull complete", "progressDetail": {}, "id": key[7:19]})
        emit({"status": f"Digest: {img.manifest_digest}"})
        name = ref.familiar if ref.tag else str(ref)
        if before == img.manifest_digest:
            emit({"status": f"Status: Image is up to date for {name}"})
        else:
            emit({"status": f"Status: Downloaded newer image for {name}"})
    return await started_stream(from_thread(work))


async def _import(req: Request, src: str) -> Response:
    if src != "-":
        raise ApiError(400, f"fromSrc={src}: only '-' (the tar in the request body) is supported; "
                            "download the file and send it as the body")
    repo, tag = req.arg("repo") or "", req.arg("tag") or ""
    ref = (f"{repo}:{tag}" if tag else repo) or None
    changes, message = req.args("changes"), req.arg("message") or ""
    store = req.store
    tmp = await req.engine(store.new_temp_dir, "api-import")
    try:
        path = await spool(req, tmp)
        from ..image.importer import import_rootfs
        from ..sandbox import idmap
        img, _devices = await req.engine(lambda: import_rootfs(store, idmap.detect(), path, ref, changes, message))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json_response({"status": img.id})


# --- docker login: POST /auth ---------------------------------------------------------------------

def _registry_host(server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``; ``127.0.0.1:5000`` unchanged."""
    text = server.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0] or "docker.io"


@route("POST", "/auth")
async def auth(req: Request) -> Response:
    """Check credentials against a registry (``docker login``): the client keeps them and
    sends them with each pull and push (X-Registry-Auth); the service stores nothing."""
    body = await req.json()
    if not isinstance(body, dict) or not body.get("username") or not body.get("password"):
        raise ApiError(400, "give username and password (and serveraddress) to log in")
    from ..registry import Credentials, RegistryClient
    server = _registry_host(str(body.get("serveraddress") or "docker.io"))
    creds = Credentials(str(body["username"]), str(body["password"]))

    def check() -> None:
        with RegistryClient(server, credentials=creds) as client:
            client.check_login()
    try:
        await req.engine(check)
    except RootlessError as e:
        raise _translated(e) from None
    return json_response({"Status": "Login Succeeded", "IdentityToken": ""})


# --- list, inspect, history ---------------------------------------------------------------------

def _list(store_root: str, filters: list[str]) -> list[dict[str, Any]]:
    from ..image.inspect import image_size, matching_images
    from ..image.store import Store
    store = Store(store_root)
    by_id: dict[str, dict[str, Any]] = {}
    for img in matching_images(store, filters):
        row = by_id.get(img.id)
        if row is None:
            labels = img.run_config.get("Labels") or None
            size = image_size(store, img)
            row = by_id[img.id] = {
                "Id": img.id, "ParentId": "", "RepoTags": [], "RepoDigests": [],
                "Created": _unix(img.config.get("created")), "Size": size, "VirtualSize": size,
                "SharedSize": -1, "Labels": labels, "Containers": -1}
        if img.ref and not img.ref.startswith(UNTAGGED):
            row["RepoTags"].append(img.ref)
            row["RepoDigests"].append(f"{img.ref.rpartition(':')[0]}@{img.manifest_digest}")
    for row in by_id.values():
        if not row["RepoTags"]:
            row["RepoTags"], row["RepoDigests"] = ["<none>:<none>"], ["<none>@<none>"]
    return sorted(by_id.values(), key=lambda r: -r["Created"])


@route("GET", "/images/json")
async def list_images(req: Request) -> Response:
    filters = req.filters()
    args = []
    for key, values in filters.items():
        if key not in ("dangling", "label", "reference", "before", "since"):
            raise ApiError(400, f"invalid filter '{key}': use dangling, label, reference, before or since")
        args += [f"{key}={v}" for v in values]
    if req.arg("filter"):                 # API < 1.28: ?filter=NAME
        args.append(f"reference={req.arg('filter')}")
    return json_response(await req.engine(_list, req.store_root, args))


def _inspect(store_root: str, name: str) -> dict[str, Any]:
    from ..image.inspect import ZERO_TIME, image_info
    from ..image.store import Store
    store = Store(store_root)
    info = image_info(store, store.resolve(name))
    info["RepoTags"] = _visible_tags(info["RepoTags"])
    info["RepoDigests"] = [d for d in info["RepoDigests"] if not d.startswith(UNTAGGED)]
    info["Created"] = info["Created"] or ZERO_TIME
    info["Metadata"] = {"LastTagTime": ZERO_TIME}
    info.update({"Container": "", "ContainerConfig": {}, "DockerVersion": "", "VirtualSize": info["Size"],
                 "GraphDriver": {"Name": "overlay", "Data": None}})
    return info


@route("GET", "/images/{name:path}/json")
async def inspect(req: Request, name: str) -> Response:
    return json_response(await req.engine(_inspect, req.store_root, name))


def _history(store_root: str, name: str) -> list[dict[str, Any]]:
    from ..image.inspect import history
    from ..image.store import Store
    store = Store(store_root)
    img = store.resolve(name)
    tags = _visible_tags(sorted(t for t, d in store.tags().items() if d == img.manifest_digest))
    out = []
    for i, row in enumerate(history(store, name)):
        out.append({"Id": row["Id"], "Created": _unix(row["Created"]), "CreatedBy": row["CreatedBy"],
                    "Tags": tags if i == 0 and tags else None, "Size": row["Size"], "Comment": row["Comment"]})
    return out


@route("GET", "/images/{name:path}/history")
async def history(req: Request, name: str) -> Response:
    return json_response(await req.engine(_history, req.store_root, name))


# --- tag, remove, prune, search -------------------------------------------------------------------

@route("POST", "/images/{name:path}/tag")
async def tag(req: Request, name: str) -> Response:
    repo, tag_ = req.arg("repo"), req.arg("tag")
    if not repo:
        raise ApiError(400, "give repo=NAME (and tag=TAG) to tag an image")
    target = f"{repo}:{tag_}" if tag_ else repo
    await req.engine(req.store.tag, name, target)
    return Response(201, b"", None)


@route("DELETE", "/images/{name:path}")
async def remove(req: Request, name: str) -> Response:
    from ..image.gc import remove_image
    from ..sandbox import idmap
    force = req.flag("force")
    store = req.store
    img = await req.engine(store.resolve, name)
    out = await req.engine(lambda: remove_image(store, idmap.detect(), name, force))
    answer: list[dict[str, str]] = [{"Untagged": t} for t in out.untagged if not t.startswith(UNTAGGED)]
    if img.id in out.blobs:
        answer.append({"Deleted": img.id})
    answer += [{"Deleted": d} for d in out.layers]
    return json_response(answer)


@route("POST", "/images/prune")
async def prune(req: Request) -> Response:
    from ..image.gc import prune as do_prune
    from ..sandbox import idmap
    all_images = False
    for key, values in req.filters().items():
        if key == "dangling":
            all_images = any(v.lower() in ("false", "0") for v in values)
        else:
            raise ApiError(400, f"invalid filter '{key}' for image prune: only dangling=true|false is supported")
    store = req.store
    out = await req.engine(lambda: do_prune(store, idmap.detect(), all_images))
    deleted = [{"Untagged": t} for t in out.untagged if not t.startswith(UNTAGGED)] + \
              [{"Deleted": d} for d in out.layers]
    return json_response({"ImagesDeleted": deleted or None, "SpaceReclaimed": out.reclaimed})


@route("GET", "/images/search")
async def search(req: Request) -> Response:
    raise ApiError(501, "image search is not supported by rootless: look the image up on the registry's "
                        "web site, then pull it by its full name")


# --- push -------------------------------------------------------------------------------------------

PUSH_VERBS = {"compress": ("Preparing", "Compressing", "Compressed"),
              "upload": ("Preparing", "Pushing", "Pushed")}
OUTCOMES = {"exists": "Layer already exists", "mounted": "Mounted from another repository", "pushed": "Pushed"}


@route("POST", "/images/{name:path}/push")
async def push(req: Request, name: str) -> Response:
    from ..image.reference import normalize
    tag_ = req.arg("tag") or ""
    store = req.store
    creds = credentials(req)
    source = f"{name}:{tag_}" if tag_ else name
    if tag_:
        sources = [normalize(source)]
        await req.engine(store.resolve, source)
    else:                          # every tag of the repository, as Docker pushes them
        repo = normalize(name).rpartition(":")[0]
        sources = sorted(t for t in await req.engine(store.tags) if t.rpartition(":")[0] == repo)
        if not sources:
            await req.engine(store.resolve, name)           # the 404, in the store's words
            sources = [normalize(name)]

    def work(emit: Callable[[Any], None]) -> None:
        from ..image.push import push as do_push
        from ..registry import Reference
        ref = Reference.parse(sources[0])
        emit({"status": f"The push refers to repository [{ref.registry}/{ref.repository}]"})
        for src in sources:
            sinks: list[JsonProgress] = []

            def report(line: str) -> None:
                short, _, outcome = line.partition(": ")
                emit({"status": OUTCOMES.get(outcome, outcome), "progressDetail": {}, "id": short})
            digest = do_push(store, src, None, True, progress=_factory(emit, PUSH_VERBS, sinks), report=report,
                             credentials=creds)
            t = src.rpartition(":")[2]
            emit({"status": f"{t}: digest: {digest}"})
            emit({"progressDetail": {}, "aux": {"Tag": t, "Digest": digest}})
    return await started_stream(from_thread(work))


# --- save and load ---------------------------------------------------------------------------------

async def _save(req: Request, names: list[str]) -> Response:
    from ..image.archive import save
    store = req.store
    for n in names:
        await req.engine(store.resolve, n)               # 404 before the archive starts
    body = await first_then_rest(bytes_from_thread(lambda out: save(store, names, "docker-archive", out)))
    return Response(200, body, "application/x-tar")


@route("GET", "/images/{name:path}/get")
async def save_one(req: Request, name: str) -> Response:
    return await _save(req, [name])


@route("GET", "/images/get")
async def save_many(req: Request) -> Response:
    names = [n for value in req.args("names") for n in value.split(",") if n]
    if not names:
        raise ApiError(400, "give the images to save: names=NAME (repeatable)")
    return await _save(req, names)


@route("POST", "/images/load")
async def load(req: Request) -> Response:
    from ..image.archive import load as do_load
    from ..sandbox import idmap
    store = req.store
    tmp = await req.engine(store.new_temp_dir, "api-load")
    try:
        path = await spool(req, tmp, "archive")
        try:
            loaded = await req.engine(lambda: do_load(store, idmap.detect(), path))
        except (StoreError, UsageError) as e:        # the archive sent is not one we can load
            raise ApiError(400, f"cannot load the archive sent: {e}".replace(path, "the request's body")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = []
    for img, tags in loaded:
        for t in tags:
            lines.append(f"Loaded image ID: {img.id}\n" if t.startswith(UNTAGGED_REPO + "/")
                         else f"Loaded image: {t}\n")

    async def items() -> AsyncIterator[Any]:
        for line in lines:
            yield {"stream": line}
    return json_stream(items())


# --- build: POST /build (the legacy builder's protocol) ---------------------------------------------

def _json_arg(req: Request, name: str) -> dict[str, str]:
    text = req.arg(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, f"invalid {name}: {text!r} is not a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"invalid {name}: expected a JSON object of strings")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _build_messages(msg: dict[str, Any], quiet: bool) -> list[dict[str, Any]]:
    """The worker's message (build/worker.py) as Docker's legacy builder says it."""
    if "step" in msg:
        n, total, text = msg["step"]
        return [] if quiet else [{"stream": f"Step {n}/{total} : {text}\n"}]
    if "cached" in msg:
        return [] if quiet else [{"stream": " ---> Using cache\n"}]
    if "output" in msg:
        return [] if quiet else [{"stream": msg["output"]}]
    if "warning" in msg:
        return [] if quiet else [{"stream": f"[WARNING]: {msg['warning']}\n"}]
    if "image" in msg:
        image_id = msg["image"]
        if quiet:
            return [{"aux": {"ID": image_id}}, {"stream": image_id + "\n"}]
        return [{"aux": {"ID": image_id}}, {"stream": f"Successfully built {image_id[7:19]}\n"}] + \
               [{"stream": f"Successfully tagged {t}\n"} for t in msg.get("tags") or []]
    return []


class BuildFailed(RootlessError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


@route("POST", "/build")
async def build(req: Request) -> Response:
    import os
    import sys
    import trio
    from ..build.worker import STOP_SIGNAL
    if req.arg("remote"):
        raise ApiError(400, "remote build contexts (remote=URL) are not supported: send the context as a tar body")
    from ..image.reference import normalize
    tags = [normalize(t) for t in req.args("t") if t]
    network = req.arg("networkmode") or "default"
    if network not in ("default", "none", "host"):
        network = "default"                     # bridge and named networks: the default network
    pull = req.arg("pull") not in (None, "", "0", "false", "False")
    quiet = req.flag("q")
    store = req.store
    tmp = await req.engine(store.new_temp_dir, "api-build")
    scratch = os.path.join(tmp, "context")
    os.mkdir(scratch)
    request = {"store": req.store_root, "context": "", "scratch": scratch,
               "dockerfile": req.arg("dockerfile") or None, "tags": tags, "build_args": _json_arg(req, "buildargs"),
               "labels": _json_arg(req, "labels"), "target": req.arg("target") or None,
               "no_cache": req.flag("nocache"), "pull": pull, "network": network}
    try:
        request["context"] = await spool(req, tmp, "context.tar")
        proc = await trio.lowlevel.open_process([sys.executable, "-m", "rootless.build.worker"],
                                                stdin=-1, stdout=-1, stderr=None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    async def messages() -> AsyncIterator[Any]:
        try:
            await proc.stdin.send_all(json.dumps(request).encode() + b"\n")
            await proc.stdin.aclose()
            pending = b""
            failed: dict[str, Any] | None = None
            while True:
                data = await proc.stdout.receive_some(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:        # the worker's last word: it ends now
                        failed = msg
                    for item in _build_messages(msg, quiet):
                        yield item
            code = await proc.wait()
            if failed is not None:
                if failed.get("usage"):
                    raise ApiError(400, failed["error"])
                raise BuildFailed(failed["error"], int(failed.get("code") or 1))
            if code != 0:
                raise BuildFailed(f"the build ended with status {code} (see the service's log)", 1)
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.send_signal(STOP_SIGNAL)   # the client went away: stop the build
                    with trio.move_on_after(30):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    await pipe.aclose()
            shutil.rmtree(tmp, ignore_errors=True)
    return await started_stream(messages())


# --- commit: POST /commit ---------------------------------------------------------------------------

def config_changes(config: Any) -> list[str]:
    """A container config sent with a commit (Cmd, Entrypoint, Env, Labels, WorkingDir, User,
    ExposedPorts, Volumes, StopSignal) as the Dockerfile instructions ``--change`` takes."""
    if not config:
        return []
    if not isinstance(config, dict):
        raise ApiError(400, "the commit's body must be a container config (a JSON object)")
    def of(key: str, kind: type, what: str):
        value = config.get(key)
        if value in (None, "", [], {}):
            return kind()
        if not isinstance(value, kind):
            raise ApiError(400, f"invalid commit config: {key} must be {what}")
        return value
    out = []
    for key, keyword in (("Cmd", "CMD"), ("Entrypoint", "ENTRYPOINT")):
        value = config.get(key)
        if isinstance(value, str) and value:
            value = [value]
        if value not in (None, [], ""):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ApiError(400, f"invalid commit config: {key} must be a list of strings")
            out.append(f"{keyword} {json.dumps(value)}")
    for item in of("Env", list, "a list of KEY=VALUE strings"):
        k, sep, v = str(item).partition("=")
        if not sep or not k:
            raise ApiError(400, f"invalid commit config: Env entry {item!r} is not KEY=VALUE")
        out.append(f"ENV {k}={json.dumps(v)}")
    for k, v in of("Labels", dict, "an object of strings").items():
        out.append(f"LABEL {json.dumps(str(k))}={json.dumps(str(v))}")
    for key, keyword in (("WorkingDir", "WORKDIR"), ("User", "USER"), ("StopSignal", "STOPSIGNAL")):
        value = of(key, str, "a string")
        if value:
            out.append(f"{keyword} {value}")
    for port in of("ExposedPorts", dict, 'an object like {"80/tcp": {}}'):
        out.append(f"EXPOSE {port}")
    for volume in of("Volumes", dict, 'an object like {"/data": {}}'):
        out.append(f"VOLUME {json.dumps([volume])}")
    return out


@route("POST", "/commit")
async def commit(req: Request) -> Response:
    from ..container.commit import commit as do_commit
    from ..sandbox import idmap
    container = req.arg("container")
    if not container:
        raise ApiError(400, "give the container to commit: container=NAME")
    repo, tag_ = req.arg("repo") or "", req.arg("tag") or ""
    ref = (f"{repo}:{tag_}" if tag_ else repo) or None
    changes = [c for value in req.args("changes") for c in value.splitlines() if c.strip()]
    changes = config_changes(await req.json()) + changes
    store = req.store
    done = await req.engine(lambda: do_commit(store, idmap.detect(), container, ref, message=req.arg("comment") or "",
                                              author=req.arg("author") or "", changes=changes,
                                              pause=req.flag("pause", True)))
    return json_response({"Id": done.image.id}, 201)
