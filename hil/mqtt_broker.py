"""A real mosquitto broker on 127.0.0.1 for the MQTT tests (the gateway's uplink, the receiver's ingest).

:class:`Broker` writes a mosquitto.conf into its work directory: a plain listener (``port``) and a TLS
listener (``tls_port``, certificate from gateway.tlsutil.make_self_signed, pinned by ``cafile``), both on
127.0.0.1, anonymous, no persistence to disk (sessions live in the broker's memory for as long as it runs),
an optional ACL file. Debian 12's mosquitto 2.0.x speaks MQTT 5 (OASIS Standard, 2019) with shared
subscriptions (``$share/<group>/<filter>``, s.4.8.2). :data:`MOSQUITTO` is the executable, or None when it is
not installed (.ci/run installs it).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.tlsutil import make_self_signed
from hil.rig import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)

__all__ = ["MOSQUITTO", "Broker"]


class Broker:
    """mosquitto on 127.0.0.1: ``port`` (plain) and ``tls_port`` (TLS, ``cafile`` pins it).

    ``acl``: the text of an ACL file (mosquitto.conf(5) ``acl_file``), or None for none. ``start()`` returns
    once both ports accept (RuntimeError with the broker's log after 10 s, or when it exits); ``stop()``
    (SIGTERM, then SIGKILL after 10 s) may be followed by ``start()`` on the same ports; ``close()`` stops it
    for good. The broker's log is ``<workdir>/mosquitto.log``.
    """

    def __init__(self, workdir: Path, acl: str | None = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.tls_port = free_port(), free_port()
        self.cafile, key = make_self_signed(self.dir / "tls", ["127.0.0.1", "localhost"])
        lines = ["per_listener_settings false", "allow_anonymous true", "persistence false", "user root",
                 "log_dest stderr", "log_type error", "log_type warning",
                 f"listener {self.port} 127.0.0.1",
                 f"listener {self.tls_port} 127.0.0.1", f"certfile {self.cafile}", f"keyfile {key}"]
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = open(self.dir / "mosquitto.log", "ab")

    def start(self) -> "Broker":
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                for p in (self.port, self.tls_port):
                    socket.create_connection(("127.0.0.1", p), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()
