"""Clean up after a launcher that died without stopping its tritonserver (SIGKILL, OOM killer).

`TritonServer.start()` runs this script beside each server, in its own session:

    python watchdog.py LAUNCHER_PID SERVER_PGID WORKDIR SHM_PREFIX

It waits on a pidfd of the launcher (a zombie launcher counts as dead, unlike `kill(pid, 0)`).
When the launcher is gone it stops the server's whole process group (SIGTERM, then SIGKILL after
a grace period: tritonserver, its python-backend stubs) and removes the backend copy and the
shared-memory regions. A launcher that stops its server itself SIGTERMs this watchdog first.
This replaces PR_SET_PDEATHSIG, which fires when the forking *thread* exits, not the process.
`clean_stale()` removes what launchers that are gone left behind (TritonServer.start calls it).
Standard library only; run as a plain script, so it needs no import path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

SHM = Path("/dev/shm")
log = logging.getLogger(__name__)


def group_alive(pgid: int) -> bool:
    """Some process of the group still runs (zombies don't count: their parent may never reap)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_alive(pgid):
            return


def remove_leftovers(workdir: Path, shm_prefix: str) -> None:
    """The backend copy and every /dev/shm region with the server's prefix."""
    shutil.rmtree(workdir, ignore_errors=True)
    for region in SHM.glob(f"{shm_prefix}*"):
        with contextlib.suppress(OSError):
            region.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[Path]:
    """Remove backend copies and /dev/shm regions of launchers that are no longer running.

    Names carry the launcher's pid (`tritonserver-<pid>-*`, `triton_<pid>_<port>_*`): only those
    of a dead pid go, so other servers on the machine are never touched."""
    removed = []
    candidates = [
        (p, re.match(r"tritonserver-(\d+)-", p.name))
        for p in Path(tempfile.gettempdir()).glob("tritonserver-*")
    ]
    candidates += [(p, re.match(r"triton_(\d+)_\d+_", p.name)) for p in SHM.glob("triton_*")]
    for path, match in candidates:
        if match and not _pid_alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        print(
            f"removed {len(removed)} leftover(s) of dead launchers: {', '.join(map(str, removed))}",
            file=sys.stderr,
        )
    return removed


def main(argv: list[str]) -> int:
    launcher, pgid, workdir, prefix = int(argv[0]), int(argv[1]), Path(argv[2]), argv[3]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the launcher cleans up itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    try:
        fd = os.pidfd_open(launcher)
    except ProcessLookupError:
        fd = None  # already gone
    except (OSError, AttributeError):  # Linux < 5.3 or Python < 3.9: look every half second
        while not exited(launcher):
            time.sleep(0.5)
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the launcher has exited
    stop_group(pgid, grace=5.0)
    remove_leftovers(workdir, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
