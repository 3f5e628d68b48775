"""The image store on disk.

    ROOT/
      blobs/sha256/HEX        content-addressed blobs: layer tars, image configs, manifests
      layers/HEX/             each layer unpacked once (HEX = its diff id), shared read-only
      tags.json               {"name:tag": "sha256:MANIFEST"}
      containers/ID/          one per container: config.json, its root filesystem, etc files
      lock                    flock(2) held by commands that change the store

Blob writes are verified against their digest and atomic (temp file + rename); tags.json
is replaced atomically.  Files inside ``layers/`` and container root filesystems are owned
through the user namespace (sub-ids), so only code running in it may remove them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

from . import reference
from ..errors import ImageNotFound, StoreError


@dataclass(frozen=True)
class Image:
    ref: str | None
    manifest_digest: str
    id: str                   # the config's digest, as Docker shows it
    config: dict[str, Any]
    diff_ids: tuple[str, ...]

    @property
    def run_config(self) -> dict[str, Any]:
        return self.config.get("config") or {}


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise StoreError(f"invalid digest '{digest}'")
    return value


SUBDIRS = ("blobs/sha256", "layers", "containers", "tmp")
CHOOSE = "choose a store of your own with --root DIR or ROOTLESS_ROOT=DIR (default ~/.local/share/rootless)"


def _owner(path: str) -> str:
    """'user NAME (uid N)' for the owner of ``path``, or 'uid N'."""
    import pwd
    uid = os.stat(path).st_uid
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _not_usable(root: str, path: str) -> str:
    where = "it" if path == os.path.normpath(root) else path
    try:
        st = os.stat(path)
    except OSError:
        return f"the store {root} is not accessible to you: {CHOOSE}"
    if st.st_uid != os.getuid():
        return f"the store {root} is not yours ({where} belongs to {_owner(path)}) and you may not write in it: {CHOOSE}"
    return (f"the store {root} is yours but not writable ({where} has mode {st.st_mode & 0o7777:o}): "
            f"run 'chmod u+rwx {path}', or {CHOOSE}")


def _cannot_create(root: str, e: OSError) -> str:
    """Why the store could not be made at ``root``, naming the directory that stops it."""
    import errno
    where = root
    while not os.path.lexists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if e.errno in (errno.EACCES, errno.EPERM):
        try:
            mine = os.stat(where).st_uid == os.getuid()
        except OSError:
            mine = False
        if where == os.path.normpath(root):
            return _not_usable(root, where)
        if mine:
            return f"cannot create the store at {root}: you may not write in {where}: {CHOOSE}"
        return (f"cannot create the store at {root}: {where} is not yours and you may not write in it: "
                f"{CHOOSE}")
    if e.errno == errno.EROFS:
        return f"cannot create the store at {root}: {where} is on a read-only filesystem: {CHOOSE}"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create the store at {root}: {where} is not a directory: {CHOOSE}"
    if e.errno == errno.ENOSPC:
        return f"cannot create the store at {root}: its filesystem is full: free some space, or {CHOOSE}"
    return f"cannot create the store at {root} ({os.strerror(e.errno).lower() if e.errno else e}): {CHOOSE}"


def lock_exclusive(fd: int, what: str) -> None:
    """flock(2) ``fd``, or say that this filesystem has no working file locks and what to do."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as e:
        raise StoreError(f"cannot lock {what} ({e.strerror}): file locks do not work on this filesystem "
                         "(NFS or Lustre without locking?). Put the store on local disk: "
                         "--root /tmp/$USER/rootless or ROOTLESS_ROOT") from None


