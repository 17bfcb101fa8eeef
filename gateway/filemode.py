"""The mode of the record files the gateway creates: 0640, whatever the process umask.

The store (SQLite, and its -wal / -shm, which SQLite creates with the database file's mode),
status.json, the safety state and the chain position file hold plant records: the owner (the
gateway user) reads and writes them, its group (operators, the backup job) reads them, others
nothing. The mode given to open(2) is masked by the umask (0022 leaves 0640 alone, but 0077 makes
it 0600), and SQLite creates a missing database 0644 whatever the umask, so every such file is
created here and fchmod'ed to :data:`RECORD_MODE`.
"""

from __future__ import annotations

import os

#: owner read/write, group read, others nothing
RECORD_MODE = 0o640


def create_record_file(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """Open ``path`` with ``flags`` (plus O_CLOEXEC), creating it with mode 0640 whatever the umask;
    returns the file descriptor (the caller closes it). The mode is set with fchmod on the descriptor,
    so also a file that already existed (O_CREAT without O_EXCL) ends up 0640. Raises OSError."""
    fd = os.open(path, flags | os.O_CLOEXEC, RECORD_MODE)
    try:
        os.fchmod(fd, RECORD_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync(2) the directory ``path``, so a rename into it (the last step of an atomic write) survives a power
    loss (POSIX leaves the directory entry in the page cache until then). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
