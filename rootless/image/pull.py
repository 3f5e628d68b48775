"""``rootless pull``: an image from a registry into the store.

Manifest (an index is resolved to this host's platform) and config first; then whatever the
store lacks of the image.  Each missing layer is unpacked *while it downloads* (a ``_Follower``
thread per layer: it reads the download's temporary file as it grows, decompresses it, hashes
the plain tar and pipes it to the unpacking child, ``layers.StreamUnpack``, which records the
layer's tar-split on the way); the layers download in parallel.  So a pull costs about the
larger of network and unpack time, not their sum.  A layer becomes the store's only when both
digests hold: the blob's (checked by the registry client: size, sha256) and the plain tar's
(the config's diff id).  The store then keeps the unpacked layer and its tar-split record, not
the blob (``push`` asks the registry for the blob by its recorded digest, and makes it again
from the layer when needed; ``save`` makes the tar again); a layer whose tar-split cannot
give its tar back keeps its blob, as does a layer unpacked before without any way to make its
tar (a store of an older rootless: the blob is downloaded again).  All of that happens
without the store lock: other commands (``run``) go on meanwhile.  Then, with the lock, the
store is looked at again (``rmi`` may have removed something meanwhile: then the missing
parts are fetched in another round) and the new parts are made visible, each by one rename,
in an order that keeps the store whole at every step: blobs, layers (each after its size and
tar-split record), config, manifest, tag.  A pull killed at any point leaves only temporary
files (removed by the next command that takes the lock) and complete blobs or layers no tag
refers to yet.

A download that stalls (less than 1 KiB in ``ROOTLESS_PULL_STALL_TIMEOUT`` seconds, default
30) is retried with backoff and then fails naming the registry and the blob; a download that
starts over (a registry that cannot resume) restarts its unpack; Ctrl-C stops the downloads at
once (the registry client shuts their connections), kills the unpacking children, and the
temporary files and directories go with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from typing import Callable

from . import compression, layers
from ..errors import StoreError, UsageError
from ..progress import ProgressFactory
from ..registry import DownloadStalled, Reference, RegistryClient, parse_image_manifest
from ..sandbox import idmap
from ..sandbox.remove import remove_tree
from .store import Image, Store

GZIP = ("application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+gzip")
PLAIN = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")


SUPPORTED = "gzip, zstd or plain layers"
STALL_ENV = "ROOTLESS_PULL_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 30.0


def stall_timeout(environ: dict[str, str] | None = None) -> float:
    """The stall timeout in seconds: ``ROOTLESS_PULL_STALL_TIMEOUT``, else 30."""
    text = (os.environ if environ is None else environ).get(STALL_ENV, "").strip()
    if not text:
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < 1e6):
        raise UsageError(f"{STALL_ENV}={text!r} is not a number of seconds: give one like 30 (the "
                         "longest a download may go without receiving 1 KiB), or unset it")
    return value


def _check_type(media_type: str) -> None:
    if not (media_type in GZIP or media_type in PLAIN or media_type.endswith(("+gzip", "+zstd", ".tar"))):
        raise StoreError(f"layer type {media_type} is not supported (foreign or unknown layers): "
                         f"pull an image with {SUPPORTED}")


def _format(media_type: str) -> str | None:
    """``gzip`` or ``zstd`` for a layer's media type, else None."""
    if media_type in GZIP or media_type.endswith("+gzip"):
        return "gzip"
    if media_type.endswith(("+zstd", ".zstd")):
        return "zstd"
    return None


def _diff_id(src: str, dst: str | None, layer, ref: Reference) -> str:
    """The sha256 of layer ``src`` decompressed (written to ``dst`` unless None)."""
    try:
        return compression.decompress_file(src, dst)
    except compression.ERRORS as e:
        raise StoreError(f"layer {layer.digest} of {ref} is not a valid {layer.media_type}: {e}") from None


_STEP = 1 << 20      # the piece of a download a follower reads at once (fewer, larger steps: less GIL churn)


