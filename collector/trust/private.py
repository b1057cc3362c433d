"""The data directory is private: the directory 0700, every file in it 0600.

It holds prompts and answers (the store, the spool), the CA's private key and the budget
state, so no other local user may read any of it. Files llmtap writes whole are replaced
atomically through :func:`write_private`, which keeps the mode 0600 whatever the file's
mode was; DuckDB's own files are covered by the processes' umask (``llmtap`` commands and
the loader child run with 0077); and :func:`tighten` brings a directory made by an older
llmtap (0755, files 0644) back to private at each start.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "private_dir", "tighten", "write_private"]

#: The umask of llmtap's processes: what they create is readable by their user only.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` created if missing (parents too), mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def tighten(data_dir: Path) -> None:
    """Make ``data_dir`` and everything under it private (directories 0700, files 0600).
    Symbolic links and entries owned by someone else are left alone."""
    private_dir(data_dir)
    uid = os.geteuid()
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            with contextlib.suppress(OSError):  # a spool file loaded and deleted meanwhile
                path = os.path.join(root, name)
                info = os.lstat(path)
                if info.st_uid != uid or stat.S_ISLNK(info.st_mode):
                    continue
                wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
                if stat.S_IMODE(info.st_mode) != wanted:
                    os.chmod(path, wanted)


def write_private(path: Path, content: str, keep_mode: bool = False) -> None:
    """Replace ``path`` with ``content`` (UTF-8) atomically, mode 0600: readers see the old
    file or the new one, never half of it, and never a copy others can read. With
    ``keep_mode``, an existing file keeps its mode (a rules file the user shares on purpose)."""
    mode = 0o600
    if keep_mode:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(path.stat().st_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)  # whatever the umask, and an old tmp file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
