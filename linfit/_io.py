"""File helpers shared by linfit's readers and writers: the errors a damaged ``.npz`` raises, and atomic writes (a
reader sees the old file or the new one, never a torn one)."""

from __future__ import annotations

import os
import secrets
import zipfile
import zlib
from pathlib import Path

NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
"""What ``np.load`` raises for a missing, truncated or garbled ``.npz`` (a zip of ``.npy`` members): catch these
to turn a damaged file into a linfit error."""


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` through a uniquely named temporary file in the same folder,
    flushed to disk and then renamed over ``path`` (``os.replace``); the temporary file is removed if anything
    fails, and two writers never share one. The file gets the permissions ``open`` would give it (``0o666`` less
    the umask). Raises ``OSError`` as the file system does."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # a random name, created exclusively (two writers never share one); mode 0o666 so the umask applies as for open
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
