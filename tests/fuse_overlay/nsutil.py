"""Run a shell script inside a new user + mount namespace, with a timeout.

The script gets ``$FO`` (command prefix to start fuse-overlay) and ``$T`` (a
scratch directory, removed from inside the namespace at the end, so files
owned by subuids go too).  On timeout the whole process group is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from .conftest import _MODES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_in_ns(script: str, mode: str = "single", timeout: float = 120.0) -> subprocess.CompletedProcess:
    t = tempfile.mkdtemp(prefix="fo-ns-")
    fo = f"{sys.executable} -m fuse_overlay.cli"
    wrapped = (f"export FO='{fo}' T='{t}' PYTHONPATH='{REPO}'\n"
               "cleanup() { for m in $(awk '$5 ~ \"^'$T'\" {print $5}' /proc/self/mountinfo | sort -r); "
               "do umount -l \"$m\" 2>/dev/null || true; done; rm -rf \"$T\"; }\n"
               "trap cleanup EXIT\n" + script)
    proc = subprocess.Popen(_MODES[mode] + ["bash", "-euc", wrapped], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"namespace script timed out; stdout={out!r} stderr={err!r}")
    finally:
        if os.path.isdir(t):
            subprocess.run(["rm", "-rf", t], timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
