"""The ``rootless`` command line: argument types and a call into the engine per command.

Errors: a ``RootlessError`` is printed as one sentence and exits with its code (125
unless the container's command failed: 126, 127); a wrong flag exits 125 as in
Docker; tracebacks only with ``--debug``.  Engine modules are imported inside each
command so that start-up pays only for what runs.
"""

from __future__ import annotations

import os
import sys

import click

from .common import (CONTEXT, complete_containers, complete_images, format_option, print_templated,
                     store as _store, warn as _warn)
from ..errors import RootlessError


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from ..info import version
        click.echo(f"rootless version {version()['Version']}")
        ctx.exit()


@click.group(context_settings=CONTEXT)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit.")
@click.option("--root", metavar="DIR", envvar="ROOTLESS_ROOT",
              help="Image store directory (default $XDG_DATA_HOME/rootless).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, root: str | None, debug: bool) -> None:
    """Run containers as an ordinary user: no root, no daemon."""
    if debug:
        os.environ["ROOTLESS_DEBUG"] = "1"
    ctx.obj = {"root": root}


def _container_flags(command):
    """The flags 'run' and 'create' share (Docker's container configuration)."""
    flags = [
        click.option("--rm", is_flag=True, help="Remove the container when it exits."),
        click.option("--stop-signal", metavar="SIGNAL",
                     help="Signal 'stop' sends first (default: the image's, or TERM)."),
        click.option("--userns", default="", metavar="MODE",
                     help="keep-id: your own uid/gid inside (files you write in bind mounts stay yours)."),
        click.option("--restart", default="no", show_default=True, metavar="POLICY",
                     help="no, always, unless-stopped or on-failure[:MAX] (with -d: the monitor restarts it)."),
        click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (pass it to the container)."),
        click.option("-t", "--tty", is_flag=True, help="Give the container a pseudo-terminal."),
        click.option("-e", "--env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable."),
        click.option("--env-file", "env_files", multiple=True, metavar="FILE",
                     help="Read environment variables from FILE."),
        click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the container."),
        click.option("-u", "--user", metavar="USER[:GROUP]", help="User (name or uid) and group to run as."),
        click.option("-h", "--hostname", metavar="NAME", help="Container host name (default: its short id)."),
        click.option("--entrypoint", metavar="CMD", help="Override the image's ENTRYPOINT ('' clears it)."),
        click.option("--name", metavar="NAME", help="Name the container."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("-v", "--volume", multiple=True, metavar="[HOST_PATH|NAME:]PATH[:ro]",
                     help="Bind-mount a host path, or mount a volume (named or anonymous)."),
        click.option("--mount", multiple=True, metavar="type=bind|volume|tmpfs,source=..,target=..",
                     help="Mount a host path, a volume or a tmpfs (Docker's --mount keys)."),
        click.option("--tmpfs", multiple=True, metavar="PATH[:OPTIONS]",
                     help="Mount a tmpfs (e.g. /run:size=64m)."),
        click.option("--security-opt", multiple=True, metavar="OPT",
                     help="seccomp=unconfined|PROFILE.json, no-new-privileges, mask=PATHS, unmask=ALL|PATHS."),
        click.option("--privileged", is_flag=True,
                     help="All capabilities of the user namespace, no seccomp filter, no masked paths, "
                           "the host devices you can open."),
        click.option("--read-only-tmpfs", is_flag=True,
                     help="With --read-only: writable tmpfs on /run, /tmp, /var/tmp."),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability (or ALL)."),
        click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (or ALL)."),
        click.option("--network", "--net", "network", metavar="MODE",
                     help="slirp4netns, pasta, none, host, or a network made with 'network create' "
                           "(default: slirp4netns if installed, else pasta)."),
        click.option("--network-alias", multiple=True, metavar="NAME",
                     help="Another name for the container on its user network."),
        click.option("-p", "--publish", multiple=True, metavar="[IP:]HOST_PORT:CONTAINER_PORT[/PROTO]",
                     help="Publish a container port on the host."),
        click.option("--add-host", multiple=True, metavar="NAME:ADDRESS",
                     help="Add a line to /etc/hosts (NAME:host-gateway names the gateway 10.0.2.2; the "
                           "host's loopback needs --network slirp4netns:allow_host_loopback=true)."),
        click.option("-m", "--memory", metavar="BYTES", help="Memory limit (e.g. 512m, 2g)."),
        click.option("--memory-swap", metavar="BYTES", help="Memory plus swap limit (-1: unlimited swap)."),
        click.option("--cpus", metavar="N", help="Number of CPUs (e.g. 1.5)."),
        click.option("-c", "--cpu-shares", metavar="N", help="CPU shares (relative weight, default 1024)."),
        click.option("--pids-limit", metavar="N", help="Maximum number of processes (-1: unlimited)."),
        click.option("--cpuset-cpus", metavar="LIST", help="CPUs the container may use (e.g. 0-1, 0,2)."),
        click.option("--cgroup-parent", metavar="DIRS",
                     help="Delegated cgroup directories to create containers in (colon-separated, "
                           "one per hierarchy)."),
        click.option("--storage-driver", default="auto", envvar="ROOTLESS_STORAGE_DRIVER", show_default=True,
                     type=click.Choice(["auto", "fuse-overlay", "overlay", "vfs"]),
                     help="How the root filesystem is assembled."),
        click.option("-l", "--label", multiple=True, metavar="KEY=VALUE", help="Set a label on the container."),
        click.option("--label-file", multiple=True, metavar="FILE", help="Read KEY=VALUE labels from FILE."),
        click.option("--dns", multiple=True, metavar="IP", help="A DNS server for /etc/resolv.conf (replaces "
                     "the default)."),
        click.option("--dns-search", multiple=True, metavar="DOMAIN", help="A DNS search domain."),
        click.option("--dns-option", multiple=True, metavar="OPTION", help="A resolv.conf option (e.g. ndots:2)."),
        click.option("--group-add", multiple=True, metavar="GROUP",
                     help="Another supplementary group (name or gid) for the container's process."),
        click.option("--ulimit", multiple=True, metavar="NAME=SOFT[:HARD]",
                     help="A resource limit (e.g. nofile=1024:2048), at most your own hard limit."),
        click.option("--sysctl", multiple=True, metavar="KEY=VALUE",
                     help="A namespaced kernel parameter (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)."),
        click.option("--device", multiple=True, metavar="/dev/HOST[:/dev/CONTAINER][:rw]|VENDOR/CLASS=NAME",
                     help="A host device node you may open (bind-mounted), or a CDI device from the specs in "
                          "/etc/cdi, /var/run/cdi ($ROOTLESS_CDI_SPEC_DIRS)."),
        click.option("--gpus", metavar="all|device=IDS",
                     help="NVIDIA GPUs through CDI: all is --device nvidia.com/gpu=all (docs/hpc.md)."),
        click.option("--as-me", is_flag=True,
                     help="Run as yourself, as Apptainer does: your home and working directory bound, -w there, "
                          "host network, keep-id, your environment (other flags win; docs/hpc.md)."),
        click.option("--mpi", is_flag=True,
                     help="Run as a rank of an MPI job started by mpirun or srun: host network, PID and IPC "
                          "namespaces, keep-id, the launcher's variables and session directory (docs/hpc.md)."),
        click.option("--pid", metavar="host", help="host: share the host's PID namespace (and its /proc)."),
        click.option("--ipc", metavar="host", help="host: share the host's IPC namespace and /dev/shm."),
        click.option("--env-host", is_flag=True,
                     help="Pass your environment (under Slurm: SLURM_*), over the image's ENV and under -e; "
                          "not PATH, LD_*, TMPDIR, XDG_RUNTIME_DIR, ROOTLESS_* (docs/hpc.md)."),
        click.option("--init", is_flag=True,
                     help="Run a small init (catatonit or tini-static from the host) as PID 1: it reaps "
                          "zombies and forwards signals."),
        click.option("-P", "--publish-all", is_flag=True,
                     help="Publish every port the image EXPOSEs on a free host port ('rootless port' lists them)."),
        click.option("--domainname", metavar="NAME", help="The container's NIS domain name."),
        click.option("--shm-size", metavar="BYTES", help="Size of /dev/shm (default 64m)."),
        click.option("--log-driver", metavar="DRIVER",
                     help="json-file (default), k8s-file (Podman's format) or none."),
        click.option("--log-opt", multiple=True, metavar="KEY=VALUE",
                     help="max-size=SIZE (default 20m, -1: unbounded), max-file=N (default 2)."),
        click.option("--health-cmd", metavar="COMMAND", help="A health check, run in the container by sh -c."),
        click.option("--health-interval", metavar="DURATION", help="Time between checks (default 30s)."),
        click.option("--health-timeout", metavar="DURATION", help="Time a check may take (default 30s)."),
        click.option("--health-retries", type=int, metavar="N", help="Failures in a row that make it unhealthy (3)."),
        click.option("--health-start-period", metavar="DURATION", help="Failures in this first time do not count."),
        click.option("--no-healthcheck", is_flag=True, help="No health check, not even the image's HEALTHCHECK."),
        click.option("--platform", metavar="OS/ARCH[/VARIANT]",
                     help="The image's platform (pulled for it; a stored image of another one is refused)."),
        click.option("--pull", "pull_policy", default="missing", show_default=True, envvar="ROOTLESS_PULL_POLICY",
                     type=click.Choice(["missing", "always", "never"]),
                     help="Pull the image when it is not in the store (missing), always, or never "
                          "(default from $ROOTLESS_PULL_POLICY)."),
        click.argument("image", shell_complete=complete_images),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def _note(text: str) -> None:
    click.echo(text, err=True)


def _planned(ctx: click.Context, image: str, command: tuple[str, ...], flags: dict):
    """The run options checked (container.run.plan), the image pulled first as --pull says."""
    from ..container.run import RunOptions, plan
    from ..image.obtain import ensure
    from ..progress import Progress
    from ..sandbox import idmap
    store = _store(ctx)
    policy, platform = flags.pop("pull_policy"), flags.pop("platform")
    img = ensure(store, idmap.detect(), image, policy, platform, progress=Progress, report=_note)
    opts = RunOptions(image=img.ref or img.id, command=list(command),
                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()})
    p = plan(store, opts, image=img)
    for warning in p.warnings:
        _warn(warning)
    return store, p


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container id.")
@click.option("--preserve-fds", type=int, default=0, metavar="N",
              help="Pass file descriptors 3 to 3+N-1 to the container (none others are passed).")
@_container_flags
@click.pass_context
def run(ctx: click.Context, image: str, command: tuple[str, ...], **flags) -> None:
    """Run COMMAND in a new container from IMAGE."""
    from ..container.run import run as run_container
    store, p = _planned(ctx, image, command, flags)
    result = run_container(store, p, on_warning=_warn)
    if result.container_id:
        click.echo(result.container_id)
    sys.exit(result.exit_code)


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@_container_flags
@click.pass_context
def create(ctx: click.Context, image: str, command: tuple[str, ...], **flags) -> None:
    """Create a container from IMAGE, to be run by 'rootless start'; print its id."""
    from ..container.run import create as create_container
    store, p = _planned(ctx, image, command, {**flags, "detach": True})
    click.echo(create_container(store, p).id)


@cli.command("import", context_settings=CONTEXT)
@click.option("-c", "--change", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, STOPSIGNAL).")
@click.option("-m", "--message", default="", help="Commit message for the image's history.")
@click.argument("file", metavar="FILE|-")
@click.argument("ref", metavar="NAME[:TAG]")
@click.pass_context
def import_(ctx: click.Context, file: str, ref: str, change: tuple[str, ...], message: str) -> None:
    """Create an image from a root filesystem tarball (plain, gzip, bzip2 or xz)."""
    from ..image.importer import import_rootfs
    from ..sandbox import idmap
    image, devices = import_rootfs(_store(ctx), idmap.detect(), file, ref, list(change), message)
    if devices:
        click.echo(f"rootless: warning: {len(devices)} device node(s) cannot be created in a user "
                   f"namespace and were left out (e.g. {devices[0]})", err=True)
    click.echo(image.id)


@cli.command(context_settings=CONTEXT)
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Platform to pull (default: this host's).")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="Require HTTPS with a verified certificate (a registry on 127.0.0.0/8 may use HTTP).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("image")
@click.pass_context
def pull(ctx: click.Context, image: str, platform: str | None, tls_verify: bool, quiet: bool) -> None:
    """Pull an image from a registry."""
    from ..image.pull import pull as do_pull
    from ..sandbox import idmap
    from ..progress import Progress
    img = do_pull(_store(ctx), idmap.detect(), image, platform, tls_verify,
                  progress=None if quiet else Progress, report=None if quiet else _note)
    click.echo(img.id)


@cli.command(context_settings=CONTEXT)
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="Require HTTPS with a verified certificate (a registry on 127.0.0.0/8 may use HTTP).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--compression-format", metavar="gzip|zstd", default=None,
              help="Compress every layer with this (default: layers made here with gzip, pulled ones as they came).")
@click.argument("image", shell_complete=complete_images)
@click.argument("destination", required=False)
@click.pass_context
def push(ctx: click.Context, image: str, destination: str | None, tls_verify: bool, quiet: bool,
         compression_format: str | None) -> None:
    """Push an image to a registry (to DESTINATION, default: its own name)."""
    from ..image.push import push as do_push
    from ..progress import Progress
    # on a terminal the progress block says it all; in a log, a line per blob
    report = None if quiet or sys.stderr.isatty() else _note
    click.echo(do_push(_store(ctx), image, destination, tls_verify,
                       progress=None if quiet else Progress, report=report,
                       compression_format=compression_format))


@cli.command(context_settings=CONTEXT)
@click.option("-u", "--username", prompt=True)
@click.option("-p", "--password", help="The password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL")
@click.argument("registry")
def login(registry: str, username: str, password: str | None, password_stdin: bool, tls_verify: bool) -> None:
    """Log in to a registry (credentials kept in ~/.config/containers/auth.json)."""
    from ..registry import Credentials, RegistryClient, save_credentials
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True)
    with RegistryClient(registry, credentials=Credentials(username, password),
                        insecure=None if tls_verify else True) as client:
        client.check_login()
    save_credentials(registry, username, password)
    click.echo("Login Succeeded!")


@cli.command(context_settings=CONTEXT)
@click.argument("registry")
def logout(registry: str) -> None:
    """Forget the credentials for a registry."""
    from ..registry import remove_credentials
    remove_credentials(registry)
    click.echo(f"Removed login credentials for {registry}")


@cli.command(context_settings=CONTEXT)
@click.argument("source", shell_complete=complete_images)
@click.argument("target")
@click.pass_context
def tag(ctx: click.Context, source: str, target: str) -> None:
    """Give image SOURCE the name TARGET."""
    _store(ctx).tag(source, target)


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Remove even if containers use the image.")
@click.argument("images", nargs=-1, required=True, shell_complete=complete_images)
@click.pass_context
def rmi(ctx: click.Context, images: tuple[str, ...], force: bool) -> None:
    """Remove images (the tag; then the blobs and layers no other image or container uses)."""
    from ..image.gc import remove_image
    from ..sandbox import idmap
    store = _store(ctx)
    maps = idmap.detect()
    failed = False
    for name in images:
        try:
            out = remove_image(store, maps, name, force)
        except RootlessError as e:
            click.echo(f"rootless: {e}", err=True)
            failed = True
            continue
        for tag in out.untagged:
            click.echo(f"Untagged: {tag}")
        for diff in out.layers:
            click.echo(f"Deleted layer: {diff}")
    sys.exit(1 if failed else 0)


@cli.command(context_settings=CONTEXT)
@click.option("-q", "--quiet", is_flag=True, help="Only image ids.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, since=IMAGE.")
@format_option()
@click.pass_context
def images(ctx: click.Context, quiet: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List images."""
    import json
    from ..image.inspect import image_rows
    rows = image_rows(_store(ctx), list(filters))
    if quiet:
        for r in dict.fromkeys(r["Id"] for r in rows):
            click.echo(r)
    elif fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif print_templated(fmt, rows, {"ID": "IMAGE ID", "Id": "IMAGE ID"}):
        pass
    else:
        click.echo(f"{'REPOSITORY':<30} {'TAG':<12} {'IMAGE ID':<14} {'CREATED':<22} SIZE")
        for r in rows:
            click.echo(f"{r['Repository']:<30} {r['Tag']:<12} {r['Id']:<14} {r['Created'][:19]:<22} "
                       f"{_human(r['Size'])}")


def _human(n: float) -> str:
    from ..units import human_size
    return human_size(n)


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers (default: running).")
@click.option("-q", "--quiet", is_flag=True, help="Only container ids.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="status=running|paused|exited|created, name=SUBSTRING, id=PREFIX, ancestor=IMAGE, network=NAME, "
                   "label=KEY[=VALUE], exited=CODE, volume=NAME, before=/since=CONTAINER, health=STATUS.")
@format_option()
@click.pass_context
def ps(ctx: click.Context, show_all: bool, quiet: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List containers."""
    import json
    from ..container.listing import ps as list_containers
    rows = list_containers(_store(ctx), show_all, list(filters))
    if quiet:
        click.echo("\n".join(r["Id"] for r in rows) if rows else "", nl=bool(rows))
    elif fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif print_templated(fmt, rows, {"ID": "CONTAINER ID", "Id": "CONTAINER ID"}):
        pass
    else:
        click.echo(f"{'CONTAINER ID':<14} {'IMAGE':<24} {'COMMAND':<24} {'STATUS':<24} {'PORTS':<24} NAMES")
        for r in rows:
            cmd = r["Command"] if len(r["Command"]) <= 22 else r["Command"][:21] + "…"
            click.echo(f"{r['Id']:<14} {r['Image']:<24} {cmd:<24} {r['Status']:<24} {r['Ports']:<24} {r['Names']}")


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.option("-v", "--volumes", is_flag=True, help="Remove its anonymous volumes too.")
@click.argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
@click.pass_context
def rm(ctx: click.Context, containers: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove containers."""
    from ..container.records import ContainerGone, Containers
    from ..sandbox import idmap
    store = _store(ctx)
    recs = Containers(store)
    maps = idmap.detect()
    failed = False
    for key in containers:
        try:
            rec = recs.find(key)
            try:
                warnings = recs.remove(rec, maps, force)
            except ContainerGone:
                raise RootlessError(f"no such container: '{key}' (it was removed meanwhile)") from None
            if volumes:
                from ..volumes import remove_container_volumes
                remove_container_volumes(store, rec, maps)
            click.echo(key)
            for warning in warnings:
                click.echo(f"rootless: warning: {warning}", err=True)
        except RootlessError as e:
            click.echo(f"rootless: {e}", err=True)
            failed = True
        except OSError as e:
            click.echo(f"rootless: cannot remove container {key}: {e.strerror or e}", err=True)
            failed = True
    sys.exit(1 if failed else 0)


def _report(data: dict, fmt: str) -> None:
    """A nested dict as indented 'Key: value' lines (info, version), JSON, or a template."""
    import json
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    if print_templated(fmt, [data]):
        return

    def lines(d: dict, depth: int) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                click.echo(f"{'  ' * depth}{key}:")
                lines(value, depth + 1)
            elif isinstance(value, list):
                click.echo(f"{'  ' * depth}{key}: {', '.join(map(str, value)) or '-'}")
            else:
                click.echo(f"{'  ' * depth}{key}: {'-' if value in (None, '') else value}")
    lines(data, 0)


@cli.command(context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script (commands, options, and container, image, volume and
    network names): e.g. 'source <(rootless completion bash)' in ~/.bashrc."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "rootless", "_ROOTLESS_COMPLETE").source())


@cli.command(context_settings=CONTEXT)
@format_option("text")
@click.pass_context
def info(ctx: click.Context, fmt: str) -> None:
    """What rootless found on this host: id maps, storage driver, cgroups, network tools (for bug reports)."""
    from ..info import info as gather
    from ..paths import store_root
    _report(gather(store_root(ctx.obj["root"])), fmt)


@cli.command(context_settings=CONTEXT)
@format_option("text")
def version(fmt: str) -> None:
    """The versions of rootless, Python, the kernel and the libraries it uses."""
    from ..info import version as gather
    _report(gather(), fmt)


@cli.command(context_settings=CONTEXT)
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@format_option()
@click.argument("containers", nargs=-1, shell_complete=complete_containers)
@click.pass_context
def stats(ctx: click.Context, containers: tuple[str, ...], no_stream: bool, fmt: str) -> None:
    """CPU, memory and process use of running containers, from their cgroups."""
    import json
    from ..container.stats import samples
    from ..units import human_binary
    for rows in samples(_store(ctx), list(containers), stream=not no_stream):
        if fmt == "json":
            click.echo(json.dumps(rows))
            continue
        if print_templated(fmt, rows, {"ID": "CONTAINER ID", "Id": "CONTAINER ID"}):
            continue
        if not no_stream:
            click.echo("\x1b[2J\x1b[H", nl=False)
        click.echo(f"{'CONTAINER ID':<14} {'NAME':<20} {'CPU %':>7}   {'MEM USAGE / LIMIT':<24} PIDS")
        for row in rows:
            cpu = f"{row['CPUPerc']:.2f}%" if row["CPUPerc"] is not None else "--"
            limit = human_binary(row["MemLimit"]) if row["MemLimit"] else "unlimited"
            mem = f"{human_binary(row['MemUsage'])} / {limit}"
            click.echo(f"{row['Id']:<14} {row['Name']:<20} {cpu:>7}   {mem:<24} "
                       f"{row['Pids'] if row['Pids'] is not None else '--'}")


@cli.command(context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def unshare(command: tuple[str, ...]) -> None:
    """Run COMMAND (default: your shell) in rootless's user namespace, as its root.

    Files owned by sub-ids (image layers, container trees) can be inspected and removed there.
    """
    from ..sandbox.unshare import unshare as run_unshare
    sys.exit(run_unshare(list(command) or [os.environ.get("SHELL", "/bin/sh")]))


def _register_command_modules() -> None:
    """Commands kept in modules of their own (cli/*.py), each with ``register(group)``."""
    from . import containers as cli_containers, images as cli_images, networks as cli_networks, volumes as cli_volumes
    from . import build as cli_build, commits as cli_commits, service as cli_service
    for module in (cli_containers, cli_images, cli_networks, cli_volumes, cli_commits, cli_build, cli_service):
        module.register(cli)


_register_command_modules()

CONTAINER_ALIASES = ("run", "create", "start", "stop", "restart", "kill", "rm", "logs", "exec", "attach", "wait",
                     "pause", "unpause", "top", "rename", "port", "stats", "cp", "inspect")


def _container_aliases() -> None:
    """Docker's ``container`` forms of the container commands (``container ls`` is ``ps``)."""
    group = cli.commands["container"]
    for name in CONTAINER_ALIASES:
        if name in cli.commands and name not in group.commands:
            group.add_command(cli.commands[name], name)
    group.add_command(cli.commands["ps"], "ls")


_container_aliases()


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="rootless", standalone_mode=False)
    except click.UsageError as e:
        hint = f"See '{e.ctx.command_path} --help'." if e.ctx else "See 'rootless --help'."
        click.echo(f"rootless: {e.format_message()}\n{hint}", err=True)
        return 125
    except click.Abort:
        click.echo("rootless: aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except RootlessError as e:
        if os.environ.get("ROOTLESS_DEBUG"):
            import traceback
            traceback.print_exc()
        click.echo(f"rootless: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a sentence for the user, the traceback only on request
        if os.environ.get("ROOTLESS_DEBUG"):
            raise
        click.echo(f"rootless: {e} (this looks like a bug in rootless; run with --debug for "
                   "a traceback and report it)" if not isinstance(e, OSError) else f"rootless: {e}", err=True)
        return 125
    return 0


if __name__ == "__main__":
    sys.exit(main())
