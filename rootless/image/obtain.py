"""The image ``run``, ``create`` and ``build`` use: from the store, or pulled as ``--pull``
says.  Light on purpose: the registry client (and httpx) is imported only when a pull happens,
not on every container start."""

from __future__ import annotations

from typing import Callable

from ..progress import ProgressFactory
from ..sandbox import idmap
from .store import Image, Store


PULL_POLICIES = ("missing", "always", "never")


def ensure(store: Store, maps: idmap.IdMaps, name: str, policy: str = "missing", platform: str | None = None,
           tls_verify: bool = True, progress: ProgressFactory | None = None,
           report: Callable[[str], None] | None = None) -> Image:
    """The image ``run``/``create`` use (``--pull``): from the store, pulled when missing
    (``missing``), pulled anyway (``always``), or never pulled (``never``).  A short name is
    looked for in the registries of registries.conf's ``unqualified-search-registries`` in
    turn, when it lists any (else Docker's way: docker.io)."""
    from ..errors import ImageNotFound, RootlessError, UsageError
    if policy not in PULL_POLICIES:
        raise UsageError(f"invalid --pull '{policy}': use missing, always or never")
    from . import squashfs
    if squashfs.looks_like_file(name):       # a single-file image: never pulled
        return squashfs.read_image(name)
    missing: ImageNotFound | None = None
    if policy != "always":
        try:
            return check_platform(store.resolve(name), platform, name, policy)
        except ImageNotFound as e:
            if policy == "never":
                raise ImageNotFound(f"{e} (--pull never: it was not pulled)") from None
            missing = e
    from .pull import pull
    tried = []
    for candidate in _candidates(name):
        try:
            return pull(store, maps, candidate, platform, tls_verify, progress, report)
        except RootlessError as e:
            tried.append(f"{candidate}: {e}")
    raise ImageNotFound((f"{missing}. Pulling it failed: " if missing else f"pulling {name} failed: ")
                        + "; ".join(tried)) from None


def _candidates(name: str) -> list[str]:
    """Where a name is pulled from: itself, or for a short name the search registries."""
    first = name.split("/", 1)[0]
    qualified = "/" in name and ("." in first or ":" in first or first == "localhost")
    if qualified:
        return [name]
    from ..registry import registries_conf
    search = registries_conf.load().unqualified_search_registries
    return [f"{registry}/{name}" for registry in search] or [name]


def check_platform(img: Image, platform: str | None, name: str, policy: str) -> Image:
    """``img`` if it is for ``platform`` (OS/ARCH[/VARIANT]; None: any); else a clear refusal."""
    from ..errors import ImageNotFound, UsageError
    if not platform:
        return img
    wanted = platform.split("/")
    if len(wanted) < 2 or not all(wanted):
        raise UsageError(f"invalid --platform '{platform}': use OS/ARCH[/VARIANT], e.g. linux/amd64")
    have = [str(img.config.get("os") or ""), str(img.config.get("architecture") or ""),
            str(img.config.get("variant") or "")]
    if have[:2] != wanted[:2] or (len(wanted) > 2 and have[2] != wanted[2]):
        text = "/".join(p for p in have if p)
        raise ImageNotFound(f"image {name} in the store is for {text}, not {platform}: pull that platform's "
                            f"('rootless pull --platform {platform} {name}'), or leave --platform out"
                            + (" (--pull never)" if policy == "never" else ""))
    return img