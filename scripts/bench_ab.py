#!/usr/bin/env python3
"""Start time of two revisions of rootless, side by side: is a change slower to start?

    scripts/bench_ab.py [--runs N] REV_A REV_B      (as an ordinary user, from a checkout)

Each revision is exported with ``git archive`` to a temporary directory (so both get their own
bytecode), gets its own store with the busybox test image and its own run-time directory, and
``rootless run --rm busybox true`` (default network, then ``--network none``) runs
interleaved A B A B ... after three warm-up rounds.  Prints the medians and B/A.  Uses the
``rootless`` of this Python's environment for its dependencies, with PYTHONPATH pointing at each
revision's tree.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=31)
    ap.add_argument("revs", nargs=2, metavar="REV")
    args = ap.parse_args()
    rootless = os.path.join(os.path.dirname(sys.executable), "rootless")
    work = tempfile.mkdtemp(prefix="bench-ab-")
    envs = []
    try:
        tar = os.path.join(work, "busybox.tar")
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "busybox-rootfs"), tar], check=True,
                       stdout=subprocess.DEVNULL)
        for i, rev in enumerate(args.revs):
            tree = os.path.join(work, f"tree{i}")
            os.mkdir(tree)
            archive = subprocess.run(["git", "-C", REPO, "archive", rev], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-C", tree, "-xf", "-"], input=archive, check=True)
            run_dir = os.path.join(work, f"run{i}")
            os.mkdir(run_dir, 0o700)
            env = {**os.environ, "PYTHONPATH": tree, "ROOTLESS_ROOT": os.path.join(work, f"store{i}"),
                   "XDG_RUNTIME_DIR": run_dir, "ROOTLESS_NO_SINGLE_UID_WARNING": "1"}
            subprocess.run([rootless, "import", "-c", 'CMD ["/bin/sh"]', tar, "busybox"], env=env, check=True,
                           stdout=subprocess.DEVNULL, cwd=work)
            envs.append(env)
        for net in ([], ["--network", "none"]):
            times: list[list[float]] = [[], []]
            for r in range(args.runs + 3):
                for i, env in enumerate(envs):
                    t0 = time.perf_counter()
                    # cwd: not a checkout, whose rootless/ would shadow PYTHONPATH for `python -m`
                    subprocess.run([rootless, "run", "--rm", *net, "busybox", "true"], env=env, check=True,
                                   stdin=subprocess.DEVNULL, cwd=work)
                    if r >= 3:
                        times[i].append(time.perf_counter() - t0)
            a, b = (statistics.median(t) for t in times)
            print(f"{' '.join(net) or 'default network':16s} {args.revs[0]}={a * 1000:.0f} ms  "
                  f"{args.revs[1]}={b * 1000:.0f} ms  B/A={b / a:.2f}  (medians of {args.runs})")
    finally:
        for env in envs:
            for pidfile in glob.glob(os.path.join(env["XDG_RUNTIME_DIR"], "rootless", "forkserver-*.sock.pid")):
                try:
                    os.kill(int(open(pidfile).read()), signal.SIGTERM)
                except (OSError, ValueError):
                    pass
        if envs:
            subprocess.run([rootless, "unshare", "rm", "-rf", work], env=envs[0])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
