"""A throw-away PostgreSQL cluster for tests and benchmarks (the regulator receiver's PostgreSQL store).

    with PgCluster(tmp_path / "pg").start() as pg:
        url = pg.createdb("rx")          # postgresql://postgres@127.0.0.1:PORT/rx

* :func:`available` -- None when the server binaries (initdb, pg_ctl, postgres) are found, else a one-line
  reason (a test skips with it). Binaries are looked up via ``pg_config --bindir``, then ``PATH``, then the
  newest ``/usr/lib/postgresql/<major>/bin`` (Debian's package ``postgresql``).
* :class:`PgCluster` -- ``initdb`` in a fresh directory, the server listening on 127.0.0.1 on a free port only
  (``listen_addresses``), its unix socket in the cluster's own directory, ``trust`` authentication for
  127.0.0.1/32 and that socket (pg_hba.conf holds nothing else), database superuser ``postgres``.

Root: initdb and postgres refuse to run as root (PostgreSQL docs, "Creating a Database Cluster"), so as root the
server runs as the unprivileged system user ``postgres`` (Debian's package creates it) or else ``nobody``. That
user usually cannot enter a pytest tmp_path (``/tmp/pytest-of-root`` is 0700), so then the cluster's directory is
a private 0700 directory under the system temp dir owned by that user (also short enough for the 107-byte unix
socket path), removed at :meth:`PgCluster.stop`; ``workdir`` then gets a copy of the server log at stop.
Otherwise the cluster lives in ``workdir`` itself (``workdir/data``, the socket and ``postgres.log`` beside it).

No server outlives its owner: :meth:`PgCluster.start` also starts a small watcher process (own session, so a
terminal's Ctrl-C does not kill it first) that waits for the process that started the cluster to go away
(its parent pid changes) and then shuts the server down: SIGINT (fast shutdown), after 10 s SIGQUIT
(immediate), after 5 s more SIGKILL (PostgreSQL docs, "Shutting Down the Server"), and removes the private
directory. :meth:`PgCluster.stop` does the same with ``pg_ctl stop -m fast``, then ``-m immediate``, and ends
the watcher.

``fsync=False`` (the default, for speed) also turns off full_page_writes: a crash of the machine may corrupt
the throw-away cluster, nothing else. Nothing here imports psycopg: :meth:`PgCluster.createdb` runs the
``createdb`` binary over TCP.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hil.rig import free_port

__all__ = ["PgCluster", "PgClusterError", "available", "find_bindir"]

SUPERUSER = "postgres"
_TOOLS = ("initdb", "pg_ctl", "postgres", "createdb")
_SOCKET_MAX = 100   # sun_path is 108 bytes on Linux; ".s.PGSQL.NNNNN" is appended to the directory

_WATCHER = r"""
import os, shutil, signal, sys, time
parent, pm, rundir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
signal.signal(signal.SIGINT, signal.SIG_IGN)
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
while os.getppid() == parent and alive(pm):
    time.sleep(0.5)
if alive(pm):
    for sig, wait_s in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pm, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait_s
        while alive(pm) and time.monotonic() < end:
            time.sleep(0.1)
        if not alive(pm):
            break
if rundir:
    shutil.rmtree(rundir, ignore_errors=True)
