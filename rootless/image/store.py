"""The image store on disk.

    ROOT/
      blobs/sha256/HEX        content-addressed blobs: image configs, manifests, and a layer's tar
                              only where its tar-split cannot serve (or an older store made it)
      layers/HEX/             each layer unpacked once (HEX = its diff id), shared read-only
      sizes/HEX               the unpacked size of layer HEX (written before the layer appears)
      tarsplit/HEX            what makes layer HEX's tar again from layers/HEX/ (``tarsplit.py``;
                              written before the layer appears): a layer pulled, imported, loaded, committed
                              or built keeps no plain blob
      compressed/HEX.FORMAT   layer HEX (a diff id) compressed with FORMAT (gzip, zstd): the
                              descriptor of that blob (pulled, or made by push), so that a push
                              finds it at the registry, or compresses a layer once; the blob, when
                              the store keeps it, is live while the layer is
      tags.json               {"name:tag": "sha256:MANIFEST"}
      containers/ID/          one per container: config.json, its root filesystem, etc files
      lock                    flock(2) held by commands that change the store

Every change is crash-safe (``rootless.atomic``): a blob, a layer or tags.json becomes
visible by one rename once complete and flushed; temporary files and half-made layers are
named after their writer (pid and start time) and removed by the next command that takes the
lock once that writer is gone.  Writers make things visible in an order that keeps the store
whole after a kill at any point: blobs, then layers, then the config and manifest, then the
tag; removers go the other way (tag first; a layer is renamed away before it is removed).  Files inside ``layers/`` and container root filesystems are owned
through the user namespace (sub-ids), so only code running in it may remove them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from . import reference
from .. import atomic
from ..errors import ImageNotFound, StoreError


@dataclass(frozen=True)
class Image:
    ref: str | None
    manifest_digest: str
    id: str                   # the config's digest, as Docker shows it
    config: dict[str, Any]
    diff_ids: tuple[str, ...]
    squashfs: str | None = None   # a single-file image (image/squashfs.py): its path; no layers

    @property
    def run_config(self) -> dict[str, Any]:
        return self.config.get("config") or {}


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise StoreError(f"invalid digest '{digest}'")
    return value


SUBDIRS = ("blobs/sha256", "layers", "sizes", "tarsplit", "compressed", "containers", "tmp")
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


def _command() -> str:
    args = [os.path.basename(sys.argv[0])] + sys.argv[1:3] if sys.argv else []
    return " ".join(a for a in args if a)[:80] or "rootless"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another command"
    return f"PID {pid} ({command})" if command else f"PID {pid}"


def _lock_waiting(fd: int, what: str, short: str, notice_after: float = 1.0) -> None:
    """``lock_exclusive``, saying once on stderr who holds the lock when it takes more than
    ``notice_after`` seconds (a silent wait looks like a hang)."""
    deadline = time.monotonic() + notice_after
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError:
            break                      # lock_exclusive words it
        if time.monotonic() >= deadline:
            print(f"rootless: waiting for the {short} lock held by {_holder(fd)}", file=sys.stderr, flush=True)
            break
        time.sleep(0.05)
    lock_exclusive(fd, what)


def _remove_any(path: str) -> None:
    """Remove a leftover file or tree, as root of the user namespace when we cannot ourselves
    (an unpacked layer's files may be owned by sub-ids)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    from ..sandbox import idmap
    from ..sandbox.remove import remove_tree
    remove_tree(idmap.detect(), path)


def _local_alias(familiar: str) -> str | None:
    """Podman names images it built or imported ``localhost/NAME``: ``localhost/NAME`` finds our
    ``NAME`` (Docker Hub's form, as build and import name them) and ``NAME`` finds a
    ``localhost/NAME`` loaded from Podman.  None for a name on another registry."""
    if familiar.startswith("localhost/"):
        return familiar.removeprefix("localhost/")
    first = familiar.split("/", 1)[0]
    if "/" in familiar and ("." in first or ":" in first):
        return None                             # on a registry: never another image
    return "localhost/" + familiar


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
        # NFS, Lustre, GPFS...: refused now, with the fix, rather than halfway through a pull
        from . import placement
        placement.check(root)

    # --- locking and atomic files ---
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store lock.  A command that waits for it more than a second says so, once, on
        stderr (naming the holder).  Taking it removes the temporary files of writers that are
        gone (killed pulls, loads, imports)."""
        path = os.path.join(self.root, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock_waiting(fd, f"the store at {self.root}", "image store")
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {_command()}\n".encode(), 0)
            except OSError:
                pass
            self.clean_stale()
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    def new_temp_dir(self, kind: str) -> str:
        """A directory of our own under tmp/, named so that it is removed if we are killed."""
        path = os.path.join(self.tmp_dir(), atomic.temp_name(kind))
        os.mkdir(path, 0o700)
        return path

    def clean_stale(self) -> list[str]:
        """Remove what killed writers left: temporary files under tmp/ and half-made layers
        (``layers/.tmp-*``) whose writer is gone.  Call with the store locked."""
        removed = []
        for base in (self.tmp_dir(), os.path.join(self.root, "layers")):
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                if base != self.tmp_dir() and not name.startswith(".tmp-"):
                    continue
                # A half-made layer without its writer's name is from a version of rootless that
                # unpacked with the lock held: seen with the lock, its writer is gone.
                if not (atomic.stale(name) or (base != self.tmp_dir() and not atomic.has_writer(name))):
                    continue
                path = os.path.join(base, name)
                _remove_any(path)
                removed.append(path)
        return removed

    def _write_atomic(self, path: str, data: bytes) -> None:
        atomic.write_file(path, data, tmpdir=self.tmp_dir())

    # --- blobs ---
    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", _hex(digest))

    def put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._write_atomic(path, data)
        return digest

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def adopt_blob(self, tmp_path: str, digest: str) -> None:
        """Move a verified, complete temp file into place as blob ``digest``."""
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        atomic.publish(tmp_path, self.blob_path(digest))

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

    def layer_temp_dir(self) -> str:
        """An empty directory under layers/ to unpack a layer into (``publish_layer`` renames it)."""
        path = os.path.join(self.root, "layers", atomic.temp_name(".tmp-layer"))
        os.mkdir(path, 0o755)
        return path

    def publish_layer(self, tmp: str, diff_id: str, size: int, tarsplit: str | None = None) -> bool:
        """Make the complete layer ``tmp`` visible as ``diff_id`` with its unpacked ``size``
        and its tar-split record (the temporary file ``tarsplit``, flushed: renamed into place),
        those first: a visible layer always has its size, and its record when it was made with
        one.  False if the store has it already (the caller removes ``tmp`` and ``tarsplit``).
        Call with the store locked."""
        if self.has_layer(diff_id):
            return False
        self._write_atomic(self._size_path(diff_id), str(size).encode())
        if tarsplit is not None:
            atomic.publish(tarsplit, self.tarsplit_path(diff_id))
        atomic.publish(tmp, self.layer_dir(diff_id))
        return True

    def tar_size(self, diff_id: str) -> int:
        """The size of layer ``diff_id``'s plain tar: its blob's, or as its tar-split record says."""
        if self.has_blob(diff_id):
            return os.path.getsize(self.blob_path(diff_id))
        if self.has_layer(diff_id) and self.has_tarsplit(diff_id):
            from . import tarsplit
            with open(self.tarsplit_path(diff_id), "rb") as f:
                return tarsplit.total_size(f)
        raise StoreError(f"layer {diff_id} is missing from the store: pull or import the image again")

    def tarsplit_path(self, diff_id: str) -> str:
        return os.path.join(self.root, "tarsplit", _hex(diff_id))

    def has_tarsplit(self, diff_id: str) -> bool:
        return os.path.exists(self.tarsplit_path(diff_id))

    def can_make_tar(self, diff_id: str, blob_digest: str | None = None) -> bool:
        """Whether the store can give layer ``diff_id``'s tar: its plain blob, the compressed
        ``blob_digest``, or the unpacked layer with its tar-split record."""
        return (self.has_blob(diff_id) or (blob_digest is not None and self.has_blob(blob_digest))
                or (self.has_layer(diff_id) and self.has_tarsplit(diff_id)))

    def _size_path(self, diff_id: str) -> str:
        return os.path.join(self.root, "sizes", _hex(diff_id))

    def layer_size(self, diff_id: str) -> int:
        """The unpacked size of a layer (the sum of its regular files, as Docker counts it)."""
        try:
            with open(self._size_path(diff_id)) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
        total = 0   # a layer unpacked before sizes were recorded: what we can see of it
        for dirpath, _dirs, files in os.walk(self.layer_dir(diff_id)):
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total

    def remove_layer(self, maps: Any, diff_id: str) -> None:
        """Remove layer ``diff_id``: renamed away first (a half-removed layer is never visible),
        then removed as root of the user namespace.  Call with the store locked."""
        from ..sandbox.remove import remove_tree
        final = self.layer_dir(diff_id)
        doomed = os.path.join(self.root, "layers", atomic.temp_name(".tmp-rm"))
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return
        atomic.step("rename layer away")
        for path in (self._size_path(diff_id), self.tarsplit_path(diff_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        remove_tree(maps, doomed)

    def remove_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))
            atomic.step("unlink blob")

    # --- compressed variants of layers (push) ---
    def _compressed_path(self, diff_id: str, fmt: str) -> str:
        return os.path.join(self.root, "compressed", f"{_hex(diff_id)}.{fmt}")

    def compressed(self, diff_id: str, fmt: str) -> dict[str, Any] | None:
        """The descriptor (mediaType, digest, size) of layer ``diff_id`` compressed with ``fmt``,
        if the store keeps that blob."""
        try:
            with open(self._compressed_path(diff_id, fmt), "rb") as f:
                desc = json.loads(f.read())
            if self.has_blob(desc["digest"]):
                return desc
        except (OSError, ValueError, KeyError, TypeError, StoreError):
            pass
        return None

    def compressed_record(self, diff_id: str, fmt: str) -> dict[str, Any] | None:
        """The descriptor of layer ``diff_id`` compressed with ``fmt`` as recorded (pulled, or
        pushed), whether the store keeps that blob or not: a registry may have it."""
        try:
            with open(self._compressed_path(diff_id, fmt), "rb") as f:
                desc = json.loads(f.read())
            _hex(desc["digest"])
            int(desc["size"])
            return desc
        except (OSError, ValueError, KeyError, TypeError, StoreError):
            return None

    def remember_compressed(self, diff_id: str, fmt: str, desc: dict[str, Any]) -> None:
        """Record that blob ``desc`` (in the store already) is layer ``diff_id`` compressed with
        ``fmt``.  Call with the store locked."""
        self._write_atomic(self._compressed_path(diff_id, fmt), json.dumps(desc, sort_keys=True).encode())

    def compressed_variants(self) -> dict[str, list[tuple[str, str]]]:
        """{diff id: [(format, blob digest), ...]} for every record (its blob there or not)."""
        out: dict[str, list[tuple[str, str]]] = {}
        base = os.path.join(self.root, "compressed")
        for name in sorted(os.listdir(base)):
            hexpart, _, fmt = name.partition(".")
            if len(hexpart) != 64 or not fmt or name.startswith("."):
                continue
            try:
                with open(os.path.join(base, name), "rb") as f:
                    digest = json.loads(f.read())["digest"]
                _hex(digest)
            except (OSError, ValueError, KeyError, TypeError, StoreError):
                continue
            out.setdefault("sha256:" + hexpart, []).append((fmt, digest))
        return out

    def forget_compressed(self, diff_id: str, fmt: str) -> None:
        """Drop the record of ``diff_id`` compressed with ``fmt`` (not the blob).  Call with the
        store locked."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._compressed_path(diff_id, fmt))
            atomic.step("unlink compressed record")

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

    def tag(self, source: str, target: str) -> None:
        """``tag SOURCE TARGET``: the look-up and the change with the store locked."""
        with self.lock():
            img = self.resolve(source)
            self.set_tag(target, img.manifest_digest)
        from .. import events
        events.emit(self.root, "image", "tag", img.id, {"name": reference.normalize(target)})

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
        alias = _local_alias(normalized) if normalized else None
        if alias in tags:                       # Podman's localhost/NAME for a local NAME, and back
            return self.image(tags[alias], alias)
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
            if len(prefix) == 64:   # untagged, kept by a container made from it ('rmi -f')
                found = self.image_by_id("sha256:" + prefix)
                if found is not None:
                    return found
        raise ImageNotFound(f"image '{normalized or ref}' is not in the local store ({self.root}). "
                            f"'rootless images' lists what you have; get it with 'rootless pull {ref}', or "
                            f"make one from a root filesystem tarball with 'rootless import ROOTFS.tar {ref}'")

    def image_by_id(self, image_id: str) -> Image | None:
        """The image whose config is ``image_id``, tagged or not (a manifest in the blobs)."""
        for digest in self.blob_digests():
            path = self.blob_path(digest)
            try:
                if os.path.getsize(path) > 4 << 20:
                    continue
                with open(path, "rb") as f:
                    head = f.read(1)
                    if head != b"{":
                        continue
                    doc = json.loads(head + f.read())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("config"), dict) \
                    and doc["config"].get("digest") == image_id and isinstance(doc.get("layers"), list):
                try:
                    return self.image(digest)
                except (OSError, ValueError, StoreError):
                    continue
        return None

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
        from .. import events
        try:
            image_id = self.read_json(digest)["config"]["digest"]
        except (OSError, ValueError, KeyError, TypeError, StoreError):
            image_id = digest
        events.emit(self.root, "image", "untag", image_id, {"name": key})
        return digest

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