class _Stopped(Exception):
    pass


class _Restart(Exception):
    pass


class _Follower:
    """Unpacks one layer from its blob as the blob arrives, in a thread of its own: ``watch``
    (from the download) says how much of the temporary file is written, ``complete`` that the
    blob is whole and verified (at ``path``), ``stop`` ends it (the pull failed or was
    interrupted).  ``result`` (the ``layers.Unpacked`` layer) or ``error`` once ``thread`` ends."""

    def __init__(self, store: Store, maps: idmap.IdMaps, layer, diff_id: str, ref: Reference,
                 path: str | None = None):
        self.store, self.maps, self.layer, self.diff_id, self.ref = store, maps, layer, diff_id, ref
        self.cond = threading.Condition()
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path else -1  # kept across the rename
        self.avail = 0
        self._told = 0                    # what the reader was last woken for
        self.gen = 0
        self.total = os.path.getsize(path) if path else -1      # set when complete
        self.stopped = False
        self.kind: str | None = None
        self.result: layers.Unpacked | None = None
        self.error: BaseException | None = None
        self._job: layers.StreamUnpack | None = None
        self.thread = threading.Thread(target=self._run, name=f"unpack-{layer.digest[7:19]}", daemon=True)
        self.thread.start()

    def watch(self, path: str, done: int) -> None:
        if self.error is not None:    # the unpack failed: stop the download too (raised in its thread)
            raise self.error
        with self.cond:
            if done < 0:
                self.gen += 1
                self.avail = 0
            else:
                if self.fd < 0:
                    self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self.avail = done
                if done - self._told < _STEP:     # wake the reader for a good piece only
                    return
            self._told = max(0, done)
            self.cond.notify_all()

    def complete(self, path: str) -> None:
        with self.cond:
            if self.fd < 0:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.total = os.path.getsize(path)
            self.avail = self.total
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
            if self._job is not None:
                self._job.kill()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self.cond:
                if self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.fd < 0 and not self.stopped:
                    self.cond.wait()
                gen = self.gen
            try:
                self.result = self._attempt(gen)
                return
            except _Restart:
                continue
            except _Stopped:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the pulling thread
                with self.cond:
                    if self.gen != gen and not self.stopped:
                        continue         # the download started over under our feet
                    if self.stopped:
                        return
                self.error = e
                return

    def _attempt(self, gen: int) -> "layers.Unpacked":
        layer, ref = self.layer, self.ref
        fd = self.fd
        with self.cond:
            if self.stopped:
                raise _Stopped()
            job = self._job = layers.StreamUnpack(self.store, self.maps, f"layer {layer.digest} of {ref}")
        try:
            dec = compression.Decompressor()
            offset = 0
            try:
                while True:
                    with self.cond:
                        while (not self.stopped and gen == self.gen and self.avail - offset < _STEP
                               and self.total < 0):
                            self.cond.wait()
                        if self.stopped:
                            raise _Stopped()
                        if gen != self.gen:
                            raise _Restart()
                        end = self.avail
                        whole = self.total >= 0
                    if offset >= end and whole:
                        break
                    data = os.pread(fd, min(end - offset, 1 << 20), offset)
                    if not data:
                        raise EOFError("the blob is shorter than the registry said")
                    offset += len(data)
                    for out in dec.feed(data):
                        job.write(out)
                    if job.broken:           # the child has ended early: its reason, now
                        job.finish()
                        raise StoreError(f"cannot unpack layer {layer.digest} of {ref}: the unpacking "
                                         "process stopped reading it")
                for out in dec.finish():
                    job.write(out)
            except compression.ERRORS as e:
                with self.cond:
                    if gen != self.gen or self.stopped:
                        raise _Restart() from None
                raise StoreError(f"layer {layer.digest} of {ref} is not a valid {layer.media_type}: {e}") from None
            self.kind = dec.kind
            got = job.finish()       # the child hashed the plain tar as it read it
            try:
                _check_diff(got.digest, self.diff_id, layer, ref)
            except StoreError:
                remove_tree(self.maps, got.dir)
                if got.tarsplit:
                    os.unlink(got.tarsplit)
                raise
            return got
        except BaseException:
            job.abort()
            raise
        finally:
            with self.cond:
                self._job = None


