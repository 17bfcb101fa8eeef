"""Who may read the status page off loopback: HTTP Basic (RFC 7617, over TLS only) against a credentials file.

The file (config ``web: {credentials_file}``, a secret file: chmod 600) holds one ``user:HASH`` line per person;
blank lines and lines starting with ``#`` are ignored. HASH is one of (hashlib, standard library only)::

    pbkdf2_sha256$ITERATIONS$SALT$DIGEST        PBKDF2-HMAC-SHA256 (RFC 8018), at least 100000 iterations
    scrypt$N$R$P$SALT$DIGEST                    scrypt (RFC 7914), N a power of two >= 2**14

SALT and DIGEST are base64 (standard alphabet, padding optional). Make a line with
``python -m gateway.ops.web.auth USER`` (asks for the password twice, prints ``USER:pbkdf2_sha256$...``).

A verification costs about 0.2 s of CPU on purpose, so the server runs at most one at a time (a lock) and
remembers the pairs it has accepted (a digest of user and password, never the password) until the file changes:
the page polls every 1.5 s and must not cost a hash each time. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

PBKDF2_ITERATIONS = 600_000      # OWASP Password Storage Cheat Sheet (2023) for PBKDF2-HMAC-SHA256
PBKDF2_MIN_ITERATIONS = 100_000
SCRYPT_MIN_N = 2 ** 14
MAX_FILE_BYTES = 64 * 1024
MAX_REMEMBERED = 64


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class PasswordHash:
    scheme: str          # "pbkdf2_sha256" | "scrypt"
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    def matches(self, password: str) -> bool:
        pw = password.encode("utf-8")
        if self.scheme == "pbkdf2_sha256":
            got = hashlib.pbkdf2_hmac("sha256", pw, self.salt, self.params[0], dklen=len(self.digest))
        else:
            n, r, p = self.params
            got = hashlib.scrypt(pw, salt=self.salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=len(self.digest))
        return hmac.compare_digest(got, self.digest)


def parse_hash(text: str) -> PasswordHash:
    """One HASH (module docstring) -> its parts. ValueError (one line) for an unknown scheme, a weak parameter or
    bad base64."""
    parts = text.strip().split("$")
    try:
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            it = int(parts[1])
            if it < PBKDF2_MIN_ITERATIONS:
                raise ValueError(f"pbkdf2_sha256 needs at least {PBKDF2_MIN_ITERATIONS} iterations, not {it}")
            return PasswordHash("pbkdf2_sha256", (it,), _b64(parts[2]), _b64(parts[3]))
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n < SCRYPT_MIN_N or n & (n - 1) or r < 1 or p < 1:
                raise ValueError(f"scrypt needs N a power of two >= {SCRYPT_MIN_N}, r >= 1, p >= 1")
            return PasswordHash("scrypt", (n, r, p), _b64(parts[4]), _b64(parts[5]))
    except binascii.Error:
        raise ValueError("salt or digest is not base64") from None
    raise ValueError("hash is not pbkdf2_sha256$ITERATIONS$SALT$DIGEST or scrypt$N$R$P$SALT$DIGEST")


def load_credentials(path: Path) -> dict[str, PasswordHash]:
    """user -> hash of the credentials file at ``path``. ValueError (one line naming the file and line) for an
    unreadable or oversized file, a line without ``user:``, a duplicate user, a bad hash, or no user at all."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"credentials file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"credentials file {path}: larger than {MAX_FILE_BYTES} bytes")
    out: dict[str, PasswordHash] = {}
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, h = line.partition(":")
        if not sep or not user:
            raise ValueError(f"credentials file {path} line {n}: not user:HASH")
        if user in out:
            raise ValueError(f"credentials file {path} line {n}: user {user!r} given twice")
        try:
            out[user] = parse_hash(h)
        except ValueError as exc:
            raise ValueError(f"credentials file {path} line {n}: {exc}") from None
    if not out:
        raise ValueError(f"credentials file {path}: no user:HASH line")
    return out


def make_hash(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A ``pbkdf2_sha256$...`` HASH of ``password`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join(("pbkdf2_sha256", str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


class BasicAuth:
    """Checks an ``Authorization: Basic ...`` header against the credentials file at ``path`` (re-read when its
    mtime or size changes; a file that became unreadable or invalid refuses everyone until it is fixed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, PasswordHash] = {}
        self._accepted: set[bytes] = set()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp, self._accepted = stamp, set()
            try:
                self._users = load_credentials(self.path) if stamp is not None else {}
            except ValueError:
                self._users = {}

    def check(self, header: str | None) -> str | None:
        """The user an Authorization header names when its password matches, else None."""
        if not header or not header[:6].lower() == "basic ":
            return None
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not sep:
            return None
        key = hashlib.sha256(b"%d:%s:%s" % (len(user), user.encode(), password.encode())).digest()
        with self._lock:   # one verification at a time: a hash costs CPU on purpose
            self._refresh()
            if key in self._accepted:
                return user
            h = self._users.get(user)
            if h is None or not h.matches(password):
                return None
            if len(self._accepted) >= MAX_REMEMBERED:
                self._accepted.clear()
            self._accepted.add(key)
            return user


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.ops.web.auth USER``: print one credentials line for USER (password asked twice)."""
    import getpass

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or not args[0]:
        print("usage: python -m gateway.ops.web.auth USER   (USER without ':')", file=sys.stderr)
        return 2
    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        print("the passwords differ", file=sys.stderr)
        return 1
    print(f"{args[0]}:{make_hash(pw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