"""


class PgClusterError(RuntimeError):
    """The cluster could not be made or started; str() is one line (with the tail of the server log)."""


def _has_tools(d: Path) -> bool:
    return all((d / t).is_file() and os.access(d / t, os.X_OK) for t in _TOOLS)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and createdb, or None: ``pg_config --bindir`` (when the
    server is installed there too; libpq's pg_config may name a version whose server is absent), ``PATH``, then
    the newest ``/usr/lib/postgresql/*/bin``."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_tools(Path(out)):
            return Path(out)
    on_path = shutil.which("initdb")
    if on_path and _has_tools(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent

    def major(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if _has_tools(d):
            return d
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user the server runs as when we are root (postgres, else nobody); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def available() -> str | None:
    """None when a cluster can be started here; else a one-line reason (no server binaries, or root without an
    unprivileged user to run them as)."""
    if find_bindir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config, PATH or "
                "/usr/lib/postgresql/*/bin: install the Debian package postgresql")
    if os.geteuid() == 0 and _server_user() is None:
        return "running as root and neither user postgres nor nobody exists to run the PostgreSQL server as"
    return None


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """True when user uid/gid can traverse every directory from / to ``path`` (search permission)."""
    p = path.resolve()
    for d in [*reversed(p.parents), p]:
        try:
            st = d.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


class PgCluster:
    """One throw-away PostgreSQL cluster (module docstring). ``workdir``: where it lives (or, as root, where its
    log is copied at stop); ``fsync``: the server's fsync and full_page_writes; ``max_connections``: the server's
    setting. :meth:`start` raises PgClusterError (one line); :meth:`stop` is idempotent and also runs at exit of
    the ``with`` block. Attributes after start: ``port``, ``host`` (127.0.0.1), ``user`` (the database
    superuser), ``datadir``, ``socket_dir``, ``log_path``."""

    def __init__(self, workdir: Path, *, fsync: bool = False, max_connections: int = 100) -> None:
        self.workdir = Path(workdir)
        self.fsync = fsync
        self.max_connections = max_connections
        self.host = "127.0.0.1"
        self.user = SUPERUSER
        self.port = 0
        self.bindir: Path | None = None
        self.rundir: Path | None = None
        self.datadir: Path | None = None
        self.socket_dir: Path | None = None
        self.log_path: Path | None = None
        self._private = False
        self._os_user = _server_user()
        self._watcher: subprocess.Popen | None = None
        self._running = False

    # ------------------------------------------------------------ helpers

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self._os_user is not None:
            env.update(HOME=self._os_user.pw_dir or "/", USER=self._os_user.pw_name, LOGNAME=self._os_user.pw_name)
        return env

    def _run(self, *args: str | os.PathLike[str], timeout_s: float = 60.0, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as the unprivileged user when root); PgClusterError on failure when check."""
        assert self.bindir is not None
        cmd = [str(self.bindir / str(args[0])), *map(str, args[1:])]
        kw: dict[str, Any] = {}
        if self._os_user is not None:
            kw.update(user=self._os_user.pw_uid, group=self._os_user.pw_gid, extra_groups=[])
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=self._env(),
                                cwd=str(self.rundir), stdin=subprocess.DEVNULL, **kw)
        except subprocess.TimeoutExpired:
            raise PgClusterError(f"{args[0]} did not finish within {timeout_s:g} s{self._log_tail()}") from None
        if check and cp.returncode != 0:
            why = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
            raise PgClusterError(f"{args[0]} failed ({cp.returncode}): {why[-1] if why else 'no output'}"
                                 f"{self._log_tail()}")
        return cp

    def _log_tail(self) -> str:
        try:
            assert self.log_path is not None
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except (OSError, AssertionError):
            return ""
        return f"; server log: {' | '.join(lines[-3:])}" if lines else ""

    def _make_rundir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        u = self._os_user
        inside = self.workdir / "pg"
        if (u is None or _reachable(self.workdir, u.pw_uid, u.pw_gid)) and len(str(inside.resolve())) < _SOCKET_MAX:
            inside.mkdir(exist_ok=True)
            self.rundir, self._private = inside, False
        else:
            self.rundir, self._private = Path(tempfile.mkdtemp(prefix="pgcluster-")), True
        os.chmod(self.rundir, 0o700)
        if u is not None:
            os.chown(self.rundir, u.pw_uid, u.pw_gid)
        self.datadir = self.rundir / "data"
        self.socket_dir = self.rundir
        self.log_path = self.rundir / "postgres.log"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "PgCluster":
        """initdb, configure, start (pg_ctl -w) and arm the watcher; returns self. PgClusterError (one line)."""
        if self._running:
            return self
        reason = available()
        if reason:
            raise PgClusterError(reason)
        self.bindir = find_bindir()
        self._make_rundir()
        assert self.datadir is not None and self.log_path is not None
        try:
            self._run("initdb", "-D", self.datadir, "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C",
                      "--no-sync", "--no-instructions", timeout_s=120)
            (self.datadir / "pg_hba.conf").write_text(
                "# hil/pgcluster.py: trust for 127.0.0.1 and the private unix socket only\n"
                "local all all trust\n"
                "host  all all 127.0.0.1/32 trust\n")
            last: PgClusterError | None = None
            for _ in range(3):   # a free port may be taken by someone else before the server binds it
                self.port = free_port()
                self._configure()
                try:
                    self._run("pg_ctl", "-D", self.datadir, "-l", self.log_path, "-w", "-t", "60", "start",
                              timeout_s=90)
                    break
                except PgClusterError as exc:
                    last = exc
                    self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop", check=False,
                              timeout_s=30)
            else:
                assert last is not None
                raise last
            self._running = True
            self._arm_watcher()
        except BaseException:
            self.stop()
            raise
        return self

    def _configure(self) -> None:
        assert self.datadir is not None and self.socket_dir is not None
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text()
        marker = "\n# --- hil/pgcluster.py ---\n"
        text = text.split(marker)[0] + marker + "\n".join([
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            f"max_connections = {int(self.max_connections)}",
            f"fsync = {'on' if self.fsync else 'off'}",
            f"full_page_writes = {'on' if self.fsync else 'off'}",
            "shared_buffers = 32MB",
            "logging_collector = off",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] '",
            "timezone = 'UTC'",
            "",
        ])
        conf.write_text(text)
        if self._os_user is not None:
            os.chown(conf, self._os_user.pw_uid, self._os_user.pw_gid)
            os.chown(self.datadir / "pg_hba.conf", self._os_user.pw_uid, self._os_user.pw_gid)

    def _postmaster_pid(self) -> int | None:
        assert self.datadir is not None
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _arm_watcher(self) -> None:
        pm = self._postmaster_pid()
        if pm is None:
            raise PgClusterError(f"server started but {self.datadir}/postmaster.pid is unreadable")
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(os.getpid()), str(pm), str(self.rundir) if self._private else ""],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True)

    def stop(self) -> None:
        """Stop the server (pg_ctl stop -m fast, then -m immediate, then SIGKILL), end the watcher and remove a
        private directory (its log copied to ``workdir/postgres.log`` first); idempotent."""
        if self.datadir is not None and (self.datadir / "postmaster.pid").exists():
            cp = self._run("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "20", "stop", check=False,
                           timeout_s=30)
            if cp.returncode != 0 and (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "-t", "10", "stop", check=False,
                          timeout_s=20)
                pm = self._postmaster_pid()
                if pm is not None and (self.datadir / "postmaster.pid").exists():
                    try:
                        os.kill(pm, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        self._running = False
        if self._watcher is not None:
            if self._watcher.poll() is None:
                self._watcher.terminate()
            try:
                self._watcher.wait(5)
            except subprocess.TimeoutExpired:
                self._watcher.kill()
                self._watcher.wait()
            self._watcher = None
        if self._private and self.rundir is not None:
            if self.log_path is not None and self.log_path.exists():
                try:
                    shutil.copyfile(self.log_path, self.workdir / "postgres.log")
                except OSError:
                    pass
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None
            self.datadir = None

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ databases

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dbname`` (libpq connection URI, no password: trust)."""
        if not self.port:
            raise PgClusterError("the cluster is not started")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def createdb(self, name: str) -> str:
        """Create database ``name`` (the createdb binary over TCP); returns :meth:`url` of it."""
        if not self._running:
            raise PgClusterError("the cluster is not started")
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name, timeout_s=30)
        return self.url(name)

