"""``rootless save`` and ``rootless load``: images to and from tar archives.

Two formats, as ``docker save`` / ``podman save`` write them:

* **docker-archive**: ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), ``repositories``,
  the image config as ``HEX.json`` and each layer, uncompressed, as ``DIFFHEX/layer.tar``.
* **oci-archive**: an OCI image layout in a tar: ``oci-layout``, ``index.json`` (one manifest
  per image, named by ``org.opencontainers.image.ref.name``), ``blobs/sha256/HEX`` holding the
  manifests, configs and layers byte for byte as stored (so every digest holds).

Loading reads both, plain or gzip-compressed.  The archive's entries are never extracted by
their names: each one is read through ``tarfile`` into a temporary file named by us, and
every digest is checked (blob names under ``blobs/sha256``, descriptors, and each layer's
uncompressed sha256 against the config's diff ids) before anything enters the store.  Layers
the store has are not unpacked again; new ones go through ``layers.unpack`` (chrooted, in the
user namespace), before the store lock is taken; with the lock, each is made visible by one
rename.  If anything fails, the layers, blobs and tags this load added are removed: the store
is as it was (and a load killed at any point leaves nothing that the next command does not
clean up: ``Store.lock``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Callable

from . import compression, layers, reference, tarsplit
from .reference import UNTAGGED_REPO
from .. import atomic
from ..errors import StoreError, UsageError
from ..sandbox import idmap
from ..sandbox.remove import remove_tree
from .store import Image, Store, _hex

FORMATS = ("docker-archive", "oci-archive")
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
EPOCH = 0


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------- save

def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = os.path.getsize(path), 0o644, EPOCH
    with open(path, "rb") as f:
        tar.addfile(info, f)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
    tar.addfile(info)


def _resolve_all(store: Store, names: list[str]) -> list[tuple[Image, list[str]]]:
    """Each distinct image once, with the tags to write for it (a name given by id: none)."""
    out: dict[str, tuple[Image, list[str]]] = {}
    for name in names:
        img = store.resolve(name)
        entry = out.setdefault(img.manifest_digest, (img, []))
        try:
            tag = reference.normalize(name)
        except UsageError:
            tag = None
        if tag and tag in store.tags() and tag not in entry[1]:
            entry[1].append(tag)
    return list(out.values())


def _plain_layer(store: Store, blob_digest: str, media_type: str, tmpdir: str) -> str:
    """A path to the layer as an uncompressed tar (the blob itself when it is one)."""
    src = store.blob_path(blob_digest)
    if compression.file_kind(src) == "plain":
        return src
    dst = os.path.join(tmpdir, blob_digest[7:] + ".tar")
    try:
        compression.decompress_file(src, dst)
    except compression.ERRORS as e:
        raise StoreError(f"blob {blob_digest} in the store is corrupt ({e}): pull or import the image "
                         "again") from None
    return dst


def _add_layer_tar(tar: tarfile.TarFile, name: str, store: Store, maps: idmap.IdMaps | None,
                   diff_id: str, blob_digest: str) -> int:
    """Layer ``diff_id``'s tar made again from its directory and tar-split record, as entry
    ``name`` (streamed, checked against the diff id: ``layers.LayerTampered`` otherwise); its size."""
    with open(store.tarsplit_path(diff_id), "rb") as rec:
        size = tarsplit.total_size(rec)
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, EPOCH
    with layers.layer_tar(store, maps, diff_id, blob_digest) as f:
        try:
            tar.addfile(info, f)
        except (OSError, tarfile.TarError):
            while f.read(1 << 20):    # shorter than it was: the reason is in the check at its end
                pass
            raise
        if f.read(1):          # the end: the check of its digest
            raise layers.tampered(diff_id, "it is longer than it was")
    return size


def _kept(store: Store, diff_id: str, blob_digest: str) -> bool:
    """Whether the store keeps a blob of the layer (else it makes its tar from its tar-split)."""
    return store.has_blob(blob_digest) or store.has_blob(diff_id)


def save(store: Store, names: list[str], fmt: str, out: BinaryIO, maps: idmap.IdMaps | None = None) -> None:
    """Write images ``names`` to ``out`` as ``fmt`` (``docker-archive`` or ``oci-archive``).
    A layer the store keeps no blob of (pulled: kept unpacked) has its tar made again
    (``layers.layer_tar``, as root of the user namespace with ``maps``, default this host's);
    in an oci-archive it goes uncompressed, under a manifest naming it so."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown archive format '{fmt}': use {' or '.join(FORMATS)}")
    images = _resolve_all(store, names)
    for img, _tags in images:
        manifest = store.read_json(img.manifest_digest)
        if not os.path.exists(store.blob_path(img.id)):
            raise StoreError(f"blob {img.id} of image {img.ref or img.id} is missing from the "
                             "store: pull or import the image again")
        for d, diff_id in zip(manifest.get("layers", []), img.diff_ids):
            if not store.can_make_tar(diff_id, d["digest"]):
                raise StoreError(f"blob {d['digest']} of image {img.ref or img.id} is missing from the "
                                 "store: pull or import the image again")
    tmpdir = store.new_temp_dir("save")
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if fmt == "docker-archive":
                _save_docker(store, images, tar, tmpdir, maps)
            else:
                _save_oci(store, images, tar, maps)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    from .. import events
    for img, tags in images:
        events.emit(store.root, "image", "save", img.id, {"name": tags[0] if tags else img.ref or img.id})


