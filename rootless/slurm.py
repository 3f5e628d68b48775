"""Whether this process runs in a Slurm job on its compute node, and in which step.

A job step is a world of its own for rootless: Slurm confines and tracks its processes by the
step's cgroup and ends them all with the step (or ``scancel``).  So inside one, containers stay
in the step's cgroup (``cgroups.detect``), nothing is handed to the per-user fork server
(``container.services``), and the run-time directory is the step's own
(``paths.runtime_dir``): helpers a step starts (a squashfs mount, the user networks' namespace
holder) are never shared with another job, whose end would take them away.  See docs/hpc.md.
"""

from __future__ import annotations

import os

# The cgroup slurmstepd puts a step's processes in: cgroup/v1 <hierarchy>/slurm[_NODE]/uid_U/job_J/step_S,
# cgroup/v2 .../slurmstepd.scope/job_J/step_S/user/task_T.
_CGROUP = r"/(?:slurm[^/\n]*/uid_\d+|slurmstepd\.scope)/job_(\d+)(?:/step_([^/\n]+))?(?:/|$)"


def _cgroup_re():
    """Compiled when a cgroup path may be a job's: ``re`` costs a handed-over command 5 ms."""
    import re
    return re.compile(_CGROUP, re.M)


class Step:
    """A job step (not a dataclass: every handed-over command asks ``current``, and importing
    dataclasses would cost it 5 ms)."""
    __slots__ = ("job", "step", "tracked")

    def __init__(self, job: str, step: str, tracked: bool = True) -> None:
        self.job = job            # SLURM_JOB_ID
        self.step = step          # 0, 1, ... or batch, extern, interactive
        self.tracked = tracked    # found from its cgroup (every process of the job carries it)

    @property
    def name(self) -> str:
        return f"{self.job}.{self.step}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and (self.job, self.step, self.tracked) == (
            other.job, other.step, other.tracked)

    def __hash__(self) -> int:
        return hash((self.job, self.step, self.tracked))

    def __repr__(self) -> str:
        return f"Step(job={self.job!r}, step={self.step!r}, tracked={self.tracked!r})"


def current(cgroup_file: str = "/proc/self/cgroup", environ: dict[str, str] | None = None) -> Step | None:
    """The job step this process runs in on its node, or None.

    Its cgroups say so when Slurm tracks jobs with cgroups (proctrack/cgroup, task/cgroup).
    Otherwise SLURM_JOB_ID together with SLURMD_NODENAME, which slurmstepd sets for a batch
    script and a step's tasks (salloc's shell on a login node has SLURM_JOB_ID only: it is not
    in the job), with SLURM_STEP_ID (none in a batch script: its step is "batch")."""
    try:
        with open(cgroup_file) as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines() if "/job_" in text else ():
        m = _cgroup_re().search(line.split(":", 2)[-1])
        if m:
            return Step(m.group(1), m.group(2) or "batch")
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or ""
    if job.isdigit() and env.get("SLURMD_NODENAME"):
        return Step(job, env.get("SLURM_STEP_ID") or "batch", tracked=False)
    return None


def live_jobs(proc: str = "/proc") -> set[str]:
    """The jobs some process on this node is in, by the processes' cgroups (readable by all)."""
    jobs, pattern = set(), _cgroup_re()
    for pid in os.listdir(proc):
        if pid.isdigit():
            try:
                with open(os.path.join(proc, pid, "cgroup")) as f:
                    jobs.update(m.group(1) for m in pattern.finditer(f.read()))
            except OSError:
                pass            # gone meanwhile
    return jobs


def sweep(base: str, live: set[str]) -> None:
    """Remove the run-time directories (``base``/slurm-JOB.STEP) of jobs no longer on this node:
    what they hold (exit notes, pid files, an unmounted squashfs mount point) ended with them."""
    import re
    import shutil
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(r"slurm-(\d+)\.[^/]+", name)
        if m and m.group(1) not in live:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
