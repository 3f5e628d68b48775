"""A parsed Dockerfile, evaluated for build args and a target, as the stages and steps to run.

``make_plan`` walks from the target stage to the stages it needs (its base, ``COPY
--from``, ``RUN --mount from=``), evaluating each once, in dependency order.  A stage built
on an image needs that image's config (its Env, WorkingDir, Shell, OnBuild...): the
executor's ``image_config(ref, platform)`` returns it, pulled or from the store.  Steps:

    RunStep     argv, env, user, workdir, mounts, network: a layer from running a command
    CopyStep    sources, dest, from, chown, chmod: a layer written by copying.write_layer
    ConfigStep  ENV, LABEL, CMD, ...: the image config only (apply_config); also ARG

Each stage's ``config`` is the image config its last step leaves; steps record their
``created_by`` for the image history, and RUN/COPY steps the material of their cache key.

Variables (expand.py): global ARGs (before the first FROM) and the automatic platform ARGs
expand FROM lines only, unless a stage declares them again (``ARG NAME`` takes the global
value); a stage's ARG takes its ``--build-arg`` value, else its default; ENV wins over an ARG
of the same name.  RUN sees ENV and the stage's ARGs (ARGs are not kept in the image), plus
the proxy variables when given as build args (kept out of the history and the cache key).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform as _platform
import posixpath
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..errors import DockerfileError
from ..units import parse_duration
from .dockerfile import Dockerfile, Instruction, parse_trigger
from .expand import ExpandError, expand_heredoc, expand_word
from .mounts import Mount, MountError, check_network, parse_mount

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
ImageConfigFn = Callable[[str, "str | None"], dict]


# ---------------------------------------------------------------- plan data

@dataclass
class Step:
    keyword: str              # the instruction: RUN, COPY, ENV, ...
    line: int
    filename: str

    @property
    def kind(self) -> str:
        return "CONFIG"

    @property
    def empty_layer(self) -> bool:
        return True


@dataclass
class RunFile:
    """A file the RUN step needs mounted read-only (a heredoc script with a #! line)."""
    path: str
    content: str
    mode: int = 0o755


@dataclass
class RunStep(Step):
    argv: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)        # "K=V": the image's Env, then ARGs in scope
    user: str = ""
    workdir: str = "/"
    mounts: list[Mount] = field(default_factory=list)
    network: str = "default"
    files: list[RunFile] = field(default_factory=list)
    created_by: str = ""
    cache_material: str = ""

    @property
    def kind(self) -> str:
        return "RUN"

    @property
    def empty_layer(self) -> bool:
        return False


@dataclass
class CopyStep(Step):
    sources: list[str] = field(default_factory=list)   # context-relative patterns, stage paths or URLs
    dest: str = "/"                                     # absolute; ends with "/" when it is a directory
    from_: str | None = None                            # the --from as written (expanded)
    from_stage: int | None = None                       # index into BuildPlan.all_stages, or None
    from_image: str | None = None                       # an image reference, or None
    chown: str | None = None
    chmod: int | None = None
    link: bool = False
    checksum: str | None = None                         # ADD --checksum=sha256:...
    heredocs: list[tuple[str, str]] = field(default_factory=list)   # (file name, content) written into dest
    workdir: str = "/"
    cache_material: str = ""

    @property
    def kind(self) -> str:
        return self.keyword          # COPY | ADD

    @property
    def empty_layer(self) -> bool:
        return False

    @property
    def urls(self) -> list[str]:
        return [s for s in self.sources if is_url(s)]

    def created_by(self, source_id: str) -> str:
        """History text, ``source_id`` being context.SourceDigest.id (``file:HEX``, ``dir:HEX``...)."""
        return f"{self.keyword} {source_id} in {self.dest}"


@dataclass
class ConfigStep(Step):
    value: object = None          # evaluated: ENV [(k, v)], LABEL {k: v}, CMD [..], HEALTHCHECK {...}
    reset_cmd: bool = False       # ENTRYPOINT when CMD was inherited from the base
    created_by: str = ""


@dataclass
class Base:
    kind: str                     # "scratch" | "image" | "stage"
    ref: str | None = None        # the image reference as written (expanded)
    stage: int | None = None      # index into BuildPlan.all_stages
    platform: str | None = None