def _save_docker(store: Store, images: list[tuple[Image, list[str]]], tar: tarfile.TarFile,
                 tmpdir: str, maps: idmap.IdMaps | None = None) -> None:
    entries, repositories, written = [], {}, set()
    for img, tags in images:
        manifest = store.read_json(img.manifest_digest)
        config_name = img.id[7:] + ".json"
        if config_name not in written:
            _add_file(tar, config_name, store.blob_path(img.id))
            written.add(config_name)
        layer_names = []
        for desc, diff_id in zip(manifest.get("layers", []), img.diff_ids):
            name = f"{diff_id[7:]}/layer.tar"
            if name not in written:
                _add_dir(tar, diff_id[7:])
                _add_bytes(tar, f"{diff_id[7:]}/VERSION", b"1.0")
                if store.has_blob(diff_id):
                    _add_file(tar, name, store.blob_path(diff_id))
                elif store.has_blob(desc["digest"]):
                    plain = _plain_layer(store, desc["digest"], desc.get("mediaType", ""), tmpdir)
                    _add_file(tar, name, plain)
                    if plain.startswith(tmpdir):
                        os.unlink(plain)
                else:
                    _add_layer_tar(tar, name, store, maps, diff_id, desc["digest"])
                written.add(name)
            layer_names.append(name)
        entries.append({"Config": config_name, "RepoTags": tags or None, "Layers": layer_names})
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            if img.diff_ids:
                repositories.setdefault(repo, {})[t] = img.diff_ids[-1][7:]
    _add_bytes(tar, "manifest.json", json.dumps(entries).encode())
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _save_oci(store: Store, images: list[tuple[Image, list[str]]], tar: tarfile.TarFile,
              maps: idmap.IdMaps | None = None) -> None:
    _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    _add_dir(tar, "blobs")
    _add_dir(tar, "blobs/sha256")
    written: set[str] = set()
    plain_sizes: dict[str, int] = {}
    index = []
    for img, tags in images:
        manifest = store.read_json(img.manifest_digest)
        layer_descs = []
        for d, diff_id in zip(manifest.get("layers", []), img.diff_ids):
            if store.has_blob(d["digest"]):
                layer_descs.append(d)
                if d["digest"] not in written:
                    _add_file(tar, f"blobs/sha256/{d['digest'][7:]}", store.blob_path(d["digest"]))
            else:                # kept unpacked: its tar made again, uncompressed
                if diff_id not in written:
                    if store.has_blob(diff_id):
                        _add_file(tar, f"blobs/sha256/{diff_id[7:]}", store.blob_path(diff_id))
                        size = os.path.getsize(store.blob_path(diff_id))
                    else:
                        size = _add_layer_tar(tar, f"blobs/sha256/{diff_id[7:]}", store, maps, diff_id, d["digest"])
                    written.add(diff_id)
                    plain_sizes[diff_id] = size
                size = plain_sizes.get(diff_id) or os.path.getsize(store.blob_path(diff_id))
                layer_descs.append({"mediaType": MEDIA_OCI_LAYER, "digest": diff_id, "size": size})
            written.add(layer_descs[-1]["digest"])
        manifest_digest = img.manifest_digest
        media_type = manifest.get("mediaType", MEDIA_OCI_MANIFEST)
        manifest_size = os.path.getsize(store.blob_path(img.manifest_digest))
        if layer_descs != manifest.get("layers", []):    # a manifest naming the layers as written
            config = dict(manifest["config"])
            if config.get("mediaType") == "application/vnd.docker.container.image.v1+json":
                config["mediaType"] = MEDIA_OCI_CONFIG
            doc = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST, "config": config, "layers": layer_descs}
            doc.update({k: v for k, v in manifest.items() if k in ("annotations",)})
            raw = json.dumps(doc, sort_keys=True).encode()
            manifest_digest, media_type, manifest_size = "sha256:" + hashlib.sha256(raw).hexdigest(), MEDIA_OCI_MANIFEST, len(raw)
            if manifest_digest not in written:
                _add_bytes(tar, f"blobs/sha256/{manifest_digest[7:]}", raw)
        elif img.manifest_digest not in written:
            _add_file(tar, f"blobs/sha256/{img.manifest_digest[7:]}", store.blob_path(img.manifest_digest))
        written.add(manifest_digest)
        if manifest["config"]["digest"] not in written:
            _add_file(tar, f"blobs/sha256/{manifest['config']['digest'][7:]}", store.blob_path(manifest["config"]["digest"]))
            written.add(manifest["config"]["digest"])
        desc = {"mediaType": media_type, "digest": manifest_digest, "size": manifest_size}
        for tag in tags or [None]:
            index.append({**desc, **({"annotations": {REF_NAME: tag, CONTAINERD_NAME: _full_name(tag)}}
                                     if tag else {})})
    _add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
                                              "manifests": index}).encode())


