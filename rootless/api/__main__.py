"""``python -m rootless.api``: the service process ``rootless system service`` execs (server.main)."""

import sys

from .server import main

sys.exit(main(sys.argv[1:]))
