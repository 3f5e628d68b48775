"""Docker's resource flags: parsing their values and converting them to cgroup file values."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ..errors import UsageError
from ..units import parse_size

CPU_PERIOD = 100000            # usec; Docker's and runc's default CFS period
MIN_MEMORY = 6 * 1024 * 1024   # Docker refuses less ("Minimum memory limit allowed is 6MB")
MIN_SHARES, MAX_SHARES = 2, 262144

_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

# which controller each limit needs, and the flag that asks for it
FLAGS = {"memory": "--memory", "memory_swap": "--memory-swap", "cpus": "--cpus",
         "cpu_shares": "--cpu-shares", "pids": "--pids-limit", "cpuset_cpus": "--cpuset-cpus"}
CONTROLLER = {"memory": "memory", "memory_swap": "memory", "cpus": "cpu", "cpu_shares": "cpu",
              "pids": "pids", "cpuset_cpus": "cpuset"}
STANDARD = ("memory", "cpu", "pids", "cpuset")   # the controllers the limits need
OPPORTUNISTIC = ("memory", "cpu", "pids")        # enabled on v2 when possible, for stats


def parse_bytes(value: str, flag: str = "--memory") -> int:
    """Docker's sizes: '512m', '1g', '1.5g', '1024', '100kb' (powers of 1024): ``units.parse_size``."""
    return parse_size(value, flag)


def parse_cpus(value: str) -> float:
    try:
        cpus = float(value)
    except ValueError:
        cpus = math.nan
    if not math.isfinite(cpus) or cpus < 0:
        raise UsageError(f"invalid value '{value}' for --cpus: use a number of CPUs such as 1.5")
    return cpus


def parse_int(value: str, flag: str) -> int:
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise UsageError(f"invalid value '{value}' for {flag}: use a whole number") from None


def parse_cpuset(value: str) -> frozenset[int]:
    """'0-3,5' -> {0, 1, 2, 3, 5}."""
    text = str(value).strip()
    cpus: set[int] = set()
    if _CPUSET.match(text):
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if a > b:
                break
            cpus.update(range(a, b + 1))
        else:
            return frozenset(cpus)
    raise UsageError(f"invalid value '{value}' for --cpuset-cpus: use CPU numbers and ranges such as 0-2,4")


def host_cpus() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container; None means "not asked for".

    memory, memory_swap in bytes (memory_swap is memory plus swap, as in Docker; -1: unlimited
    swap); cpus may be fractional; pids None is unlimited; cpuset_cpus is Docker's list syntax.
    """
    memory: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    pids: int | None = None
    cpuset_cpus: str | None = None

    @classmethod
    def parse(cls, memory: str | None = None, memory_swap: str | None = None, cpus: str | None = None,
              cpu_shares: str | None = None, pids: str | None = None,
              cpuset_cpus: str | None = None) -> "Limits":
        """From the flags' strings, with Docker's meaning of 0 and -1; UsageError on a bad value."""
        mem = parse_bytes(memory, "--memory") if memory is not None else None
        swap = None
        if memory_swap is not None:
            swap = -1 if str(memory_swap).strip() == "-1" else parse_bytes(memory_swap, "--memory-swap")
        limits = cls(
            memory=mem or None,
            memory_swap=swap or None,
            cpus=(parse_cpus(cpus) or None) if cpus is not None else None,
            cpu_shares=(parse_int(cpu_shares, "--cpu-shares") or None) if cpu_shares is not None else None,
            pids=parse_int(pids, "--pids-limit") if pids is not None else None,
            cpuset_cpus=cpuset_cpus.strip() if cpuset_cpus is not None and cpuset_cpus.strip() else None)
        if limits.pids is not None and limits.pids in (0, -1):
            limits = cls(**{**limits.__dict__, "pids": None})  # Docker: 0 and -1 are unlimited
        if limits.memory_swap == -1 and limits.memory is None:
            limits = cls(**{**limits.__dict__, "memory_swap": None})  # unlimited swap is the default
        limits.check()
        return limits

    def check(self) -> None:
        """UsageError if a value is out of range or the combination makes no sense."""
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise UsageError(f"invalid value {self.memory} for --memory: the minimum is 6m (6291456 bytes)")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory_swap < 0:
                raise UsageError(f"invalid value {self.memory_swap} for --memory-swap: use a size, or -1 "
                                 "for unlimited swap")
            if self.memory is None:
                raise UsageError("--memory-swap needs --memory too: it is the total of memory and swap")
            if self.memory_swap < self.memory:
                raise UsageError(f"--memory-swap ({self.memory_swap} bytes) must be at least --memory "
                                 f"({self.memory} bytes): it is the total of memory and swap")
        if self.cpus is not None:
            n = len(host_cpus())
            if not 0.01 <= self.cpus <= n:
                raise UsageError(f"invalid value {self.cpus} for --cpus: the range is 0.01 to {n} "
                                 f"(this host has {n} CPUs available)")
        if self.cpu_shares is not None and not MIN_SHARES <= self.cpu_shares <= MAX_SHARES:
            raise UsageError(f"invalid value {self.cpu_shares} for --cpu-shares: the range is "
                             f"{MIN_SHARES} to {MAX_SHARES} (1024 is the default weight)")
        if self.pids is not None and self.pids < 1:
            raise UsageError(f"invalid value {self.pids} for --pids-limit: use a positive number, "
                             "or -1 for unlimited")
        if self.cpuset_cpus is not None:
            parse_cpuset(self.cpuset_cpus)

    def asked(self) -> dict[str, str]:
        """The limits asked for: field name -> the controller it needs."""
        return {k: CONTROLLER[k] for k in FLAGS if getattr(self, k) is not None}

    def controllers(self) -> dict[str, list[str]]:
        """Controller -> the flags that need it."""
        out: dict[str, list[str]] = {}
        for k, c in self.asked().items():
            out.setdefault(c, []).append(FLAGS[k])
        return out

    # --- conversions ---------------------------------------------------------------

    def cpu_quota(self) -> int | None:
        return None if self.cpus is None else max(1000, round(self.cpus * CPU_PERIOD))

    def cpu_weight(self) -> int | None:
        return None if self.cpu_shares is None else shares_to_weight(self.cpu_shares)

    def swap_only(self) -> int | None:
        """cgroup v2's memory.swap.max: swap alone (memory-swap minus memory); -1 unlimited.

        Without --memory-swap, Docker lets a container with --memory use as much swap again.
        """
        if self.memory is None:
            return None
        if self.memory_swap is None:
            return self.memory
        if self.memory_swap == -1:
            return -1
        return self.memory_swap - self.memory


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cgroup v2's cpu.weight (1..10000), as crun maps it."""
    return 1 + ((shares - 2) * 9999) // 262142