class Store:
    def __init__(self, root: str):
        self.root = root
        try:
            for sub in SUBDIRS:
                os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(_cannot_create(root, e)) from None
        # Another user's store (or one made read-only) would fail later with a bare EACCES.
        for sub in (".", *SUBDIRS):
            path = os.path.normpath(os.path.join(root, sub))
            if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
                raise StoreError(_not_usable(root, path))

    # --- locking and atomic files ---
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            lock_exclusive(fd, f"the store at {self.root}")
            yield
        finally:
            os.close(fd)

    def _write_atomic(self, path: str, data: bytes) -> None:
        import tempfile
        fd, tmp = tempfile.mkstemp(dir=os.path.join(self.root, "tmp"))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # --- blobs ---
    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", _hex(digest))

    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._write_atomic(path, data)
        return digest

    def adopt_blob(self, tmp_path: str, digest: str) -> None:
        """Move a verified temp file into place as blob ``digest``."""
        os.rename(tmp_path, self.blob_path(digest))

    def read_json(self, digest: str) -> dict[str, Any]:
        path = self.blob_path(digest)
        with open(path, "rb") as f:
            data = f.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt ({path}): import the image again")
        return json.loads(data)

    # --- layers ---
    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.root, "layers", _hex(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_dir(diff_id))

    # --- tags and images ---
    def _tags_path(self) -> str:
        return os.path.join(self.root, "tags.json")

    def tags(self) -> dict[str, str]:
        try:
            with open(self._tags_path()) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read {self._tags_path()}: {e}") from None

    def set_tag(self, ref: str, manifest_digest: str) -> None:
        """Point ``ref`` at a manifest.  Call with the store locked."""
        tags = self.tags()
        tags[reference.normalize(ref)] = manifest_digest
        self._write_atomic(self._tags_path(), json.dumps(tags, indent=1, sort_keys=True).encode())

    def image(self, manifest_digest: str, ref: str | None = None) -> Image:
        manifest = self.read_json(manifest_digest)
        config_digest = manifest["config"]["digest"]
        config = self.read_json(config_digest)
        diff_ids = tuple((config.get("rootfs") or {}).get("diff_ids") or ())
        return Image(ref, manifest_digest, config_digest, config, diff_ids)

    def resolve(self, ref: str) -> Image:
        """An image by ``name[:tag]`` or by (a unique prefix of) its id."""
        tags = self.tags()
        try:
            normalized = reference.normalize(ref)
        except Exception:
            normalized = None
        if normalized and normalized in tags:
            return self.image(tags[normalized], normalized)
        prefix = ref.removeprefix("sha256:")
        if len(prefix) >= 3 and all(c in "0123456789abcdef" for c in prefix):
            matches = {}
            for tag, digest in tags.items():
                img = self.image(digest, tag)
                if _hex(img.id).startswith(prefix):
                    matches.setdefault(img.id, img)
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise StoreError(f"image id prefix '{ref}' is ambiguous: give more characters")
        raise ImageNotFound(f"image '{normalized or ref}' is not in the local store ({self.root}). "
                            f"'rootless images' lists what you have; get it with 'rootless pull {ref}', or "
                            f"make one from a root filesystem tarball with 'rootless import ROOTFS.tar {ref}'")

    def images(self) -> list[Image]:
        return [self.image(d, t) for t, d in sorted(self.tags().items())]

    def untag(self, ref: str) -> str:
        """Remove tag ``ref``; the manifest digest it pointed at.  Call with the store locked."""
        tags = self.tags()
        key = reference.normalize(ref)
        if key not in tags:
            raise ImageNotFound(f"no image tagged '{key}' ('rootless images' lists them)")
        digest = tags.pop(key)
        self._write_atomic(self._tags_path(), json.dumps(tags, indent=1, sort_keys=True).encode())
        return digest

    def unreferenced(self, manifest_digest: str) -> tuple[list[str], list[str]]:
        """Blobs and layers of ``manifest_digest`` that no tagged image uses: (blob digests, diff ids)."""
        keep_blobs: set[str] = set()
        keep_layers: set[str] = set()
        for digest in self.tags().values():
            img = self.image(digest)
            keep_blobs |= {digest, img.id, *(d["digest"] for d in self.read_json(digest).get("layers", []))}
            keep_layers |= set(img.diff_ids)
        if manifest_digest in keep_blobs:
            return [], []
        img = self.image(manifest_digest)
        blobs = [manifest_digest, img.id] + [d["digest"] for d in self.read_json(manifest_digest).get("layers", [])]
        return ([b for b in blobs if b not in keep_blobs], [d for d in img.diff_ids if d not in keep_layers])

    def container_dir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    # --- whole-store views (save/load, garbage collection, system df) ---
    def restore_tags(self, tags: dict[str, str]) -> None:
        """Replace tags.json with ``tags`` (undoing a failed load).  Call with the store locked."""
        self._write_atomic(self._tags_path(), json.dumps(tags, indent=1, sort_keys=True).encode())

    def blob_digests(self) -> list[str]:
        base = os.path.join(self.root, "blobs", "sha256")
        return ["sha256:" + n for n in sorted(os.listdir(base))
                if len(n) == 64 and all(c in "0123456789abcdef" for c in n)]

    def layer_ids(self) -> list[str]:
        base = os.path.join(self.root, "layers")
        return ["sha256:" + n for n in sorted(os.listdir(base))
                if len(n) == 64 and all(c in "0123456789abcdef" for c in n)]
