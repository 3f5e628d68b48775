"""Running a build plan: each stage's steps on the layers so far, with the build cache.

A stage's state is its parent image in the store (an image base; None for scratch), the
layers its steps added, their history entries, and the image config so far.  Nothing is
written to the store's images until the target is done (``image.importer.new_image``); a
stage built on another stage starts from that one's state.

* RUN: a container made with the engine's own ``run.plan``/``create``/``start_planned``
  from an image that exists only here (the state), its output piped to the reporter, on
  the default storage driver; its changes become a layer (``container.commit.layer_of``,
  ``consume``: the upper directory's files are taken, not copied) and the container is
  removed.  ``--mount``s are bind mounts, tmpfs or the cache's directories.
* COPY/ADD: ``copying.write_layer`` writes the layer as a tar, as root of a user namespace
  with our maps (sources and the image may hold files of sub-ids); it is stored as ``import``
  stores one.
* Config steps change the config and add an ``empty_layer`` history entry.

Cache keys chain from the base image's id (plan.cache_key); a COPY's key holds the digest of
its sources' contents, a ``--from`` stage's its layers' ids.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import BuildError, RootlessError, UsageError
from ..image.store import Image, Store
from ..sandbox import idmap
from . import plan as planmod
from ..image.buildcache import BuildCache, Entry
from .context import BuildContext, HashCache
from .fsview import LayersView


@dataclass
class Secret:
    id: str
    src: str


@dataclass
class BuildRequest:
    """What ``rootless build`` was asked (the face parses the flags into this)."""
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    network: str = "default"           # the RUN steps' network unless a step says --network
    secrets: list[Secret] = field(default_factory=list)
    storage_driver: str = "auto"
    source_date_epoch: int | None = None


class Reporter:
    """How the build tells the face what happens (the face prints; the API will stream)."""

    def step(self, number: int, total: int, text: str) -> None: ...
    def cached(self) -> None: ...
    def output(self, data: bytes) -> None: ...
    def done(self, seconds: float) -> None: ...
    def warning(self, text: str) -> None: ...


@dataclass
class _State:
    parent: Image | None                # the base image in the store (None: scratch)
    layers: list[str]                   # diff ids added by this build, bottom first
    history: list[dict]                 # their history entries (and the empty ones)
    config: dict                        # the whole image config (architecture, os, config...)
    key: str                            # the cache key of the last step (the chain)
    created: str = ""                   # when its last layer was made (config steps take it too)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.parent.diff_ids if self.parent else ()) + self.layers

    def image(self) -> Image:
        """An image object for the engine's run, never stored."""
        cfg = copy.deepcopy(self.config)
        cfg["rootfs"] = {"type": "layers", "diff_ids": self.diff_ids}
        raw = json.dumps(cfg, sort_keys=True).encode()
        return Image(None, "", "sha256:" + hashlib.sha256(raw).hexdigest(), cfg, tuple(self.diff_ids))