def _wait(followers) -> None:
    """Join the followers' threads (waking often: Ctrl-C must reach this thread at once)."""
    for f in followers:
        while f.thread.is_alive():
            f.thread.join(0.2)


def pull(store: Store, maps: idmap.IdMaps, ref_text: str, platform: str | None = None,
         tls_verify: bool = True, progress: ProgressFactory | None = None,
         report: Callable[[str], None] | None = None, credentials=None) -> Image:
    """Pull ``ref_text`` into the store.  ``progress(verb, [(key, size)])``: an object whose
    ``update(key, done, total)`` hears of each download (the face draws it); ``report``: the
    closing line ("pulled N new layer(s)...").  ``credentials``: a ``registry.Credentials``
    (the API's X-Registry-Auth), else those of the auth files."""
    ref = Reference.parse(ref_text)
    stall = stall_timeout()
    tmp = store.new_temp_dir("pull")
    downloaded: dict[str, str] = {}               # blob digest -> its file under tmp
    unpacked: dict[str, tuple[layers.Unpacked, str | None]] = {}  # diff id -> (layer, data kind)
    followers: dict[str, _Follower] = {}          # diff id -> its unpack under way
    checked: set[str] = set()                     # blob digests whose diff id we verified

    def usable(layer, diff_id: str) -> bool:      # in the store, its tar can be made
        return store.has_layer(diff_id) and store.can_make_tar(diff_id, layer.digest)

    try:
        with RegistryClient(ref.registry, insecure=None if tls_verify else True, stall_timeout=stall,
                            **({"credentials": credentials} if credentials else {})) as client:
            m = client.get_manifest(ref.repository, ref.reference, platform)
            manifest = parse_image_manifest(m.data)
            config_raw = client.get_blob(ref.repository, manifest.config.digest)
            config = json.loads(config_raw)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            if len(diff_ids) != len(manifest.layers):
                raise StoreError(f"{ref}: the image config lists {len(diff_ids)} layers, its manifest "
                                 f"{len(manifest.layers)}: the image is broken")
            pairs = list(zip(manifest.layers, diff_ids))
            new = {l.digest for l, d in pairs if not usable(l, d)}
            for _round in range(3):
                # What the store lacks, looked at without the lock (looked at again with it).
                fetch: dict[str, object] = {}
                for l, d in pairs:
                    if d in unpacked or d in followers or usable(l, d):
                        continue
                    if store.has_layer(d):               # unpacked, but its tar cannot be made
                        if l.digest not in downloaded:
                            _check_type(l.media_type)
                            fetch[l.digest] = l
                    elif store.has_blob(l.digest):       # a blob kept: unpacked from it
                        followers[d] = _Follower(store, maps, l, d, ref, store.blob_path(l.digest))
                    else:
                        _check_type(l.media_type)
                        fetch[l.digest] = l
                        followers[d] = _Follower(store, maps, l, d, ref)
                by_blob: dict[str, list[_Follower]] = {}
                for f in followers.values():
                    by_blob.setdefault(f.layer.digest, []).append(f)
                bar = progress("download", [(l.digest, l.size) for l in fetch.values()]) \
                    if progress and fetch else None

                def arrived(digest: str) -> None:
                    downloaded[digest] = os.path.join(tmp, digest[7:])
                    for f in by_blob.get(digest, []):
                        f.complete(downloaded[digest])

                def watch(digest: str, path: str, done: int) -> None:
                    for f in by_blob.get(digest, []):
                        f.watch(path, done)
                client.fetch_blobs(ref.repository,
                                   [(l.digest, os.path.join(tmp, l.digest[7:]), l.size) for l in fetch.values()],
                                   progress=(lambda d, done, total: bar.update(d, done, total)) if bar else None,
                                   on_done=arrived, watch=watch, fsync=False)   # adopt_blob flushes a kept one
                _wait(list(followers.values()))
                for d, f in list(followers.items()):
                    if f.error is not None:
                        raise f.error
                    assert f.result is not None
                    unpacked[d] = (f.result, f.kind)
                    checked.add(f.layer.digest)
                    del followers[d]
                for layer, diff_id in pairs:   # a blob kept for a layer unpacked before: checked too
                    if layer.digest in downloaded and layer.digest not in checked:
                        _check_diff(_diff_id(downloaded[layer.digest], None, layer, ref), diff_id, layer, ref)
                        checked.add(layer.digest)
                with store.lock():
                    lacking = [l.digest for l, d in pairs
                               if not (usable(l, d) or d in unpacked
                                       or (store.has_layer(d) and l.digest in downloaded))]
                    if lacking:   # removed by rmi or prune since we looked: another round
                        continue
                    # blobs (those the store must keep), then layers, config, manifest, tag
                    keep = {l.digest for l, d in pairs
                            if not usable(l, d) and l.digest in downloaded
                            and (d not in unpacked or unpacked[d][0].tarsplit is None)}
                    for layer, diff_id in pairs:
                        if layer.digest in keep and not store.has_blob(layer.digest):
                            store.adopt_blob(downloaded.pop(layer.digest), layer.digest)
                    for layer, diff_id in pairs:    # what push may send for a local copy of it
                        fmt = _format(layer.media_type)   # (as the data says: a media type may lie)
                        if diff_id in unpacked:
                            kind = unpacked[diff_id][1]
                        elif store.has_blob(layer.digest):
                            kind = compression.file_kind(store.blob_path(layer.digest))
                        else:
                            kind = None
                        if fmt and kind == fmt and store.compressed_record(diff_id, fmt) is None:
                            store.remember_compressed(diff_id, fmt, {"mediaType": compression.MEDIA_TYPES[fmt],
                                                                      "digest": layer.digest, "size": layer.size})
                    for layer, diff_id in pairs:
                        if diff_id in unpacked and not store.has_layer(diff_id):
                            got, _kind = unpacked.pop(diff_id)
                            store.publish_layer(got.dir, diff_id, got.size, got.tarsplit)
                    if store.put_blob(config_raw) != manifest.config.digest:
                        raise StoreError(f"{ref}: config digest mismatch")
                    if store.put_blob(m.data) != m.digest:
                        raise StoreError(f"{ref}: manifest digest mismatch")
                    if ref.tag:
                        store.set_tag(Reference(ref.registry, ref.repository, ref.tag).familiar, m.digest)
                    break
            else:
                raise StoreError(f"layers of {ref} were removed from the store while it was being pulled, "
                                 "again and again (by rmi or image prune): pull again")
    except DownloadStalled as e:
        raise DownloadStalled(f"{e}, or allow longer pauses with {STALL_ENV}=SECONDS (now {stall:g})") from None
    else:
        from .. import events
        events.emit(store.root, "image", "pull", ref.familiar, {"name": ref.familiar})
        if report is not None:
            report(f"{ref}: pulled {len(new)} new layer(s), {len(manifest.layers) - len(new)} already in the store")
        return store.image(m.digest, str(ref))
    finally:
        for f in followers.values():
            f.stop()
        _wait(list(followers.values()))
        for got, _kind in unpacked.values():
            remove_tree(maps, got.dir)
            if got.tarsplit:
                with contextlib.suppress(OSError):
                    os.unlink(got.tarsplit)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_diff(got: str, diff_id: str, layer, ref: Reference) -> None:
    if got != diff_id:
        raise StoreError(f"layer {layer.digest} of {ref} decompresses to {got}, but the image "
                         f"config says {diff_id}: the image is corrupt or tampered with")