def _full_name(tag: str) -> str:
    name = tag
    first = name.split("/", 1)[0]
    if "/" not in name or ("." not in first and ":" not in first and first != "localhost"):
        name = "docker.io/" + (name if "/" in name else "library/" + name)
    return name


def _cannot_write(path: str, e: OSError) -> str:
    """Why ``path`` (as the user gave it) cannot be written, and what to do."""
    import errno
    parent = os.path.dirname(os.path.abspath(path))
    why = {
        errno.ENOENT: f"the directory {parent} does not exist" if not os.path.isdir(parent)
        else f"no file can be created in {parent}",
        errno.ENOTDIR: f"{parent} is not a directory",
        errno.EACCES: f"you may not write in {parent}",
        errno.EPERM: f"you may not write in {parent}",
        errno.EROFS: f"{parent} is on a read-only filesystem",
        errno.EISDIR: "it is a directory",
        errno.ENOSPC: "the filesystem is full",
    }.get(e.errno, os.strerror(e.errno).lower() if e.errno else str(e))
    return f"cannot write {path}: {why}; give another file with -o"


def write_to(path: str, writer: Callable[[BinaryIO], None]) -> None:
    """Run ``writer(fileobj)`` into file ``path`` (``save -o``, ``export -o``): atomically, so a
    failure leaves the old file or none (``atomic.writing``).  Errors name ``path``, never the
    temporary file beside it.  An existing path that is not a regular file (/dev/null, a FIFO)
    is written to directly, as Docker does."""
    import stat
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"cannot write {path}: it is a directory; give a file name with -o")
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(path, "wb") as out:
                writer(out)
            return
        with atomic.writing(path, mode=0o666) as out:
            writer(out)
    except OSError as e:   # making, opening or renaming the file itself (not the writer's reads)
        if e.filename is not None and \
                os.path.dirname(os.path.abspath(e.filename)) == os.path.dirname(os.path.abspath(path)):
            raise UsageError(_cannot_write(path, e)) from None
        raise


