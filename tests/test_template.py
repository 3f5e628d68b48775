"""--format's Go templates, against what people write in scripts (Docker's docs and habits)."""

from __future__ import annotations

import pytest

from rootless.cli.template import Template, render_rows
from rootless.errors import UsageError

pytestmark = pytest.mark.both_modes

CONTAINER = {"Id": "0123456789ab", "Names": "web", "Image": "nginx:1", "State": {"Pid": 42, "Status": "running",
             "Running": True}, "Config": {"Env": ["A=1", "B=2"], "Labels": {"com.example.team": "hpc", "tier": "front"},
             "Cmd": ["nginx", "-g", "daemon off;"]}, "NetworkSettings": {"IPAddress": "10.0.2.100"},
             "Mounts": [{"Source": "/data", "Destination": "/d"}, {"Source": "/logs", "Destination": "/l"}]}


@pytest.mark.parametrize("fmt,expected", [
    ("{{.State.Pid}}", "42"),
    ("{{.ID}} {{.Names}}", "0123456789ab web"),                       # Docker's .ID finds our Id
    ("{{.NetworkSettings.IPAddress}}", "10.0.2.100"),
    ("{{json .Config.Env}}", '["A=1", "B=2"]'),
    ("{{.Config.Labels.tier}}", "front"),
    ('{{index .Config.Labels "com.example.team"}}', "hpc"),
    ("{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", "/data:/d /logs:/l "),
    ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "com.example.team=hpc;tier=front;"),
    ('{{join .Config.Cmd " "}}', "nginx -g daemon off;"),
    ("{{lower .Names}}-{{upper .Names}}", "web-WEB"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ('{{if eq .State.Status "exited"}}gone{{else if .State.Running}}running{{end}}', "running"),
    ("{{with .NetworkSettings}}{{.IPAddress}}{{end}}", "10.0.2.100"),
    ("{{len .Mounts}}", "2"),
    ('{{printf "%s has %d mounts" .Names (len .Mounts)}}', "web has 2 mounts"),
    ("{{.Names | upper}}", "WEB"),
    ("a\\tb{{- \" c\" -}}  d", "a\tb c" + "d"),
    ('{{range index .Config.Labels "none"}}x{{else}}none{{end}}', "none"),
    ("{{.Config.Labels.missing}}", "<no value>"),                     # a map's missing key
    ("{{$.Names}}{{range .Mounts}}{{$.Names}}{{end}}", "webwebweb"),
])
def test_templates(fmt, expected):
    assert Template(fmt).render(CONTAINER) == expected


def test_table_has_a_header():
    rows = [{"Id": "a1", "Names": "x"}, {"Id": "b2", "Names": "y"}]
    assert render_rows("table {{.ID}}\t{{.Names}}", rows, {"ID": "CONTAINER ID"}) == [
        "CONTAINER ID\tNAMES", "a1\tx", "b2\ty"]


@pytest.mark.parametrize("fmt", ["{{if .X}}no end", "{{end}}", "{{nosuchfunc .X}}", "{{.A", "{{(.A}}",
                                 "{{.Missing}}"])                   # a field an object of Docker's lacks
def test_bad_templates_are_clear_errors(fmt):
    with pytest.raises(UsageError, match="template"):
        Template(fmt).render(CONTAINER)


def test_format_templates_on_the_command_line(rl):
    cid = rl("create", "--name", "tmpl-demo", "-l", "team=hpc", "--network", "none", "busybox", "true").stdout.strip()
    assert rl("volume", "create", "tmpl-vol").returncode == 0
    try:
        ps = rl("ps", "-a", "--filter", "name=tmpl-demo", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.State}}")
        assert ps.stdout.splitlines() == ["CONTAINER ID\tNAMES\tSTATE", f"{cid[:12]}\ttmpl-demo\tcreated"], ps.stderr
        labels = rl("ps", "-a", "--filter", "name=tmpl-demo", "--format", '{{index .Labels "team"}}').stdout
        assert labels == "hpc\n"
        images = rl("images", "--filter", "reference=busybox", "--format", "{{.Repository}}:{{.Tag}}")
        assert images.stdout == "busybox:latest\n"
        inspect = rl("inspect", "-f", "{{.State.Status}} {{range .Config.Cmd}}[{{.}}]{{end}} {{json .Config.Labels}}",
                     "tmpl-demo")
        assert inspect.stdout == 'created [true] {"team": "hpc"}\n', inspect.stderr
        vols = rl("volume", "ls", "--filter", "name=tmpl-vol", "--format", "{{.Name}} {{.Driver}}")
        assert vols.stdout == "tmpl-vol local\n"
        info = rl("info", "--format", "{{.IdMaps.Mode}}")
        assert info.stdout.strip() in ("range", "single")
        bad = rl("ps", "--format", "{{if .ID}}")
        assert bad.returncode == 125 and "template parsing error" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        rl("rm", "-f", cid)
        rl("volume", "rm", "tmpl-vol")
