"""Logs for every container (foreground ones too, as Docker keeps them), bounded, in Docker's
json-file or Podman's k8s-file format, or none."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.both_modes


def _name() -> str:
    return f"logs-{uuid.uuid4().hex[:8]}"


def test_a_foreground_container_is_logged_and_its_output_still_reaches_us(rl):
    name = _name()
    proc = rl("run", "--name", name, "--network", "none", "busybox", "sh", "-c",
              "echo one; echo two >&2; printf 'no newline'; exit 4")
    try:
        assert (proc.returncode, proc.stdout) == (4, "one\nno newline") and proc.stderr.endswith("two\n")
        logs = rl("logs", name)
        assert (logs.stdout, logs.stderr) == ("one\nno newline", "two\n")
        started = rl("start", "-a", name)                       # start -a is logged too
        assert started.returncode == 4
        assert rl("logs", name).stdout.count("one\n") == 2                     # both runs, in order
    finally:
        rl("rm", "-f", name)


def test_a_foreground_tty_container_is_logged_too(rl):
    """-t in the foreground: what we relay from the container's pty is logged as it passes."""
    name = _name()
    proc = rl("run", "-t", "--name", name, "--network", "none", "busybox", "sh", "-c",
              "echo tty-one; printf 'tty-two'")
    try:
        assert proc.returncode == 0 and proc.stdout.replace("\r", "") == "tty-one\ntty-two"
        logs = rl("logs", name)
        assert logs.stdout.replace("\r", "") == "tty-one\ntty-two" and logs.stderr == ""
    finally:
        rl("rm", "-f", name)


def test_the_log_is_bounded_and_rotated(rl):
    name = _name()
    script = "i=0; while [ $i -lt 400 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    proc = rl("run", "--name", name, "--network", "none", "--log-opt", "max-size=4k", "--log-opt", "max-file=2",
              "busybox", "sh", "-c", script)
    try:
        assert proc.returncode == 0 and proc.stdout.count("\n") == 400       # all of it reached us
        directory = rl.container_dir(name)
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith("ctr.log"))
        assert files == ["ctr.log", "ctr.log.1"]
        assert all((directory / f).stat().st_size < 8192 for f in files)
        kept = rl("logs", name).stdout.splitlines()
        assert kept and kept[-1].startswith("line-399-") and len(kept) < 400    # the newest, in order
        numbers = [int(line.split("-")[1]) for line in kept]
        assert numbers == sorted(numbers)
        assert rl("logs", "--tail", "2", name).stdout.splitlines() == kept[-2:]
    finally:
        rl("rm", "-f", name)


def test_k8s_file_format_and_no_log(rl):
    name, quiet = _name(), _name()
    try:
        assert rl("run", "--name", name, "--network", "none", "--log-driver", "k8s-file", "busybox", "sh", "-c",
                  "echo hello; echo oops >&2").returncode == 0
        raw = (rl.container_dir(name) / "ctr.log").read_text().splitlines()
        assert any(line.endswith(" stdout F hello") for line in raw), raw
        assert any(line.endswith(" stderr F oops") for line in raw), raw
        logs = rl("logs", name)
        assert (logs.stdout, logs.stderr) == ("hello\n", "oops\n")
        assert rl("run", "--name", quiet, "--network", "none", "--log-driver", "none", "busybox",
                  "echo", "unlogged").stdout == "unlogged\n"
        refused = rl("logs", quiet)
        assert refused.returncode == 125 and "--log-driver none" in refused.stderr
        bad = rl("run", "--rm", "--log-driver", "syslog", "busybox", "true")
        assert bad.returncode == 125 and "--log-driver" in bad.stderr
    finally:
        rl("rm", "-f", name, quiet)
