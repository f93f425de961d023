"""Replace a directory so that, at every instant, either the old or the new one is complete.

`os.rename` cannot put a directory over a non-empty one, and renaming the old one away first
leaves a moment, or, if the second rename fails, a lasting state, with no model at all. Linux's
renameat2(RENAME_EXCHANGE) swaps the two names in one step; where it is missing (another OS,
a filesystem without it) the fallback renames the old one aside and puts it back if the new one
cannot take its place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically; OSError(ENOSYS/EINVAL) where the system can't."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(code)}")


def replace_dir(new: Path, final: Path) -> None:
    """Put directory `new` at `final` (same filesystem), deleting what was there before."""
    new, final = Path(new), Path(final)
    if not final.exists():
        os.rename(new, final)
        return
    try:
        exchange(new, final)  # `new` now names the previous directory
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        aside = final.with_name(f".{final.name}.previous")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        try:
            os.rename(new, final)
        except BaseException:
            os.rename(aside, final)  # the previous model is back, complete
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    shutil.rmtree(new, ignore_errors=True)
