"""``run``/``create`` pull an image that is not in the store, as Docker and Podman do (``--pull
missing|always|never``), short names through registries.conf's unqualified-search-registries."""

from __future__ import annotations

import uuid

import pytest

from .registry_server import running_registry
from .test_images import own_layer, push_image

pytestmark = pytest.mark.both_modes


def test_run_pulls_what_is_missing_and_never_means_never(rl, busybox_tar):
    repo = f"auto/pulled-{uuid.uuid4().hex[:6]}:1"
    with running_registry() as reg:
        push_image(reg, repo, [busybox_tar.read_bytes(), own_layer()], cmd=["echo", "from the registry"])
        remote = f"{reg.host}/{repo}"
        refused = rl("run", "--rm", "--pull", "never", "--network", "none", remote)
        assert refused.returncode == 125 and "--pull never" in refused.stderr
        ran = rl("run", "--rm", "--network", "none", remote, env={"ROOTLESS_PULL_POLICY": ""})   # the default
        assert (ran.returncode, ran.stdout) == (0, "from the registry\n"), ran.stderr
        assert "pulled 1 new layer(s)" in ran.stderr
        again = rl("run", "--rm", "--pull", "missing", "--network", "none", remote)   # in the store now: no pull
        assert again.returncode == 0 and "pulled" not in again.stderr
        always = rl("run", "--rm", "--pull", "always", "--network", "none", remote)
        assert always.returncode == 0 and "0 new layer(s), 2 already in the store" in always.stderr
        created = rl("create", "--pull", "always", "--network", "none", remote)
        assert created.returncode == 0, created.stderr
        rl("rm", created.stdout.strip().splitlines()[-1])
        rl("rmi", remote)


def test_short_names_are_searched_in_the_configured_registries(rl, busybox_tar, tmp_path):
    name = f"short-{uuid.uuid4().hex[:6]}"
    with running_registry() as reg:
        push_image(reg, f"{name}:latest", [busybox_tar.read_bytes()], cmd=["echo", "found by its short name"])
        conf = tmp_path / "containers" / "registries.conf"
        conf.parent.mkdir()
        conf.write_text(f'unqualified-search-registries = ["127.0.0.1:1", "{reg.host}"]\n')
        env = {"XDG_CONFIG_HOME": str(tmp_path)}
        ran = rl("run", "--rm", "--pull", "missing", "--network", "none", name, env=env)
        assert (ran.returncode, ran.stdout) == (0, "found by its short name\n"), ran.stderr
        missing = rl("run", "--rm", "--pull", "missing", "--network", "none", name + "-absent", env=env)
        assert missing.returncode == 125 and "127.0.0.1:1/" in missing.stderr and "Traceback" not in missing.stderr
        rl("rmi", f"{reg.host}/{name}")


def test_platform_is_checked(rl):
    import platform as host
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(host.machine(), host.machine())
    ok = rl("run", "--rm", "--network", "none", "--platform", f"linux/{arch}", "busybox", "true")
    assert ok.returncode == 0, ok.stderr
    other = "s390x" if arch != "s390x" else "amd64"
    refused = rl("run", "--rm", "--network", "none", "--platform", f"linux/{other}", "busybox", "true")
    assert refused.returncode == 125 and f"not linux/{other}" in refused.stderr and "Traceback" not in refused.stderr
    bad = rl("run", "--rm", "--platform", "amd64", "busybox", "true")
    assert bad.returncode == 125 and "OS/ARCH" in bad.stderr


def test_a_registry_name_that_does_not_resolve_is_said_so(rl):
    """Run in a network namespace of the test's own, with no interface up: the resolver cannot
    send its question anywhere (no packet leaves), and the name does not resolve."""
    import shutil
    import subprocess
    from .conftest import ROOTLESS
    if not shutil.which("unshare"):
        pytest.skip("util-linux's unshare is not installed")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--net", *ROOTLESS, "pull",
                           "registry.example.invalid/some/image:1"], env=rl.env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 125, proc.stderr
    assert "does not resolve" in proc.stderr and "registry.example.invalid" in proc.stderr
    assert "--tls-verify" not in proc.stderr and "Traceback" not in proc.stderr