# ----------------------------------------------------------------------------- load

@dataclass
class _Loaded:
    config_raw: bytes
    manifest_raw: bytes | None              # OCI: stored byte for byte; docker-archive: made here
    layers: list[tuple[str, str, str, str]]  # (diff id, blob digest, media type, temp blob path or "")
    plain: dict[str, str] = field(default_factory=dict)  # diff id -> uncompressed temp tar
    tags: list[str] = field(default_factory=list)


class _Archive:
    """Random access to the regular files of a tar by (normalised) name, links followed inside it."""

    def __init__(self, path: str, source: str):
        self.source = source
        try:
            self.tar = tarfile.open(path, "r:")
            self.members = {}
            for m in self.tar.getmembers():
                self.members[posixpath.normpath(m.name.lstrip("/")).removeprefix("./")] = m
        except (tarfile.TarError, EOFError, OSError) as e:
            raise StoreError(f"{source} is not a valid image archive ({_why(e)})") from None

    def close(self) -> None:
        self.tar.close()

    def member(self, name: str, chain: tuple[str, ...] = ()) -> tarfile.TarInfo:
        """The regular file ``name`` names, symbolic and hard links followed (``chain``: the
        names followed so far, the user's first)."""
        key = posixpath.normpath(name.lstrip("/")).removeprefix("./")
        first = chain[0] if chain else name
        if key.startswith("../") or key == "..":
            raise StoreError(f"{self.source}: entry '{name}' points outside the archive")
        if key in chain:
            raise StoreError(f"{self.source}: '{first}' is a symbolic link loop "
                             f"({' -> '.join((*chain, key))}): the archive is broken")
        if len(chain) > 16:
            raise StoreError(f"{self.source}: '{first}' leads through more than 16 links: the archive "
                             "is broken")
        chain = (*chain, key)
        m = self.members.get(key)
        if m is None:
            raise StoreError(f"{self.source}: '{name}' is missing from the archive")
        if m.issym():
            if m.linkname.startswith("/"):
                raise StoreError(f"{self.source}: '{name}' is a symbolic link out of the archive "
                                 f"({m.linkname})")
            return self.member(posixpath.join(posixpath.dirname(key), m.linkname), chain)
        if m.islnk():
            return self.member(m.linkname, chain)
        if not m.isfile():
            raise StoreError(f"{self.source}: '{name}' is not a regular file")
        return m

    def has(self, name: str) -> bool:
        return posixpath.normpath(name.lstrip("/")).removeprefix("./") in self.members

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        m = self.member(name)
        if m.size > limit:
            raise StoreError(f"{self.source}: '{name}' is too large ({m.size} bytes) for a JSON document")
        try:
            f = self.tar.extractfile(m)
            data = f.read() if f else b""
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise StoreError(f"{self.source}: cannot read '{name}' ({_why(e)})") from None
        if len(data) != m.size:
            raise StoreError(f"{self.source}: '{name}' is truncated")
        return data

    def open(self, name: str) -> IO[bytes]:
        f = self.tar.extractfile(self.member(name))
        assert f is not None
        return f

    def json(self, name: str):
        data = self.read(name)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.source}: '{name}' is not valid JSON ({e})") from None


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, (EOFError, tarfile.ReadError)) or "unexpected end" in text:
        return f"the archive is truncated or corrupt: {text}"
    return text