@dataclass
class Stage:
    index: int
    name: str | None
    base: Base
    platform: str
    base_config: dict             # the base image's whole config JSON ({} for scratch and stages)
    steps: list[Step] = field(default_factory=list)
    config: dict = field(default_factory=dict)   # the image's "config" after the last step
    author: str | None = None


@dataclass
class BuildPlan:
    stages: list[Stage]           # the needed stages, in build order; the last is the target
    target: Stage
    warnings: list[str] = field(default_factory=list)
    all_stages: list[str | None] = field(default_factory=list)   # every stage's name (None: unnamed)


@dataclass
class BuildOptions:
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    platform: str | None = None   # the target platform, default the host's


# ---------------------------------------------------------------- helpers

def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def host_platform() -> str:
    m = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
            "armv6l": "arm/v6", "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(m, m)
    return f"linux/{arch}"


def platform_args(target: str, build: str) -> dict[str, str]:
    out = {}
    for prefix, plat in (("BUILD", build), ("TARGET", target)):
        os_, _, rest = plat.partition("/")
        arch, _, variant = rest.partition("/")
        out |= {f"{prefix}PLATFORM": plat, f"{prefix}OS": os_, f"{prefix}ARCH": arch, f"{prefix}VARIANT": variant}
    return out


def go_quote(items: list[str]) -> str:
    """Go's %q of a []string, as Docker writes CMD/ENTRYPOINT/SHELL into the history."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def _env_dict(env_list: list[str]) -> dict[str, str]:
    out = {}
    for item in env_list or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _set_env(config: dict, key: str, value: str) -> None:
    env = [e for e in config.get("Env") or []]
    for i, e in enumerate(env):
        if e.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    config["Env"] = env


def apply_config(config: dict, step: Step) -> None:
    """Apply a ConfigStep to an OCI image's ``config`` object, as Docker records it."""
    if not isinstance(step, ConfigStep):
        return
    kw, v = step.keyword, step.value
    if kw == "ENV":
        for k, val in v:                                    # type: ignore[union-attr]
            _set_env(config, k, val)
    elif kw == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **v}   # type: ignore[dict-item]
    elif kw == "WORKDIR":
        config["WorkingDir"] = v
    elif kw == "USER":
        config["User"] = v
    elif kw == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for p in v:                                         # type: ignore[union-attr]
            ports[p] = {}
        config["ExposedPorts"] = ports
    elif kw == "VOLUME":
        vols = dict(config.get("Volumes") or {})
        for p in v:                                         # type: ignore[union-attr]
            vols[p] = {}
        config["Volumes"] = vols
    elif kw == "STOPSIGNAL":
        config["StopSignal"] = v
    elif kw == "CMD":
        config["Cmd"] = list(v)                             # type: ignore[call-overload]
    elif kw == "ENTRYPOINT":
        config["Entrypoint"] = list(v)                      # type: ignore[call-overload]
        if step.reset_cmd:
            config["Cmd"] = None
    elif kw == "SHELL":
        config["Shell"] = list(v)                           # type: ignore[call-overload]
    elif kw == "HEALTHCHECK":
        config["Healthcheck"] = dict(v)                     # type: ignore[call-overload]
    elif kw == "ONBUILD":
        config["OnBuild"] = [*(config.get("OnBuild") or []), v]