class Builder:
    def __init__(self, store: Store, maps: idmap.IdMaps, ctx: BuildContext, req: BuildRequest,
                 reporter: Reporter) -> None:
        self.store, self.maps, self.ctx, self.req, self.out = store, maps, ctx, req, reporter
        self.cache = BuildCache(store)
        self.hashes = HashCache()
        self.results: dict[int, _State] = {}
        self.stage_names: list[str | None] = []      # every stage's name, by index (BuildPlan.all_stages)
        self.warned_single = False
        self._downloads: dict = {}

    # ------------------------------------------------------------------ images
    def _image(self, ref: str, platform: str | None) -> Image:
        """A base image or a --from image: from the store, pulled when missing (--pull: always;
        $ROOTLESS_PULL_POLICY as for run)."""
        from ..image.obtain import ensure
        policy = "always" if self.req.pull else (os.environ.get("ROOTLESS_PULL_POLICY") or "missing")
        try:
            return ensure(self.store, self.maps, ref, policy, platform)
        except RootlessError as e:
            raise BuildError(f"FROM {ref}: {e}") from None

    def image_config(self, ref: str, platform: str | None) -> dict:
        return self._image(ref, platform).config

    # ------------------------------------------------------------------ build
    def build(self, bplan: planmod.BuildPlan) -> Image:
        self.stage_names = list(bplan.all_stages)
        for w in bplan.warnings:
            self.out.warning(w)
        total = sum(1 + len(s.steps) for s in bplan.stages)
        number = 0
        for stage in bplan.stages:
            number += 1
            self.out.step(number, total, self._from_text(stage))
            state = self._base(stage)
            self.out.done(0.0)
            for step in stage.steps:
                number += 1
                self.out.step(number, total, self._step_text(step))
                started = time.monotonic()
                cached = self._step(stage, step, state)
                if cached:
                    self.out.cached()
                else:
                    self.out.done(time.monotonic() - started)
            state.config["config"] = copy.deepcopy(stage.config)
            self.results[stage.index] = state
        return self._write(bplan.target, self.results[bplan.target.index])

    def _from_text(self, stage: planmod.Stage) -> str:
        base = stage.base
        what = "scratch" if base.kind == "scratch" else (
            base.ref if base.kind == "image" else f"stage {base.stage}")
        return f"FROM {what}" + (f" AS {stage.name}" if stage.name else "")

    @staticmethod
    def _step_text(step: planmod.Step) -> str:
        if isinstance(step, planmod.CopyStep):       # its created_by needs the sources' digest
            return f"{step.keyword} {' '.join(step.sources) or '<<heredoc'} {step.dest}"
        return getattr(step, "created_by", "") or step.keyword

    def _base(self, stage: planmod.Stage) -> _State:
        base = stage.base
        if base.kind == "stage":
            prev = self.results[base.stage]
            return _State(prev.parent, list(prev.layers), list(prev.history), copy.deepcopy(prev.config), prev.key,
                          prev.created)
        if base.kind == "scratch":
            arch = planmod.host_platform().split("/")
            cfg = {"architecture": arch[1], "os": arch[0], "config": {}}
            return _State(None, [], [], cfg, "sha256:" + hashlib.sha256(b"scratch").hexdigest(), self._epoch_or(
                "1970-01-01T00:00:00Z"))
        img = self._image(base.ref, base.platform)
        cfg = {k: copy.deepcopy(v) for k, v in img.config.items() if k not in ("rootfs", "history", "created")}
        return _State(img, [], [], cfg, img.id, self._epoch_or(str(img.config.get("created") or "")))

    def _epoch_or(self, when: str) -> str:
        """SOURCE_DATE_EPOCH as RFC 3339 when set, else ``when``."""
        import datetime
        if self.req.source_date_epoch is None:
            return when
        return datetime.datetime.fromtimestamp(self.req.source_date_epoch, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def _now(self) -> str:
        from ..image.importer import now_rfc3339
        return self._epoch_or(now_rfc3339())

    # ------------------------------------------------------------------ steps
    def _step(self, stage: planmod.Stage, step: planmod.Step, state: _State) -> bool:
        """Apply ``step`` to ``state``; True if its layer came from the cache."""
        if step.kind == "CONFIG":
            planmod.apply_config(state.config.setdefault("config", {}), step)
            if getattr(step, "created_by", ""):
                state.history.append({"created": state.created, "created_by": step.created_by, "empty_layer": True})
            return False
        if step.kind == "RUN":
            self._check_secrets(step)
            extra = self._run_mount_material(step)
            key = planmod.cache_key(state.key, step, extra)
            created_by = step.created_by
            make = lambda: self._run(stage, step, state)  # noqa: E731
        else:
            digest, created_by, source_view = self._copy_digest(step)
            key = planmod.cache_key(state.key, step, digest)
            make = lambda: self._copy(step, state, source_view)  # noqa: E731
        entry = None if self.req.no_cache else self.cache.get(key)
        cached = entry is not None
        try:
            if entry is None:
                entry = Entry(make(), created_by, self._now())
                self.cache.put(key, entry)
        finally:
            for d in self._downloads.values():
                shutil.rmtree(os.path.dirname(d.path), ignore_errors=True)
            self._downloads = {}
        state.created = entry.created or self._now()
        if entry.diff_id:
            state.layers.append(entry.diff_id)
            state.history.append({"created": state.created, "created_by": created_by})
        else:
            state.history.append({"created": state.created, "created_by": created_by, "empty_layer": True})
        state.key = key
        return cached

    def _check_secrets(self, step: planmod.RunStep) -> None:
        """A required secret that was not given fails the step, cached or not (as BuildKit)."""
        given = {s.id for s in self.req.secrets}
        for m in step.mounts:
            if m.type == "secret" and m.required and (m.id or "") not in given:
                raise BuildError(f"{step.filename}:{step.line}: RUN --mount=type=secret,id={m.id}: no such "
                                 f"secret; pass it with --secret id={m.id},src=FILE")

    # RUN
    def _run_mount_material(self, step: planmod.RunStep) -> str | None:
        """What the step's bind mounts read: part of its cache key."""
        parts = []
        for m in step.mounts:
            if m.type != "bind":
                continue
            if m.from_ is None:
                from .context import digest_sources
                parts.append(digest_sources(self.ctx.view, [m.source or "/"], cache=self.hashes).hex)
            else:
                parts.append(",".join(self._from_layers(m.from_)))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest() if parts else None

    def _from_layers(self, name: str) -> list[str]:
        """The layer ids of a stage (by name or index) or an image, for --from / from=."""
        for index, stage_name in enumerate(self.stage_names):
            if name == str(index) or (stage_name is not None and name.lower() == stage_name.lower()):
                if index not in self.results:
                    raise BuildError(f"stage {name} is used before it is built")
                return self.results[index].diff_ids
        return list(self._image(name, None).diff_ids)

    def _run(self, stage: planmod.Stage, step: planmod.RunStep, state: _State) -> str:
        from ..container import commit as commit_mod
        from ..container.records import Containers
        from ..container.run import RunOptions, create, plan, start_planned
        scratch = self.store.new_temp_dir("build")
        rec = None
        try:
            mounts, tmpfs, targets = self._mounts(step, scratch)
            network = step.network if step.network != "default" else self.req.network
            opts = RunOptions(image="(build)", command=list(step.argv), entrypoint="", env=list(step.env),
                              workdir=step.workdir or "/", user=step.user or None,
                              network=None if network == "default" else network,
                              mount=mounts, tmpfs=tmpfs, storage_driver=self.req.storage_driver,
                              hostname="buildkitsandbox")
            image = state.image()
            try:
                p = plan(self.store, opts, image=image)
            except UsageError as e:
                raise BuildError(f"{step.filename}:{step.line}: RUN cannot run: {e}") from None
            if p.warnings and not self.warned_single:
                for w in p.warnings:
                    self.out.warning(w)
                self.warned_single = True
            rec = create(self.store, p, started_later=False, builder=True)
            code = self._run_piped(lambda stdio: start_planned(self.store, p, rec, None, self.out.warning,
                                                               stdio=stdio))
            if code != 0:
                raise StepFailed(step, code)
            layer, warnings = commit_mod.layer_of(self.store, self.maps, rec.id, pause=False,
                                                  source_date_epoch=self.req.source_date_epoch, consume=True,
                                                  image=image, ignore=self._ignored(targets))
            for w in warnings:
                self.out.warning(w)
            return "" if layer.empty else layer.diff_id
        finally:
            if rec is not None:
                from ..container.records import ContainerGone
                try:
                    records = Containers(self.store)
                    records.remove(records.find(rec.id), self.maps, force=True)
                except (RootlessError, ContainerGone):
                    pass
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_piped(self, start: Callable[[tuple[int, int, int]], int]) -> int:
        """Run ``start`` with the container's stdout and stderr on a pipe whose output goes to
        the reporter (a thread reads it while the container runs)."""
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)

        def pump() -> None:
            while chunk := os.read(r, 65536):
                self.out.output(chunk)
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            return start((null, w, w))
        finally:
            os.close(w)
            os.close(null)
            t.join(30)
            os.close(r)

    def _mounts(self, step: planmod.RunStep, scratch: str) -> tuple[list[str], list[str], list[str]]:
        """--mount options as run's --mount/--tmpfs values, and every target (for the layer)."""
        mounts, tmpfs, targets = [], [], []
        secrets = {s.id: s.src for s in self.req.secrets}
        for m in step.mounts:
            targets.append(m.target)
            if m.type == "bind":
                source = self._bind_source(m, scratch)
                mounts.append(f"type=bind,source={source},target={m.target}" + (",readonly" if m.readonly else ""))
            elif m.type == "cache":
                path = self.cache.mount_dir(m.id or m.target, m.mode if m.mode is not None else 0o755)
                mounts.append(f"type=bind,source={path},target={m.target}" + (",readonly" if m.readonly else ""))
            elif m.type == "tmpfs":
                tmpfs.append(m.target + (f":size={m.size}" if m.size else ""))
            elif m.type == "secret":
                src = secrets.get(m.id or "")
                if src is None:
                    if m.required:
                        raise BuildError(f"{step.filename}:{step.line}: RUN --mount=type=secret,id={m.id}: no such "
                                         f"secret; pass it with --secret id={m.id},src=FILE")
                    targets.pop()
                    continue
                copied = os.path.join(scratch, f"secret-{len(targets)}")
                shutil.copyfile(src, copied)
                os.chmod(copied, m.mode if m.mode is not None else 0o400)
                mounts.append(f"type=bind,source={copied},target={m.target},readonly")
            else:
                raise BuildError(f"{step.filename}:{step.line}: RUN --mount=type={m.type} is not supported by "
                                 "rootless build (bind, cache, tmpfs and secret are)")
        for i, f in enumerate(step.files):
            path = os.path.join(scratch, f"file-{i}")
            with open(path, "w") as out:
                out.write(f.content)
            os.chmod(path, f.mode)
            mounts.append(f"type=bind,source={path},target={f.path},readonly")
            targets.append(f.path)
        return mounts, tmpfs, targets

    def _bind_source(self, m, scratch: str) -> str:
        rel = (m.source or "/").strip("/")
        if m.from_ is None:
            source = os.path.join(self.ctx.root, rel) if rel else self.ctx.root
            if not os.path.lexists(source):
                raise BuildError(f"RUN --mount=type=bind,source={m.source}: no such file in the build context")
            if m.readonly:
                return source
            copied = os.path.join(scratch, f"bind-{os.urandom(4).hex()}")     # writes are thrown away
            if os.path.isdir(source):
                shutil.copytree(source, copied, symlinks=True)
            else:
                shutil.copy2(source, copied)
            return copied
        tree = self._materialize(self._from_layers(m.from_), scratch)
        return os.path.join(tree, rel) if rel else tree

    def _materialize(self, diff_ids: list[str], scratch: str) -> str:
        """A merged copy of ``diff_ids``' layers (for a bind mount from a stage or an image)."""
        from ..container.rootfs import ContainerRootfs
        from ..sandbox.userns import run_as_root
        directory = os.path.join(scratch, f"from-{os.urandom(4).hex()}")
        os.mkdir(directory, 0o700)
        rootfs = ContainerRootfs([self.store.layer_dir(d) for d in diff_ids], directory, "vfs", remove_after=False)
        os.mkdir(rootfs.target, 0o755)
        run_as_root(self.maps, rootfs._copy, name="rootless-build")
        return rootfs.target

    @staticmethod
    def _ignored(targets: list[str]) -> frozenset[str]:
        """Mount targets (and the parents made for them) to leave out of the layer when only
        the mount made them."""
        out = set()
        for t in targets:
            parts = t.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return frozenset(out)

    # COPY / ADD
    def _source_view(self, step: planmod.CopyStep):
        if step.from_ is None:
            return self.ctx.view if self.ctx.has_context else None, None
        if step.from_stage is not None:
            layers = self.results[step.from_stage].diff_ids
        else:
            layers = self._from_layers(step.from_image or step.from_)
        return LayersView([self.store.layer_dir(d) for d in layers]), layers

    def _copy_digest(self, step: planmod.CopyStep) -> tuple[str, str, object]:
        from .copying import digest_copy, download
        view, from_layers = self._source_view(step)
        for url in step.urls:
            d = download(url, self.store.new_temp_dir("add"), checksum=step.checksum)
            self._downloads[url] = d
        if from_layers is not None:
            # a stage's or image's files may be unreadable here (sub-ids): its layers name them
            material = hashlib.sha256(("\n".join(from_layers) + "\n" + "\n".join(step.sources)).encode()).hexdigest()
            return material, step.created_by(f"multi:{material}"), view
        d = digest_copy(step, view, cache=self.hashes, downloads=self._downloads)
        return d.hex, step.created_by(d.id), view

    def _copy(self, step: planmod.CopyStep, state: _State, view) -> str:
        from ..sandbox import channel
        from ..sandbox.userns import run_as_root
        from .copying import write_layer
        lower = LayersView([self.store.layer_dir(d) for d in state.diff_ids])
        from .. import atomic
        tmp = os.path.join(self.store.tmp_dir(), atomic.temp_name("build") + ".tar")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            def write() -> None:
                with os.fdopen(os.dup(fd), "wb") as out:
                    write_layer(out, step, view, lower, downloads=self._downloads,
                                epoch=self.req.source_date_epoch, what="the build context")
            try:
                run_as_root(self.maps, write, name="rootless-build")
            except channel.ChildError as e:
                raise BuildError(f"{step.filename}:{step.line}: {step.keyword}: {e}") from None
            os.close(fd)
            fd = -1
            return self._store_tar(tmp, f"the layer of {step.keyword} at {step.filename}:{step.line}")
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _store_tar(self, tmp: str, what: str) -> str:
        """Store the layer tar ``tmp`` as ``import`` does: unpacked (without the lock) with its
        tar-split record, or as a blob too when the record cannot serve; each made visible by
        one rename, with the lock."""
        from ..image import layers
        from ..sandbox.remove import remove_tree
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        diff_id = "sha256:" + h.hexdigest()
        got = None
        try:
            if not self.store.has_layer(diff_id):    # kept unpacked with its tar-split record
                got = layers.unpack_file(self.store, self.maps, tmp, what, record=True)
            with self.store.lock():
                if not self.store.has_layer(diff_id) and got is None:   # removed by a prune since we looked
                    got = layers.unpack_file(self.store, self.maps, tmp, what, record=True)
                if got is None or got.tarsplit is None:
                    if not self.store.can_make_tar(diff_id):
                        self.store.adopt_blob(tmp, diff_id)
                if got is not None and self.store.publish_layer(got.dir, diff_id, got.size, got.tarsplit):
                    got = None
        finally:
            if got is not None:
                remove_tree(self.maps, got.dir)
                if got.tarsplit and os.path.exists(got.tarsplit):
                    os.unlink(got.tarsplit)
        return diff_id

    # the image
    def _write(self, stage: planmod.Stage, state: _State) -> Image:
        from ..image import reference
        from ..image.importer import new_image
        tags = [reference.normalize(t) for t in self.req.tags]
        history = list(state.history)
        with self.store.lock():
            img = new_image(self.store, state.parent, state.layers, copy.deepcopy(state.config.get("config") or {}),
                            history, tags, author=stage.author or "", created=state.created or None)
            if not tags:
                from ..image.reference import UNTAGGED_REPO
                tag = f"{UNTAGGED_REPO}/{img.id.removeprefix('sha256:')[:12]}:latest"
                self.store.set_tag(tag, img.manifest_digest)
                img = self.store.image(img.manifest_digest, tag)
        return img


class StepFailed(BuildError):
    def __init__(self, step: planmod.Step, code: int) -> None:
        super().__init__(f"{step.filename}:{step.line}: RUN {' '.join(getattr(step, 'argv', []))[:200]} "
                         f"failed with exit code {code}")
        self.exit_code = code if 0 < code < 256 else 1
        self.step = step


def build(store: Store, maps: idmap.IdMaps, ctx: BuildContext, req: BuildRequest, reporter: Reporter) -> Image:
    """Parse, plan and run the build; the image (tagged with ``req.tags``)."""
    from .dockerfile import parse
    df = parse(ctx.dockerfile, ctx.dockerfile_name)       # its notes come with the plan's warnings
    builder = Builder(store, maps, ctx, req, reporter)
    bplan = planmod.make_plan(df, planmod.BuildOptions(build_args=req.build_args, target=req.target,
                                                       labels=req.labels), builder.image_config)
    return builder.build(bplan)
