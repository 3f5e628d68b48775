"""``rootless info``, ``version`` and ``--version``: what a user pastes into a bug report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.both_modes

INIT = Path(__file__).resolve().parent.parent / "rootless" / "__init__.py"   # pyproject's version comes from it


def _version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', INIT.read_text(), re.M).group(1)


def test_version_and_dash_dash_version(rl):
    assert rl("--version").stdout == f"rootless version {_version()}\n"
    data = json.loads(rl("version", "--format", "json").stdout)
    assert data["Version"] == _version() and data["Kernel"] == os.uname().release
    assert "Python:" in rl("version").stdout


def test_info_says_what_was_found_here(rl):
    data = json.loads(rl("info", "--format", "json").stdout)
    import pwd
    me = pwd.getpwuid(os.getuid()).pw_name
    has_range = any(line.split(":")[0] in (me, str(os.getuid())) for line in open("/etc/subuid"))
    assert data["IdMaps"]["Mode"] == ("range" if has_range else "single")
    if not has_range:
        assert "/etc/subuid" in data["IdMaps"]["Why"]
    assert data["IdMaps"]["UidMap"][0] == f"0:{os.getuid()}:1"
    assert data["Store"] == str(rl.root)
    assert data["StorageDriver"]["Auto"] in ("fuse-overlay", "overlay", "vfs")
    assert data["Network"]["Tools"]["slirp4netns"] or data["Network"]["Tools"]["pasta"]
    assert data["Cgroups"]["Kind"] in ("v1", "v2", "none")
    text = rl("info").stdout
    assert "IdMaps:" in text and "StorageDriver:" in text and "Traceback" not in text


def test_durations_are_worded_as_docker_words_them():
    from rootless.units import human_duration
    cases = {0.5: "Less than a second", 1: "1 second", 59: "59 seconds", 60: "About a minute",
             150: "2 minutes", 3600: "About an hour", 5 * 3600: "5 hours", 3 * 86400: "3 days",
             20 * 86400: "2 weeks", 90 * 86400: "3 months", 800 * 86400: "2 years"}
    assert {k: human_duration(k) for k in cases} == cases


def test_ps_shows_how_long_ago(rl):
    cid = rl("run", "-d", "--network", "none", "busybox", "sleep", "30").stdout.strip()
    try:
        row = next(r for r in json.loads(rl("ps", "--format", "json").stdout) if cid.startswith(r["Id"]))
        assert row["Status"].startswith("Up ") and ("second" in row["Status"] or "minute" in row["Status"])
        rl("rm", "-f", cid)
        done = rl("run", "--network", "none", "busybox", "true")
        assert done.returncode == 0
        row = json.loads(rl("ps", "-a", "--format", "json", "--filter", "status=exited").stdout)[0]
        assert row["Status"].startswith("Exited (0) ") and row["Status"].endswith(" ago")
        rl("container", "prune", "-f")
    finally:
        rl("rm", "-f", cid)


def _complete(rl, *words: str) -> list[str]:
    """What bash completion offers after ``rootless WORDS`` (click's protocol, as the script asks)."""
    line = ["rootless", *words]
    proc = rl(env={"COMP_WORDS": " ".join(line), "COMP_CWORD": str(len(line) - 1),
                   "_ROOTLESS_COMPLETE": "bash_complete"})
    return [ln.split(",", 1)[1] for ln in proc.stdout.splitlines() if "," in ln]


def test_shell_completion_scripts_and_names(rl, tmp_path):
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files")):
        proc = rl("completion", shell)
        assert proc.returncode == 0 and "_ROOTLESS_COMPLETE" in proc.stdout and marker in proc.stdout, proc.stderr
    cid = rl("create", "--name", "completes-me", "--network", "none", "busybox", "true").stdout.strip()
    assert rl("volume", "create", "completed-vol").returncode == 0
    try:
        assert "completes-me" in _complete(rl, "rm", "complet")
        assert "completes-me" in _complete(rl, "container", "start", "c")
        assert "busybox:latest" in _complete(rl, "run", "busy") and "busybox" in _complete(rl, "rmi", "busy")
        assert _complete(rl, "volume", "rm", "completed") == ["completed-vol"]
        assert "build" in _complete(rl, "bui")
    finally:
        rl("rm", "-f", cid)
        rl("volume", "rm", "completed-vol")
