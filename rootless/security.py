"""Docker's security options: ``--security-opt``, ``--privileged``, ``--read-only-tmpfs``.

Parsed once into ``SecurityOptions``; ``run`` and ``exec`` turn it into what the sandbox
applies (``sandbox.container.ProcessSpec`` and ``sandbox.mounts.RootfsPlan``):

* ``seccomp=unconfined`` | ``seccomp=PROFILE.json`` (Docker's JSON format); the default is
  Docker's default profile (``sandbox/seccomp.py``).
* ``no-new-privileges[=true|false]`` (also the old ``no-new-privileges:true``): Docker's
  default is *without* it, so ``su``/``sudo`` in a container work as in Docker — inside a
  user namespace they can never exceed the container's root.
* ``mask=PATH[:PATH...]`` adds masked paths; ``unmask=ALL|PATH[:PATH...]`` removes the
  defaults (Podman's spelling).
* ``label=...`` and ``apparmor=...`` are accepted when they ask for nothing (``disable``,
  ``unconfined``): rootless applies no LSM profile of its own.
* ``--privileged``: every capability of the user namespace, no seccomp filter, no masked or
  read-only paths, and the host's devices the user may open.  Still rootless: nothing more
  than the user has on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class SecurityOptions:
    seccomp: str = "default"                 # "default", "unconfined", or a profile's path
    no_new_privileges: bool = False
    privileged: bool = False
    mask: tuple[str, ...] = ()
    unmask: tuple[str, ...] = ()             # paths, or ("ALL",)
    read_only_tmpfs: bool = False

    def masked_paths(self, defaults: tuple[str, ...]) -> tuple[str, ...]:
        if self.privileged:
            return self.mask
        return tuple(p for p in defaults + self.mask if not self._unmasked(p))

    def readonly_paths(self, defaults: tuple[str, ...]) -> tuple[str, ...]:
        if self.privileged:
            return ()
        return tuple(p for p in defaults if not self._unmasked(p))

    def _unmasked(self, path: str) -> bool:
        return "ALL" in self.unmask or path in self.unmask


def absolute_profile_paths(security_opt: list[str] | tuple[str, ...]) -> list[str]:
    """``security_opt`` with a relative ``seccomp=PROFILE`` made absolute against the current
    directory: the container's record keeps it, so that ``exec`` and restarts read the same file."""
    import os
    out = []
    for raw in security_opt:
        key, sep, value = raw.partition("=")
        if not sep and ":" in raw:
            key, sep, value = raw.partition(":")
        if key.strip() == "seccomp" and value and value != "unconfined" and not value.startswith("/"):
            raw = f"{key}{sep}{os.path.abspath(value)}"
        out.append(raw)
    return out


_TRUE = ("", "true", "1", "yes")
_FALSE = ("false", "0", "no")


def parse(security_opt: list[str] | tuple[str, ...] = (), privileged: bool = False,
          read_only_tmpfs: bool = False) -> SecurityOptions:
    """Docker's ``--security-opt`` values (``KEY=VALUE``, or the old ``KEY:VALUE``)."""
    seccomp, nnp = "unconfined" if privileged else "default", False
    mask: list[str] = []
    unmask: list[str] = []
    for raw in security_opt:
        key, sep, value = raw.partition("=")
        if not sep and ":" in raw:
            key, _, value = raw.partition(":")
        key = key.strip()
        if key == "seccomp":
            if not value:
                raise UsageError("--security-opt seccomp needs a value: seccomp=unconfined or "
                                 "seccomp=/path/to/profile.json")
            seccomp = "unconfined" if value == "unconfined" else value
        elif key == "no-new-privileges":
            if value.lower() in _TRUE:
                nnp = True
            elif value.lower() in _FALSE:
                nnp = False
            else:
                raise UsageError(f"invalid --security-opt '{raw}': use no-new-privileges or "
                                 "no-new-privileges=false")
        elif key in ("mask", "unmask"):
            paths = [p for p in value.split(":") if p]
            if not paths:
                raise UsageError(f"--security-opt {key} needs paths, e.g. {key}=/proc/kcore:/sys/firmware"
                                 + (" or unmask=ALL" if key == "unmask" else ""))
            for p in paths:
                if p != "ALL" and not p.startswith("/"):
                    raise UsageError(f"invalid path '{p}' in --security-opt {key}: it must be absolute")
                if p == "ALL" and key == "mask":
                    raise UsageError("--security-opt mask=ALL is not supported: name the paths to mask")
            (mask if key == "mask" else unmask).extend(paths)
        elif key in ("label", "apparmor"):
            if value not in ("disable", "unconfined", "type:unconfined_t"):
                raise UsageError(f"--security-opt {raw}: rootless applies no {key} profile; only "
                                 f"{key}={'disable' if key == 'label' else 'unconfined'} is accepted")
        else:
            raise UsageError(f"unknown --security-opt '{raw}': use seccomp=unconfined|PROFILE.json, "
                             "no-new-privileges, mask=PATHS or unmask=ALL|PATHS")
    if privileged:
        seccomp = "unconfined"   # as Docker: --privileged runs without a filter, whatever was asked
    return SecurityOptions(seccomp=seccomp, no_new_privileges=nnp, privileged=privileged,
                           mask=tuple(mask), unmask=tuple(unmask), read_only_tmpfs=read_only_tmpfs)
