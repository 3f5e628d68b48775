"""Single-file images: an image's merged root filesystem in one squashfs file, with its config.

``rootless save --format squashfs IMAGE -o img.sqfs`` writes one; ``rootless run img.sqfs``
runs it without loading or unpacking anything (the file is mounted by squashfuse and shared by
the containers of a node: ``container/squashmount.py``).

The file is a squashfs filesystem (``mksquashfs``) followed by a trailer that squashfs readers
ignore (a squashfs knows its own length)::

    <squashfs> <image config, JSON> <its length: 8 bytes, big-endian> TRAILER_MAGIC

The config is the image's OCI config (Entrypoint, Cmd, Env, WorkingDir, User...), so that
``run img.sqfs`` behaves as ``run IMAGE`` without mounting anything to plan the container.

Owners: the filesystem holds the container's ids (0 for root, 1000 for a uid 1000), written by
``mksquashfs`` run as root of a user namespace with the caller's maps.  In single-uid mode the
layers themselves hold only root's files, and so does the squashfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess

from ..errors import ImageNotFound, StoreError, UsageError
from ..sandbox import idmap
from ..sandbox.userns import run_as_root
from . import whiteouts
from .store import Image, Store

SQUASHFS_MAGIC = b"hsqs"
TRAILER_MAGIC = b"ROOTLESS-IMAGE-CONFIG-1\n"
SUFFIX = ".sqfs"
MAX_CONFIG = 16 << 20


def looks_like_file(arg: str) -> bool:
    """Whether an image argument names a squashfs file rather than an image of the store: a
    path (it contains '/' or ends in .sqfs) to an existing regular file.  Image names may
    contain '/' too (library/busybox): an existing file wins, and a name never ends in .sqfs."""
    if "/" not in arg and not arg.endswith(SUFFIX):
        return False
    try:
        return stat.S_ISREG(os.stat(arg).st_mode)
    except OSError:
        return False


def read_image(path: str) -> Image:
    """The image of squashfs file ``path``: its config, no layers, ``squashfs`` set to its
    absolute path.  A file that is not one of ours says what it is."""
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            size = f.seek(0, os.SEEK_END)
            tail_len = len(TRAILER_MAGIC) + 8
            if size >= tail_len:
                f.seek(size - tail_len)
                tail = f.read(tail_len)
            else:
                tail = b""
            if head != SQUASHFS_MAGIC:
                raise UsageError(f"{path} is not a squashfs file: make one with "
                                 "'rootless save --format squashfs IMAGE -o FILE'")
            if not tail.endswith(TRAILER_MAGIC):
                raise UsageError(f"{path} is a squashfs file without an image config: make one with "
                                 "'rootless save --format squashfs IMAGE -o FILE'")
            length = int.from_bytes(tail[:8], "big")
            if length > min(MAX_CONFIG, size - tail_len):
                raise UsageError(f"{path} has a damaged image config: make it again with 'rootless save'")
            f.seek(size - tail_len - length)
            raw = f.read(length)
    except FileNotFoundError:
        raise ImageNotFound(f"no squashfs image at {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a squashfs image") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: you may not read it") from None
    try:
        config = json.loads(raw)
        if not isinstance(config, dict):
            raise ValueError
    except ValueError:
        raise UsageError(f"{path} has a damaged image config: make it again with 'rootless save'") from None
    return Image(ref=path, manifest_digest="", id="sha256:" + hashlib.sha256(raw).hexdigest(), config=config,
                 diff_ids=(), squashfs=path)


def _merge_tree(layer_dirs: list[str], target: str) -> None:
    """The merged tree of ``layer_dirs`` at ``target``, as root of the user namespace: files
    hard-linked from the layers (read only, never changed), directories and symbolic links made
    with the owners, modes, times and xattrs of the top-most layer's."""
    dirs: list[tuple[str, os.stat_result, str]] = []
    for rel, src in whiteouts.merged(layer_dirs):
        dst = os.path.join(target, rel)
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dst, 0o700)
            for name in _xattr_names(src):
                try:
                    os.setxattr(dst, name, os.getxattr(src, name))
                except OSError:
                    pass
            dirs.append((dst, st, src))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
            os.lchown(dst, st.st_uid, st.st_gid)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        else:
            os.link(src, dst, follow_symlinks=False)
    for dst, st, _src in reversed(dirs):    # children first: their creation changed the mtime
        os.chown(dst, st.st_uid, st.st_gid)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _xattr_names(path: str) -> list[str]:
    try:
        return [n for n in os.listxattr(path, follow_symlinks=False) if not whiteouts.private_xattr(n)]
    except OSError:
        return []


def mksquashfs() -> str:
    exe = shutil.which("mksquashfs")
    if not exe:
        raise StoreError("mksquashfs is not installed: install squashfs-tools (Debian, Ubuntu, Fedora)")
    return exe


def save(store: Store, maps: idmap.IdMaps, name: str, output: str, compression: str = "zstd") -> Image:
    """Write image ``name`` of the store as squashfs file ``output`` (replaced atomically)."""
    image = store.resolve(name)
    exe = mksquashfs()
    missing = [d for d in image.diff_ids if not store.has_layer(d)]
    if missing:
        raise StoreError(f"layer {missing[0]} of image {name} is missing from the store: pull or load it again")
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    if os.path.isdir(output):
        raise UsageError(f"cannot write {output}: it is a directory; give a file name with -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {output}: you may not write in {parent}, or it does not exist; "
                         "give another file with -o")
    from .. import atomic
    partial = os.path.join(parent, atomic.temp_name("." + os.path.basename(output)))
    work = store.new_temp_dir("sqfs")
    tree = os.path.join(work, "root")
    errors = os.path.join(work, "mksquashfs.err")
    layers = [store.layer_dir(d) for d in image.diff_ids]
    cores = str(max(1, len(os.sched_getaffinity(0))))

    def build() -> None:
        os.mkdir(tree, 0o755)
        _merge_tree(layers, tree)
        with open(errors, "wb") as err:
            # zstd level 3 (mksquashfs's default is 15): saving a 500 MB image takes a few
            # seconds rather than a minute, for a file about 5% larger that reads as fast
            level = ["-Xcompression-level", "3"] if compression == "zstd" else []
            proc = subprocess.run([exe, tree, partial, "-noappend", "-no-progress", "-quiet",
                                   "-comp", compression, *level, "-processors", cores],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        if proc.returncode != 0:
            with open(errors, errors="replace") as f:
                raise OSError(f"mksquashfs failed: {f.read().strip()[-2000:]}")

    from ..sandbox import channel
    from ..sandbox.remove import remove_tree
    try:
        try:
            run_as_root(maps, build, name="rootless-sqfs-save")
        except channel.ChildError as e:
            raise StoreError(f"cannot make {output}: {e}") from None
        raw = json.dumps(image.config, separators=(",", ":"), sort_keys=True).encode()
        with open(partial, "ab") as f:
            f.write(raw + len(raw).to_bytes(8, "big") + TRAILER_MAGIC)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)
        os.rename(partial, output)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    finally:
        remove_tree(maps, work)
    from .. import events
    events.emit(store.root, "image", "save", image.id, {"name": image.ref or name})
    return image


__all__ = ["looks_like_file", "read_image", "save", "mksquashfs", "SUFFIX", "TRAILER_MAGIC"]
