"""Versions in a model's folder that Triton polls: staged, published in one rename, pruned, rolled back.

Triton (`--model-control-mode=poll`) loads the highest version number beside the one serving and
unloads the old one once the new one is ready; a version that fails to load leaves the old one
serving. Triton 2.51 loads the serving version AGAIN (a new instance: every sequence's KV cache
lost) whenever something new appears in the model's folder, also a folder it ignores as a version
(measured: a `.staging-x` created there, or a file written into it). Deleting a folder does not.
So a version must appear complete, in one step, and never change afterwards:
- it is written in a staging folder beside the repository, on the same filesystem (at the
  repository's root Triton would take the folder for a model and fail it), then renamed to the
  next number in the model's folder: one change, one load (of the new version);
- nothing in it is written later: Python would write `__pycache__/` beside model.py and the engine's
  modules when the python backend imports them (its stub ignores PYTHONDONTWRITEBYTECODE), Triton
  sees the folder changed and loads the version a second time, which drops every sequence's KV
  cache. A plain file named `__pycache__` in each package folder makes those writes fail (Python
  skips them silently), also for root, where a read-only folder would not.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from contract import repository as layout

log = logging.getLogger(__name__)

DEFAULT_KEEP = 3  # versions kept in the model's folder: the serving one and two to roll back to


class VersionError(RuntimeError):
    """A rollback or prune cannot be done; the message names the fix."""


class AlreadyNewest(Exception):
    """A rollback to the version the newest one is (or is a copy of): nothing was published."""


def check_repository(repository: Path, name: str) -> None:
    """A VersionError naming --repository when it (or the part of its path that exists), or its
    model's folder `name`, is a file, not a folder."""
    repository = Path(repository)
    existing = repository
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    for path in (existing, repository / name):
        if path.exists() and not path.is_dir():
            raise VersionError(
                f"--repository {repository}: {path} is a file, not a folder; pass the model repository's "
                "folder (e.g. model_repository; created if missing)"
            )


def staging(model_dir: Path) -> Path:
    """A new, empty staging folder outside the repository Triton polls, on its filesystem (a
    version is renamed from there): beside the repository. Where that is another filesystem
    (the repository is a mount) or read-only, inside `model_dir`, which costs the serving version
    one more load while the export runs (a warning says so)."""
    model_dir = Path(model_dir)
    repository = model_dir.parent
    repository.mkdir(parents=True, exist_ok=True)
    beside = repository.resolve().parent
    try:
        if os.stat(beside).st_dev == os.stat(repository).st_dev:
            return Path(tempfile.mkdtemp(prefix=f".{repository.name}{layout.STAGING_PREFIX}", dir=beside))
    except OSError:  # not writable there
        pass
    log.warning(
        "staging inside %s (beside the repository is %s): Triton loads the serving version once "
        "more while this export runs, and its chats start their replies again",
        model_dir,
        "another filesystem" if beside.exists() else "missing",
    )
    model_dir.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=layout.STAGING_PREFIX, dir=model_dir))


def seal(folder: Path) -> None:
    """Make the server write nothing into `folder`: a `__pycache__` file in every package folder."""
    for package in {p.parent for p in Path(folder).rglob("*.py")}:
        cache = package / "__pycache__"
        if cache.is_dir():
            shutil.rmtree(cache)
        cache.write_bytes(b"")