def _copy_layer(archive: _Archive, name: str, tmpdir: str, want_blob: str | None) -> tuple[str, str, str, str]:
    """Copy layer ``name`` out of the archive: (blob temp path, blob digest, plain temp path, diff id).

    The blob is the layer as it is in the archive; the plain tar is it decompressed (the same
    file when it is not compressed).
    """
    blob = os.path.join(tmpdir, os.urandom(8).hex())
    hb = hashlib.sha256()
    try:
        with archive.open(name) as src, open(blob, "wb") as out:
            size = 0
            while chunk := src.read(1 << 20):
                hb.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size != archive.member(name).size:
            raise StoreError(f"{archive.source}: layer '{name}' is truncated")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise StoreError(f"{archive.source}: cannot read layer '{name}' ({_why(e)})") from None
    blob_digest = "sha256:" + hb.hexdigest()
    if want_blob and blob_digest != want_blob:
        raise StoreError(f"{archive.source}: layer '{name}' has digest {blob_digest}, but the archive "
                         f"names it {want_blob}: the archive is corrupt or tampered with")
    kind = compression.file_kind(blob)
    if kind == "plain":
        return blob, blob_digest, blob, blob_digest
    plain = blob + ".tar"
    try:
        diff_id = compression.decompress_file(blob, plain)
    except compression.ERRORS as e:
        raise StoreError(f"{archive.source}: layer '{name}' is not valid {kind} ({_why(e)})") from None
    return blob, blob_digest, plain, diff_id


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{_hex(digest)}"


def _check_diff(archive: _Archive, name: str, got: str, want: str) -> None:
    if got != want:
        raise StoreError(f"{archive.source}: layer '{name}' has content digest {got}, but the image "
                         f"config says {want}: the archive is corrupt or tampered with")


def _read_docker(archive: _Archive, store: Store, tmpdir: str) -> list[_Loaded]:
    entries = archive.json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise StoreError(f"{archive.source}: manifest.json lists no images")
    out = []
    for entry in entries:
        try:
            config_name, layer_names = entry["Config"], list(entry["Layers"])
            repo_tags = list(entry.get("RepoTags") or [])
        except (KeyError, TypeError):
            raise StoreError(f"{archive.source}: manifest.json is not a docker-archive manifest") from None
        config_raw = archive.read(config_name)
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        base = posixpath.basename(config_name).removesuffix(".json")
        if posixpath.normpath(config_name).startswith("blobs/sha256/") and base != config_digest[7:]:
            raise StoreError(f"{archive.source}: config '{config_name}' has digest {config_digest}: "
                             "the archive is corrupt or tampered with")
        if len(base) == 64 and all(c in "0123456789abcdef" for c in base) and base != config_digest[7:]:
            raise StoreError(f"{archive.source}: config '{config_name}' has digest {config_digest}: "
                             "the archive is corrupt or tampered with")
        config = _parse_config(archive, config_raw)
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layer_names):
            raise StoreError(f"{archive.source}: the image config lists {len(diff_ids)} layers, "
                             f"manifest.json {len(layer_names)}: the archive is broken")
        loaded = _Loaded(config_raw, None, [], tags=[_tag(archive, t) for t in repo_tags])
        for name, diff_id in zip(layer_names, diff_ids):
            _hex(diff_id)
            named = posixpath.normpath(name)
            want = "sha256:" + named.rsplit("/", 1)[1] if named.startswith("blobs/sha256/") else None
            if store.has_layer(diff_id) and store.can_make_tar(diff_id) and want is None:
                loaded.layers.append((diff_id, diff_id, MEDIA_OCI_LAYER, ""))
                continue
            blob, blob_digest, plain, got = _copy_layer(archive, name, tmpdir, want)
            _check_diff(archive, name, got, diff_id)
            if blob != plain:
                os.unlink(blob)  # stored uncompressed, as import does: the blob is the diff
            loaded.plain[diff_id] = plain
            loaded.layers.append((diff_id, diff_id, MEDIA_OCI_LAYER, plain))
        out.append(loaded)
    return out


