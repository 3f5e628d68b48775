"""Containers: their records, run, lifecycle, the monitor and the fork server, root filesystems, console, cp, stats."""
