"""Atomic file writes: temp file, fsync, rename, fsync of the directory.

DESIGN.md principle 3: every write is atomic so that a crash never leaves a
half-written file that looks complete.  Readers only ever see the old file or
the whole new one.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_bytes_atomic(d / "x.json", b"{}")
    >>> (d / "x.json").read_bytes()
    b'{}'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then it is left as it is).

    For files opened in place rather than written atomically: the key store,
    the ICC key pool and the ceremony databases (SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode) and the audit trail.  Created
    through ``open``/``sqlite3`` they got the umask's 0644: key metadata and
    wrapped keys readable by every local account.

    Example:
        >>> import tempfile, pathlib, stat
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "keys.db"
        >>> ensure_private_file(p)
        >>> oct(stat.S_IMODE(p.stat().st_mode))
        '0o600'
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (the rename) to stable storage."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[bytes]]:
    """Yield a file object whose content replaces ``path`` only on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb",):
        raise ValueError("atomic_writer supports binary mode 'wb' only")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