def cache_key(parent: str, step: Step, content_digest: str | None = None) -> str:
    """The cache key of a RUN/COPY/ADD step: its parent's key (the base image's id for the
    first), the step's expanded instruction, and the digest of what it reads (COPY/ADD)."""
    material = getattr(step, "cache_material", "")
    h = hashlib.sha256()
    for part in (parent, step.keyword, material, content_digest or ""):
        h.update(part.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- evaluation

@dataclass
class _Parsed:
    name: str | None
    from_ins: Instruction
    body: list[Instruction]


class _Planner:
    def __init__(self, df: Dockerfile, opts: BuildOptions, image_config: ImageConfigFn):
        self.df, self.opts, self.image_config = df, opts, image_config
        self.esc = df.escape
        self.build_platform = host_platform()
        self.target_platform = opts.platform or self.build_platform
        self.auto = platform_args(self.target_platform, self.build_platform)
        self.consumed: set[str] = set()
        self.warnings: list[str] = list(df.notes)
        self.meta: dict[str, str | None] = {}
        self.stages: list[_Parsed] = []
        self.done: dict[int, Stage] = {}
        self.order: list[Stage] = []
        self.active: list[int] = []
        self._split()

    def err(self, ins: Instruction, problem: str, fix: str | None = None) -> DockerfileError:
        return ins.error(problem, fix)

    def _split(self) -> None:
        cur: _Parsed | None = None
        for ins in self.df.instructions:
            if ins.keyword == "FROM":
                name = ins.args[2].lower() if len(ins.args) == 3 else None
                if name and any(s.name == name for s in self.stages):
                    raise self.err(ins, f"the stage name {name!r} is used twice", "give each stage its own name")
                cur = _Parsed(name, ins, [])
                self.stages.append(cur)
            elif cur is None:
                if ins.keyword != "ARG":
                    raise self.err(ins, f"{ins.keyword} before the first FROM",
                                   "only ARG may come before FROM; start the stage with FROM IMAGE")
                self._global_arg(ins)
            else:
                cur.body.append(ins)
        if not self.stages:
            raise DockerfileError(self.df.filename, None, "there is no FROM instruction",
                                  "a Dockerfile starts with FROM IMAGE")

    def _word(self, ins: Instruction, text: str, env: Mapping[str, str]) -> str:
        try:
            return expand_word(text, env, self.esc)
        except ExpandError as e:
            raise self.err(ins, f"{ins.keyword} {text}: {e}") from None

    def _global_env(self) -> dict[str, str]:
        return self.auto | {k: v for k, v in self.meta.items() if v is not None}

    def _global_arg(self, ins: Instruction) -> None:
        for tok in ins.args:
            name, eq, default = tok.partition("=")
            value = self._word(ins, default, self._global_env()) if eq else None
            self.meta[name] = self.opts.build_args.get(name, value)
            self.consumed.add(name)

    # ---- stages

    def stage_index(self, name: str, ins: Instruction, *, before: int | None = None) -> int | None:
        n = name.lower()
        limit = len(self.stages) if before is None else before
        for i, s in enumerate(self.stages[:limit]):
            if s.name == n:
                return i
        if n.isdigit() and before is None:
            i = int(n)
            if i < len(self.stages):
                return i
            raise self.err(ins, f"there is no stage {i}", f"stages are numbered from 0 to {len(self.stages) - 1}")
        return None

    def need(self, i: int, ins: Instruction) -> Stage:
        if i in self.done:
            return self.done[i]
        if i in self.active:
            raise self.err(ins, f"stage {self.stages[i].name or i} depends on itself",
                           "a stage cannot copy from a stage that is built from it")
        self.active.append(i)
        st = self._evaluate(i)
        self.active.pop()
        self.done[i] = st
        self.order.append(st)
        return st

    def _evaluate(self, i: int) -> Stage:
        p = self.stages[i]
        fins = p.from_ins
        genv = self._global_env()
        ref = self._word(fins, fins.args[0], genv)
        if not ref:
            raise self.err(fins, f"the base image name ({fins.args[0]}) is empty",
                           "give the ARG a default or pass --build-arg")
        plat = fins.flag("platform")
        plat = self._word(fins, plat, genv) if plat else None
        platform = plat or self.target_platform
        base_stage = self.stage_index(ref, fins, before=i)
        base_config: dict = {}
        if base_stage is not None:
            parent = self.need(base_stage, fins)
            base = Base("stage", ref, base_stage, plat)
            config = copy.deepcopy(parent.config)
        elif ref.lower() == "scratch":
            base = Base("scratch", None, None, plat)
            config = {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
        else:
            base = Base("image", ref, None, plat)
            base_config = self.image_config(ref, plat)
            config = copy.deepcopy(base_config.get("config") or {})
        stage = Stage(i, p.name, base, platform, base_config)
        triggers = [parse_trigger(t, self.df.filename) for t in config.get("OnBuild") or []]
        triggers = [_at(t, fins.line) for t in triggers]
        config["OnBuild"] = None
        state = _StageState(self, stage, config)
        for ins in triggers + p.body:
            state.dispatch(ins)
        stage.config = state.config
        return stage

    def plan(self) -> BuildPlan:
        target = self.opts.target
        if target:
            idx = next((i for i, s in enumerate(self.stages) if s.name == target.lower()), None)
            if idx is None:
                names = ", ".join(s.name for s in self.stages if s.name) or "none are named"
                raise DockerfileError(self.df.filename, None, f"the target stage {target!r} is not in the Dockerfile",
                                      f"its stages: {names}")
        else:
            idx = len(self.stages) - 1
        tstage = self.need(idx, self.stages[idx].from_ins)
        if self.opts.labels:
            tstage.config["Labels"] = {**(tstage.config.get("Labels") or {}), **self.opts.labels}
        unused = sorted(set(self.opts.build_args) - self.consumed - set(PROXY_ARGS) - set(self.auto))
        if unused:
            self.warnings.append(f"build-args were not consumed: {', '.join(unused)} "
                                 "(no ARG of those names in the stages built)")
        return BuildPlan(self.order, tstage, self.warnings, [s.name for s in self.stages])


def _at(ins: Instruction, line: int) -> Instruction:
    return replace(ins, line=line, end_line=line)


class _StageState:
    def __init__(self, planner: _Planner, stage: Stage, config: dict):
        self.p, self.stage, self.config = planner, stage, config
        self.args: dict[str, str | None] = {}
        self.cmd_set = False

    # the variables seen by expansion: ARGs, then ENV over them
    def env(self) -> dict[str, str]:
        out = {k: v for k, v in self.args.items() if v is not None}
        out |= _env_dict(self.config.get("Env") or [])
        return out

    def word(self, ins: Instruction, text: str) -> str:
        return self.p._word(ins, text, self.env())

    def add(self, step: Step) -> None:
        self.stage.steps.append(step)
        apply_config(self.config, step)

    def config_step(self, ins: Instruction, value: object, created_by: str, **kw) -> None:
        self.add(ConfigStep(ins.keyword, ins.line, ins.filename, value=value, created_by=created_by, **kw))

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)

    @property
    def workdir(self) -> str:
        return self.config.get("WorkingDir") or "/"

    def dispatch(self, ins: Instruction) -> None:
        getattr(self, "do_" + ins.keyword.lower())(ins)

    # ---- instructions that change the config only

    def do_arg(self, ins: Instruction) -> None:
        shown = []
        for tok in ins.args:
            name, eq, default = tok.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ins.error(f"invalid ARG name {name!r}", "write ARG NAME or ARG NAME=DEFAULT")
            value = self.word(ins, default) if eq else None
            shown.append(f"{name}={value}" if eq else name)
            value = self.p.opts.build_args.get(name, value)
            if value is None:
                value = self.p.meta.get(name, self.p.auto.get(name))
            self.args[name] = value
            self.p.consumed.add(name)
        self.config_step(ins, None, "ARG " + " ".join(shown))

    def do_env(self, ins: Instruction) -> None:
        env = self.env()
        pairs = []
        args = ins.args
        for k, v in zip(args[::2], args[1::2]):
            key = self.p._word(ins, k, env)
            if not key:
                raise ins.error("ENV names must not be empty", "write ENV NAME=VALUE")
            pairs.append((key, self.p._word(ins, v, env)))
        self.config_step(ins, pairs, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))

    def do_label(self, ins: Instruction) -> None:
        env = self.env()
        labels = {}
        for k, v in zip(ins.args[::2], ins.args[1::2]):
            key = self.p._word(ins, k, env)
            if not key:
                raise ins.error("LABEL names must not be empty", "write LABEL NAME=VALUE")
            labels[key] = self.p._word(ins, v, env)
        self.config_step(ins, labels, "LABEL " + " ".join(f"{k}={v}" for k, v in labels.items()))

    def do_maintainer(self, ins: Instruction) -> None:
        self.stage.author = self.word(ins, ins.args[0])
        self.p.warnings.append(f"{ins.filename}:{ins.line}: MAINTAINER is deprecated; "
                               "use LABEL org.opencontainers.image.authors=...")
        self.config_step(ins, self.stage.author, f"MAINTAINER {self.stage.author}")

    def do_workdir(self, ins: Instruction) -> None:
        path = self.word(ins, ins.args[0])
        if not path:
            raise ins.error("WORKDIR is empty", "write WORKDIR /PATH")
        wd = posixpath.normpath(posixpath.join(self.workdir, path))
        wd = "/" + wd.lstrip("/")
        self.config_step(ins, wd, f"WORKDIR {wd}")

    def do_user(self, ins: Instruction) -> None:
        user = self.word(ins, ins.args[0])
        if not user:
            raise ins.error("USER is empty", "write USER NAME[:GROUP] or USER UID[:GID]")
        self.config_step(ins, user, f"USER {user}")

    def do_expose(self, ins: Instruction) -> None:
        ports: list[str] = []
        for a in ins.args:
            spec = self.word(ins, a)
            port, _, proto = spec.partition("/")
            proto = (proto or "tcp").lower()
            if proto not in ("tcp", "udp", "sctp"):
                raise ins.error(f"EXPOSE {spec}: unknown protocol {proto!r}", "use tcp, udp or sctp")
            lo, dash, hi = port.partition("-")
            if ":" in port:
                raise ins.error(f"EXPOSE {spec}: EXPOSE takes container ports only",
                                "publish host ports with run -p")
            if not lo.isdigit() or (dash and not hi.isdigit()):
                raise ins.error(f"EXPOSE {spec}: {port!r} is not a port or a range of ports")
            first, last = int(lo), int(hi) if dash else int(lo)
            if not 0 < first <= last < 65536:
                raise ins.error(f"EXPOSE {spec}: ports are 1 to 65535")
            ports += [f"{n}/{proto}" for n in range(first, last + 1)]
        shown = " ".join(f"{p}:{{}}" for p in sorted(set(ports)))
        self.config_step(ins, ports, f"EXPOSE map[{shown}]")

    def do_volume(self, ins: Instruction) -> None:
        vols = [self.word(ins, a) for a in ins.args]
        if any(not v.strip() for v in vols):
            raise ins.error("VOLUME names an empty path")
        self.config_step(ins, vols, f"VOLUME [{' '.join(vols)}]")

    def do_stopsignal(self, ins: Instruction) -> None:
        sig = self.word(ins, ins.args[0])
        name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
        if not (sig.isdigit() or name in signal.Signals.__members__ or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name)):
            raise ins.error(f"STOPSIGNAL {sig}: not a signal", "write a name (SIGTERM) or a number (15)")
        self.config_step(ins, sig, f"STOPSIGNAL {sig}")

    def _command(self, ins: Instruction) -> list[str]:
        if ins.json:
            return list(ins.args)
        return self.shell + [ins.args[0]] if ins.args else []

    def do_cmd(self, ins: Instruction) -> None:
        cmd = self._command(ins)
        self.cmd_set = True
        self.config_step(ins, cmd, f"CMD {go_quote(cmd)}")

    def do_entrypoint(self, ins: Instruction) -> None:
        ep = self._command(ins)
        self.config_step(ins, ep, f"ENTRYPOINT {go_quote(ep)}", reset_cmd=not self.cmd_set)

    def do_shell(self, ins: Instruction) -> None:
        if not ins.args:
            raise ins.error("SHELL needs at least the shell's path", 'write SHELL ["/bin/bash", "-c"]')
        self.config_step(ins, list(ins.args), f"SHELL {go_quote(list(ins.args))}")

    def do_healthcheck(self, ins: Instruction) -> None:
        if ins.args[0].upper() == "NONE":
            self.config_step(ins, {"Test": ["NONE"]}, "HEALTHCHECK NONE")
            return
        rest = ins.args[1:]
        test = ["CMD", *rest] if ins.json else ["CMD-SHELL", rest[0]]
        hc: dict = {"Test": test}
        for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                          ("start-interval", "StartInterval")):
            v = ins.flag(flag)
            if v is None:
                continue
            try:
                ns = parse_duration(v)
            except ValueError:
                raise ins.error(f"--{flag}={v} is not a duration", "write it as 30s, 1m30s or 500ms") from None
            if ns and ns < 10**6:
                raise ins.error(f"--{flag}={v} is below the minimum of 1ms")
            if ns:
                hc[key] = ns
        retries = ins.flag("retries")
        if retries is not None:
            if not retries.isdigit() or int(retries) < 1:
                raise ins.error(f"--retries={retries} must be a whole number of at least 1")
            hc["Retries"] = int(retries)
        flags = " ".join(f"--{k}={v}" for k, v in ins.flags)
        self.config_step(ins, hc, f"HEALTHCHECK {flags + ' ' if flags else ''}{go_quote(test)}")

    def do_onbuild(self, ins: Instruction) -> None:
        trigger = ins.args[0].strip()
        self.config_step(ins, trigger, f"ONBUILD {trigger}")

    # ---- RUN

    def do_run(self, ins: Instruction) -> None:
        env = self.env()
        mounts: list[Mount] = []
        for spec in ins.flag_all("mount"):
            try:
                m = parse_mount(self.p._word(ins, spec, env), self.workdir)
            except MountError as e:
                raise ins.error(f"--mount={spec}: {e}") from None
            if m.from_:
                idx = self.p.stage_index(m.from_, ins)
                if idx is not None:
                    self.p.need(idx, ins)
            mounts.append(m)
        network = ins.flag("network") or "default"
        try:
            check_network(network)
        except MountError as e:
            raise ins.error(str(e)) from None
        if ins.flag("security"):
            raise ins.error(f"--security={ins.flag('security')} is not supported", "remove it")
        files: list[RunFile] = []
        if ins.json:
            argv = list(ins.args)
        elif ins.heredocs:
            cmdline = ins.args[0] if ins.args else ""
            first = ins.heredocs[0]
            if len(ins.heredocs) == 1 and re.fullmatch(r"<<-?(['\"]?)" + re.escape(first.name) + r"\1", cmdline.strip()):
                body = first.body
                if body.startswith("#!"):
                    path = f"/dev/pipes/{first.name}"
                    files.append(RunFile(path, body))
                    argv = [path]
                else:
                    argv = self.shell + [body]
            else:
                full = cmdline
                for h in ins.heredocs:
                    full += "\n" + h.content + h.name
                argv = self.shell + [full]
        else:
            argv = self.shell + [ins.args[0]]
        image_env = _env_dict(self.config.get("Env") or [])
        if "PATH" not in image_env:
            image_env = {"PATH": DEFAULT_PATH, **image_env}
        arg_env = {k: v for k, v in self.args.items() if v is not None and k not in image_env}
        proxies = {k: v for k, v in self.p.opts.build_args.items() if k in PROXY_ARGS and k not in arg_env}
        run_env = [f"{k}={v}" for k, v in image_env.items()]
        run_env += [f"{k}={v}" for k, v in arg_env.items()]
        run_env += [f"{k}={v}" for k, v in proxies.items() if k not in image_env]
        # BuildKit's runCommandString: every ARG declared in the stage, valued as RUN sees it
        shown = [f"{k}={image_env.get(k, v or '')}" for k, v in self.args.items()]
        prefix = f"|{len(shown)} {' '.join(shown)} " if shown else ""
        created_by = f"RUN {prefix}{' '.join(argv)}"
        step = RunStep(ins.keyword, ins.line, ins.filename, argv=argv, env=run_env,
                       user=self.config.get("User") or "", workdir=self.workdir, mounts=mounts,
                       network=network, files=files, created_by=created_by)
        material = {"argv": argv, "env": [e for e in run_env if e.partition("=")[0] not in proxies],
                    "user": step.user, "workdir": step.workdir, "network": network,
                    "mounts": [m.cache_material for m in mounts],
                    "files": [(f.path, f.content, f.mode) for f in files]}
        step.cache_material = json.dumps(material, sort_keys=True)
        self.add(step)

    # ---- COPY and ADD

    def do_copy(self, ins: Instruction) -> None:
        env = self.env()
        words = list(ins.args)
        heredoc_names = {h.name for h in ins.heredocs}
        srcs_raw, dest_raw = words[:-1], words[-1]
        heredocs: list[tuple[str, str]] = []
        sources: list[str] = []
        for w in srcs_raw:
            m = re.fullmatch(r"\d*<<-?(['\"]?)(.+)\1", w) if ins.heredocs and not ins.json else None
            if m and m.group(2) in heredoc_names:
                h = next(h for h in ins.heredocs if h.name == m.group(2))
                body = h.body
                if h.expand:
                    try:
                        body = expand_heredoc(body, env, self.p.esc)
                    except ExpandError as e:
                        raise ins.error(f"heredoc {h.name}: {e}") from None
                heredocs.append((h.name, body))
                continue
            src = self.p._word(ins, w, env)         # the JSON form expands too, as BuildKit
            if not src:
                raise ins.error(f"{ins.keyword} has an empty source")
            sources.append(src)
        dest = self.p._word(ins, dest_raw, env)
        if not dest:
            raise ins.error(f"{ins.keyword} has an empty destination", f"write {ins.keyword} SOURCE /DEST")
        dir_dest = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
        dest = posixpath.normpath(posixpath.join(self.workdir, dest))
        dest = "/" + dest.lstrip("/")
        if dir_dest and not dest.endswith("/"):
            dest += "/"
        if len(sources) + len(heredocs) > 1 and not dest.endswith("/"):
            raise ins.error(f"{ins.keyword} with more than one source needs a directory as destination",
                            f"end it with a slash: {dest_raw}/")
        step = CopyStep(ins.keyword, ins.line, ins.filename, sources=sources, dest=dest,
                        heredocs=heredocs, workdir=self.workdir)
        frm = ins.flag("from") if ins.keyword == "COPY" else None
        if frm:
            frm = self.p._word(ins, frm, env)
            step.from_ = frm
            idx = self.p.stage_index(frm, ins)
            if idx is not None:
                if idx == self.stage.index:
                    raise ins.error(f"COPY --from={frm} names the stage it is in",
                                    "copy from an earlier stage or an image")
                self.p.need(idx, ins)
                step.from_stage = idx
            else:
                step.from_image = frm
        chown = ins.flag("chown")
        if chown:
            step.chown = self.p._word(ins, chown, env)
        chmod = ins.flag("chmod")
        if chmod:
            chmod = self.p._word(ins, chmod, env)
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise ins.error(f"--chmod={chmod} is not an octal mode", "write it as --chmod=644 or --chmod=0755")
            step.chmod = int(chmod, 8)
        step.link = ins.bool_flag("link")
        if ins.keyword == "ADD":
            checksum = ins.flag("checksum")
            if checksum:
                checksum = self.p._word(ins, checksum, env)
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
                    raise ins.error(f"--checksum={checksum} is not a sha256 digest",
                                    "write it as --checksum=sha256:<64 hex digits>")
                if not all(is_url(s) for s in sources):
                    raise ins.error("ADD --checksum is for URL sources only")
                step.checksum = checksum
            for s in sources:
                if s.startswith("git@") or s.endswith(".git") and is_url(s):
                    raise ins.error(f"ADD {s}: git sources are not supported", "clone it in a RUN step")
        elif any(is_url(s) for s in sources):
            raise ins.error(f"COPY cannot download {next(s for s in sources if is_url(s))}",
                            "use ADD for URLs")
        if step.urls and ins.keyword == "ADD" and step.from_:
            raise ins.error("ADD of a URL takes no --from")
        material = {"sources": sources, "dest": dest, "from": step.from_, "chown": step.chown,
                    "chmod": step.chmod, "link": step.link, "checksum": step.checksum,
                    "heredocs": heredocs, "kind": ins.keyword}
        step.cache_material = json.dumps(material, sort_keys=True)
        self.add(step)

    do_add = do_copy


def make_plan(df: Dockerfile, options: BuildOptions, image_config: ImageConfigFn) -> BuildPlan:
    """Evaluate ``df`` for ``options``; ``image_config(ref, platform)`` returns a base image's
    whole config JSON (``{"config": {...}, "os": ..., "rootfs": ...}``)."""
    return _Planner(df, options, image_config).plan()


__all__ = ["Base", "BuildOptions", "BuildPlan", "ConfigStep", "CopyStep", "RunFile", "RunStep", "Stage",
           "Step", "apply_config", "cache_key", "go_quote", "host_platform", "is_url", "make_plan",
           "parse_duration", "platform_args"]