def _parse_config(archive: _Archive, raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise StoreError(f"{archive.source}: an image config is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise StoreError(f"{archive.source}: an image config is not a JSON object")
    return config


def _tag(archive: _Archive, name: str) -> str:
    try:
        return reference.normalize(name)
    except UsageError:
        raise StoreError(f"{archive.source}: '{name}' is not a valid image name") from None


def _host_platform() -> tuple[str, str]:
    from .importer import ARCH
    import platform
    return "linux", ARCH.get(platform.machine(), platform.machine())


def _read_blob(archive: _Archive, desc: dict) -> bytes:
    digest = desc.get("digest", "")
    _hex(digest)
    data = archive.read(_blob_name(digest))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise StoreError(f"{archive.source}: blob {digest} has digest {got}: the archive is corrupt "
                         "or tampered with")
    return data


def _read_oci(archive: _Archive, store: Store, tmpdir: str) -> list[_Loaded]:
    index = archive.json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not manifests:
        raise StoreError(f"{archive.source}: index.json lists no images")
    by_digest: dict[str, _Loaded] = {}
    for desc in manifests:
        raw = _read_blob(archive, desc)
        data = json.loads(raw)
        if desc.get("mediaType") in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in data:
            os_, arch = _host_platform()
            choice = next((m for m in data.get("manifests", [])
                           if (m.get("platform") or {}).get("os") == os_
                           and (m.get("platform") or {}).get("architecture") == arch), None)
            if choice is None:
                raise StoreError(f"{archive.source}: no image for {os_}/{arch} in its index")
            raw = _read_blob(archive, choice)
            data = json.loads(raw)
            desc = {**choice, "annotations": desc.get("annotations") or {}}
        digest = desc["digest"]
        annotations = desc.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        # A bare tag ("latest") names no repository: such an image is loaded untagged.
        tag = _tag(archive, name) if name and (":" in name or "/" in name) else None
        if digest in by_digest:
            if tag and tag not in by_digest[digest].tags:
                by_digest[digest].tags.append(tag)
            continue
        config_raw = _read_blob(archive, data["config"])
        config = _parse_config(archive, config_raw)
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        layer_descs = data.get("layers") or []
        if len(diff_ids) != len(layer_descs):
            raise StoreError(f"{archive.source}: the image config lists {len(diff_ids)} layers, its "
                             f"manifest {len(layer_descs)}: the archive is broken")
        loaded = _Loaded(config_raw, raw, [], tags=[tag] if tag else [])
        for ld, diff_id in zip(layer_descs, diff_ids):
            _hex(diff_id)
            blob_digest = ld["digest"]
            _hex(blob_digest)
            if store.has_layer(diff_id) and os.path.exists(store.blob_path(blob_digest)):
                loaded.layers.append((diff_id, blob_digest, ld.get("mediaType", ""), ""))
                continue
            blob, got_blob, plain, got = _copy_layer(archive, _blob_name(blob_digest), tmpdir, blob_digest)
            _check_diff(archive, _blob_name(blob_digest), got, diff_id)
            loaded.plain[diff_id] = plain
            loaded.layers.append((diff_id, blob_digest, ld.get("mediaType", ""), blob))
        by_digest[digest] = loaded
    return list(by_digest.values())


def _spool(source: str, tmpdir: str) -> str:
    """The archive as a plain tar file we may seek in (decompressed when compressed)."""
    try:
        raw = os.fdopen(os.dup(0), "rb") if source == "-" else open(source, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror}") from None
    with raw:
        if source != "-" and compression.kind_of(raw.peek(6)[:6]) == "plain":
            return source
        path = os.path.join(tmpdir, "archive.tar")
        try:
            with open(path, "wb") as out:
                compression.copy_hashing(compression.open_decompressed(raw), out)
        except compression.ERRORS as e:
            raise StoreError(f"cannot read the archive {source}: {_why(e)}") from None
        return path


def load(store: Store, maps: idmap.IdMaps, source: str) -> list[tuple[Image, list[str]]]:
    """Load every image of archive ``source`` (a path or ``-``); [(image, its tags)]."""
    tmpdir = store.new_temp_dir("load")
    added_layers: list[str] = []
    added_blobs: list[str] = []
    prepared: dict[str, layers.Unpacked] = {}   # diff id -> unpacked into a temporary directory
    old_tags: dict[str, str] | None = None
    try:
        archive = _Archive(_spool(source, tmpdir), source)
        try:
            if archive.has("manifest.json"):
                images = _read_docker(archive, store, tmpdir)
            elif archive.has("index.json") and archive.has("oci-layout"):
                images = _read_oci(archive, store, tmpdir)
            else:
                raise StoreError(f"{source} is neither a docker-archive (no manifest.json) nor an "
                                 "oci-archive (no oci-layout and index.json)")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise StoreError(f"{source}: a manifest or config of the archive is malformed "
                             f"({type(e).__name__}: {e})") from None
        finally:
            archive.close()
        result = []
        # New layers are unpacked before the lock is taken (nothing sees them yet): other
        # commands go on meanwhile; with the lock, each is made visible by one rename.
        for img in images:
            for diff_id, _blob_digest, _media_type, _blob in img.layers:
                if diff_id in img.plain and diff_id not in prepared and not store.has_layer(diff_id):
                    prepared[diff_id] = layers.unpack_file(store, maps, img.plain[diff_id],
                                                           f"layer {diff_id} of {source}", record=True)
        with store.lock():
            old_tags = store.tags()
            try:
                for img in images:
                    for diff_id, blob_digest, media_type, blob in img.layers:
                        if not store.has_layer(diff_id):
                            if diff_id not in prepared and diff_id in img.plain:   # removed by rmi or
                                prepared[diff_id] = layers.unpack_file(               # prune since we looked
                                    store, maps, img.plain[diff_id], f"layer {diff_id} of {source}", record=True)
                            if diff_id not in prepared:
                                raise StoreError(f"layer {diff_id} is missing from the store")
                            got = prepared.pop(diff_id)
                            if blob == img.plain.get(diff_id) and got.tarsplit:
                                blob = ""     # a plain tar: kept as the layer and its record only
                            store.publish_layer(got.dir, diff_id, got.size, got.tarsplit)
                            added_layers.append(diff_id)
                        if blob and not os.path.exists(store.blob_path(blob_digest)) \
                                and not (blob_digest == diff_id and store.can_make_tar(diff_id)):
                            store.adopt_blob(blob, blob_digest)
                            added_blobs.append(blob_digest)
                    if img.manifest_raw is None:
                        img.manifest_raw = json.dumps({
                            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                            "config": {"mediaType": MEDIA_OCI_CONFIG,
                                       "digest": "sha256:" + hashlib.sha256(img.config_raw).hexdigest(),
                                       "size": len(img.config_raw)},
                            "layers": [{"mediaType": MEDIA_OCI_LAYER, "digest": d, "size": store.tar_size(d)}
                                       for d, _b, _m, _p in img.layers]}, sort_keys=True).encode()
                    for raw in (img.config_raw, img.manifest_raw):
                        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
                        if not os.path.exists(store.blob_path(digest)):
                            store.put_blob(raw)
                            added_blobs.append(digest)
                    manifest_digest = "sha256:" + hashlib.sha256(img.manifest_raw).hexdigest()
                    if not img.tags:  # the store knows images by their tags: name it by its id
                        img.tags = [f"{UNTAGGED_REPO}/{hashlib.sha256(img.config_raw).hexdigest()[:12]}:latest"]
                    for tag in img.tags:
                        store.set_tag(tag, manifest_digest)
                    result.append((store.image(manifest_digest, img.tags[0] if img.tags else None), img.tags))
            except BaseException:
                store.restore_tags(old_tags)
                for d in added_blobs:
                    store.remove_blob(d)
                for d in added_layers:
                    store.remove_layer(maps, d)
                raise
        from .. import events
        for img, tags in result:
            events.emit(store.root, "image", "load", img.id, {"name": tags[0] if tags else img.id})
        return result
    finally:
        for got in prepared.values():
            remove_tree(maps, got.dir)
            if got.tarsplit and os.path.exists(got.tarsplit):
                os.unlink(got.tarsplit)
        shutil.rmtree(tmpdir, ignore_errors=True)


__all__ = ["save", "load", "write_to", "FORMATS"]