def publish(staged: Path, model_dir: Path, config_text: str, info: dict, keep: int = DEFAULT_KEEP) -> int:
    """Rename the complete version folder `staged` (in a folder from `staging()`) to the next
    version number of `model_dir`, write config.pbtxt if it changed, prune to `keep` versions; the
    new number. A new model's folder appears whole, config and version 1 in one rename.

    The version comes first: a poll between the two writes loads it with the previous config (a
    config.pbtxt that changes later reloads the model once more)."""
    model_dir, staged = Path(model_dir), Path(staged)
    check_keep(keep)
    seal(staged)
    number = max(layout.versions(model_dir), default=0) + 1
    _record(staged, {**info, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": number})
    if not model_dir.exists():
        whole = staged.parent / model_dir.name
        whole.mkdir()
        (whole / "config.pbtxt").write_text(config_text)
        os.rename(staged, whole / str(number))
        os.rename(whole, model_dir)
        return number
    while True:  # another export may take the number first: then the next one
        try:
            os.rename(staged, model_dir / str(number))
            break
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            number += 1
            _record(staged, {**layout.version_info(staged.parent, staged.name), "version": number})
    config = model_dir / "config.pbtxt"
    if not config.exists() or config.read_text() != config_text:
        tmp = staged.parent / "config.pbtxt"  # the staging folder: the same filesystem
        tmp.write_text(config_text)
        os.replace(tmp, config)
    legacy = model_dir / layout.TOKENIZER_DIR  # exports before versions kept one tokenizer here
    if legacy.is_dir():
        shutil.rmtree(legacy)
        log.info("removed %s: each version now holds its own tokenizer", legacy)
    prune(model_dir, keep)
    return number


def _record(staged: Path, info: dict) -> None:
    """Write the version's version.json as a new file (a rollback's may be a hard link)."""
    (staged / layout.VERSION_INFO).unlink(missing_ok=True)
    (staged / layout.VERSION_INFO).write_text(json.dumps(info, indent=1))


def check_keep(keep: int) -> None:
    if keep < 1:
        raise VersionError(f"--keep must be at least 1 (the serving version), got {keep}")


def prune(model_dir: Path, keep: int) -> list[int]:
    """Delete all but the `keep` highest versions (never the highest); the numbers deleted.
    (A deleted folder is no change to Triton's poll: the serving version stays loaded.)"""
    check_keep(keep)
    old = layout.versions(model_dir)[:-keep]
    for number in old:
        shutil.rmtree(layout.version_dir(model_dir, number))
    if old:
        log.info("pruned version(s) %s of %s (--keep %d)", ", ".join(map(str, old)), model_dir, keep)
    return old


def rollback(model_dir: Path, to: int | None = None, keep: int = DEFAULT_KEEP) -> int:
    """Publish version `to` (default: the one below the highest) again, as the next number; the
    new number. Its files are hard links where the filesystem allows (no second copy on disk)."""
    model_dir = Path(model_dir)
    check_keep(keep)
    numbers = layout.versions(model_dir)
    if to is None:
        if len(numbers) < 2:
            raise VersionError(
                f"{model_dir} holds {len(numbers)} version(s): nothing to roll back to "
                "(export keeps --keep versions; pass --rollback N to name one)"
            )
        to = numbers[-2]
    if to not in numbers:
        raise VersionError(f"{model_dir} has no version {to}: it holds {numbers or 'none'}")
    newest = numbers[-1]
    if _origin(model_dir, to) == _origin(model_dir, newest):
        what = "is the newest" if to == newest else f"is what the newest, {newest}, holds (a copy)"
        raise AlreadyNewest(
            f"version {to} of {model_dir} {what} already: nothing published (--list shows the versions)"
        )
    source = layout.version_dir(model_dir, to)
    if not (source / layout.TOKENIZER_DIR / "tokenizer.json").exists():
        raise VersionError(
            f"version {to} holds no tokenizer (written by an export before versions): export its "
            "checkpoint again instead"
        )
    config = model_dir / "config.pbtxt"
    if not config.exists():
        raise VersionError(f"{model_dir} has no config.pbtxt: export a checkpoint into it first")
    staged = staging(model_dir)
    try:
        copy = staged / "version"
        caches = shutil.ignore_patterns("__pycache__")
        shutil.copytree(source, copy, copy_function=_link_or_copy, ignore=caches)
        info = {**layout.version_info(model_dir, to), "rolled_back_from": numbers[-1], "copy_of": to}
        info.pop("written", None)
        return publish(copy, model_dir, config.read_text(), info, keep)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _origin(model_dir: Path, number: int) -> int:
    """The version whose files `number` holds: itself, or the one it is a rollback's copy of."""
    return int(layout.version_info(model_dir, number).get("copy_of", number))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def describe(model_dir: Path) -> list[str]:
    """One line per version, newest first: number, when, from what, its checks."""
    lines = []
    for number in reversed(layout.versions(model_dir)):
        info = layout.version_info(model_dir, number)
        source = info.get("checkpoint", "?")
        if "copy_of" in info:
            source = f"copy of version {info['copy_of']} ({source})"
        lines.append(
            f"{number:>4}  {info.get('written', '?'):<24}  {source}  "
            f"max|Δlogit| {info.get('max_abs_diff', float('nan')):.2e}  "
            f"tokenizer {str(info.get('tokenizer_sha256', '?'))[:12]}"
        )
    return lines
