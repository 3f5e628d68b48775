"""The store's event journal (rootless/events.py): appends, filters, and a follower that
loses nothing across a rotation."""

from __future__ import annotations

import pytest

from rootless import events
from rootless.errors import UsageError

pytestmark = pytest.mark.both_modes


def test_a_follower_reads_across_rotations(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 2000)
    root = str(tmp_path)
    past, follower = events.past(root, None, None)       # no journal yet
    assert past == []
    seen = []
    try:
        for i in range(60):                               # several rotations
            events.emit(root, "volume", "create", f"v{i}", {"driver": "local"})
            if i % 7 == 0:
                seen += follower.read()
        seen += follower.read()
    finally:
        follower.close()
    assert [e["Actor"]["ID"] for e in seen] == [f"v{i}" for i in range(60)]
    assert (tmp_path / "events.log.1").exists()
    # what is still kept, read from the start: the last ones, in order
    kept, f2 = events.past(root, 0, None)
    f2.close()
    ids = [int(e["Actor"]["ID"][1:]) for e in kept]
    assert ids == sorted(ids) and ids[-1] == 59


def test_filters_and_docker_form(tmp_path):
    root = str(tmp_path)
    class Rec:
        id, name, image, config = "c" * 64, "web", "busybox:latest", {"labels": {"tier": "front"}}
    events.emit(root, "container", "start", Rec.id, events.container_attributes(Rec))
    events.emit(root, "image", "tag", "sha256:" + "a" * 64, {"name": "app:1"})
    kept, f = events.past(root, 0, None)
    f.close()
    match = lambda **flt: [e["Action"] for e in kept if events.Filter({k: v for k, v in flt.items()}).match(e)]
    assert match(container=["web"]) == ["start"] and match(container=["ccc"]) == ["start"]
    assert match(label=["tier=front"]) == ["start"] and match(label=["tier=back"]) == []
    assert match(image=["app:1"]) == ["tag"] and match(image=["busybox"]) == ["start"]
    assert match(type=["image"], event=["tag"]) == ["tag"]
    d = events.docker_form(kept[0])
    assert d["status"] == "start" and d["id"] == Rec.id and d["from"] == "busybox:latest"
    with pytest.raises(UsageError, match="invalid filter 'colour'"):
        events.Filter({"colour": ["red"]}).check()


def test_the_command_lines_kill_stop_commit_and_import_are_events(rl, busybox_tar):
    """What the CLI does shows in the journal as Docker's events: kill (with its signal),
    stop, commit, and an image's import."""
    import json
    import uuid
    name = f"ev-{uuid.uuid4().hex[:8]}"
    image = f"ev-img-{uuid.uuid4().hex[:8]}"
    rl("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "60", check=True)
    try:
        rl("kill", "-s", "USR1", name)
        rl("commit", name, image, check=True)
        rl("stop", "-t", "1", name, check=True)
        rl("import", str(busybox_tar), image + "-imported", check=True)
    finally:
        rl("rm", "-f", name)
        rl("rmi", image, image + "-imported")
    lines = [json.loads(line) for line in (rl.root / "events.log").read_text().splitlines()]
    mine = [(e["Action"], e["Actor"]["Attributes"].get("signal")) for e in lines
            if e["Actor"]["Attributes"].get("name") == name]
    assert ("kill", "10") in mine and ("commit", None) in mine and ("stop", None) in mine, mine
    assert any(e["Action"] == "import" and e["Actor"]["Attributes"]["name"].startswith(image + "-imported")
               for e in lines)


def test_exec_attach_and_save_are_events(rl, tmp_path):
    """exec (exec_start, exec_die with its exit code), attach and save are in the journal too,
    as Docker writes them."""
    import json
    import uuid
    name = f"ev-{uuid.uuid4().hex[:8]}"
    rl("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c", "sleep 1; echo done", check=True)
    try:
        assert rl("exec", name, "sh", "-c", "exit 3").returncode == 3
        attached = rl("attach", name)                     # follows it to its end
        assert attached.returncode == 0, attached
        rl("save", "-o", str(tmp_path / "bb.tar"), "busybox", check=True)
    finally:
        rl("rm", "-f", name)
    lines = [json.loads(line) for line in (rl.root / "events.log").read_text().splitlines()]
    mine = [(e["Action"], e["Actor"]["Attributes"].get("exitCode")) for e in lines
            if e["Actor"]["Attributes"].get("name") == name]
    assert ("exec_start: sh -c exit 3", None) in mine and ("exec_die", "3") in mine, mine
    assert ("attach", None) in mine, mine
    assert any(e["Type"] == "image" and e["Action"] == "save" for e in lines)
