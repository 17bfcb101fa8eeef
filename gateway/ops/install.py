"""`hazard-gateway install-service`: lay the systemd unit, the user, the directories and a starter config.

What it does, in order, each step idempotent (a second run changes nothing and says so):

1. ``PREFIX/etc/systemd/system/hazard-gateway.service``: systemd/hazard-gateway.service with
   ``/usr/local/bin/hazard-gateway`` replaced by the executable that runs this command (the
   one in the venv: /opt/hazard-gateway/bin/hazard-gateway after the README's pip install) and
   ``/etc/hazard-gateway`` by ``--config-dir``;
2. ``PREFIX/etc/sysusers.d/hazard-gateway.conf`` and ``PREFIX/etc/tmpfiles.d/hazard-gateway.conf``
   (sysusers.d(5), tmpfiles.d(5); /etc is the administrator's place for both);
3. the system user ``hazard-gateway`` (groups dialout, gpio): ``systemd-sysusers --root PREFIX``
   when available, else ``useradd --system`` / ``groupadd`` / ``usermod`` (PREFIX / only);
4. the directories: CONFIG_DIR (0750 root:hazard-gateway), CONFIG_DIR/keys (0700
   hazard-gateway), /var/lib/hazard-gateway (0750 hazard-gateway); owners are set when
   running as root;
5. ``CONFIG_DIR/gateway.yaml`` when missing: a commented one-device starter (one Modbus TCP
   tank PLC: a level with H/HH alarms, the inlet valve, the overfill interlock) that passes
   ``check`` once ``keygen`` has made its key; ``gateway.state_dir`` is /var/lib/hazard-gateway
   and ``keys.private_key`` keys/private.pem. An existing config is never overwritten;
6. ``CONFIG_DIR/schema.json``: the config's JSON Schema (``hazard-gateway schema``), named by the
   starter's ``# yaml-language-server: $schema=schema.json`` line so editors complete and check keys;
   rewritten when this version's schema differs;
7. ``systemctl daemon-reload`` when the unit changed, PREFIX is / and systemd is running.

``--dry-run`` prints the same lines with "would" and changes nothing. Exit 0 on success, 2 for a
usage problem, 1 when a step failed (the line names the step and the file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gateway.schema import schema_text
from gateway.shipped import shipped

SERVICE = "hazard-gateway"
USER = "hazard-gateway"
STATE_DIR = "/var/lib/hazard-gateway"
DEFAULT_CONFIG_DIR = "/etc/hazard-gateway"
DEFAULT_CONFIG = f"{DEFAULT_CONFIG_DIR}/gateway.yaml"  # the config `run`, `check`, `status`... use by default
DEFAULT_EXEC = "/usr/local/bin/hazard-gateway"
SYSTEMD_SRC = shipped("systemd")

STARTER_CONFIG = """\
# yaml-language-server: $schema=schema.json
# hazard-gateway configuration: a one-device starter laid by `hazard-gateway install-service`.
# schema.json beside this file is the config's JSON Schema (editors with YAML support use it
# through the line above; `hazard-gateway schema` prints it again).
# Edit it for the site, then run `hazard-gateway check {config}` (every mistake is shown as
# FILE:LINE:COL) and `systemctl reload hazard-gateway` (or restart) to apply it.
# Relative paths are relative to this file. Commissioning: `hazard-gateway scan` finds the
# Modbus unit ids on a bus, `hazard-gateway probe` reads every tag once, `decode --order all`
# shows a float in all four word orders.

gateway:
  id: site-gateway-1                 # unique per regulator
  # enterprise_code: "330100000001"  # the regulator's enterprise code
  # major_hazard_code: "H01"        # the installation's own code, never the enterprise code again
  state_dir: {state_dir}    # store and status files (writable by the service)

keys:
  private_key: keys/private.pem      # `hazard-gateway keygen --out {config_dir}/keys` (mode 0600)

store:
  path: store.sqlite
  commit_interval_ms: 500

# uplink:                            # the regulator's receiver (HTTPS only)
#   url: https://receiver.example/v1/batches
#   ca_file: keys/receiver-ca.pem

# web: {{listen: "127.0.0.1:8080"}}    # the local read-only status page (loopback only without TLS)

devices:
  # One tank PLC on Modbus TCP: level as float32 at input register 30001, the inlet valve at coil 1.
  # A gas detector on RS-485 is a second entry with protocol: modbus_rtu, port: /dev/serial/by-id/...
  # and a profile (see `hazard-gateway profile import` for a register list in CSV).
  - name: tank_plc
    protocol: modbus_tcp
    host: 192.0.2.10                 # the PLC's address
    port: 502
    unit_id: 1
    poll_interval_ms: 1000
    timeout_ms: 1000
    # PLC watchdog: the gateway counts this register up every second; the PLC trips by itself when it stops
    heartbeat: {{address: 40101, interval_ms: 1000, mode: count}}
    tags:
      - {{name: T101.level, address: 30001, type: float32, order: ABCD, unit: m, precision: 2,
         valid_range: [-0.5, 12.5],
         alarms: {{H: 10.5, HH: {{setpoint: 11.0, deadband: 0.1, latching: true}}}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true,
         description: "T101 inlet valve, 1 = open"}}

interlocks:
  # HH level closes the tank's inlet valve (de-energise to trip).
  - name: T101_overfill
    inputs: [{{tag: T101.level, condition: HH}}]
    vote: 1oo1
    actions: [{{output: XV101, value: 0}}]
"""


class InstallError(Exception):
    """A step failed; one line naming the step and the file."""


@dataclass
class Installer:
    """Plans and performs the install under ``prefix``; ``lines`` collects what was (or would be) done."""

    prefix: Path
    config_dir: str = DEFAULT_CONFIG_DIR
    exec_path: str = DEFAULT_EXEC
    dry_run: bool = False
    lines: list[str] = field(default_factory=list)
    unit_changed: bool = False

    def p(self, absolute: str) -> Path:
        """An absolute target path under the prefix."""
        return self.prefix / absolute.lstrip("/")

    def say(self, verb: str, what: str) -> None:
        self.lines.append(f"{'would ' + verb if self.dry_run and verb not in ('unchanged', 'exists', 'kept') else verb}"
                          f" {what}")

    # ---- files ----

    def _render(self, name: str) -> str:
        text = (SYSTEMD_SRC / name).read_text(encoding="utf-8")
        text = text.replace(DEFAULT_EXEC, self.exec_path)
        return text.replace(DEFAULT_CONFIG_DIR, self.config_dir.rstrip("/"))

    def put_file(self, target: str, text: str, mode: int) -> bool:
        path = self.p(target)
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else None
        except OSError as exc:
            raise InstallError(f"{path}: cannot read: {exc.strerror}") from None
        if old == text and (path.stat().st_mode & 0o7777) == mode:
            self.say("unchanged", str(path))
            return False
        self.say("create" if old is None else "update", f"{path} (mode {mode:04o})")
        if not self.dry_run:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                os.chmod(tmp, mode)
                os.replace(tmp, path)
            except OSError as exc:
                raise InstallError(f"{path}: cannot write: {exc.strerror}") from None
        return True

    # ---- user ----

    def _names(self, table: str) -> dict[str, int]:
        f = self.p(f"/etc/{table}")
        try:
            rows = [ln.split(":") for ln in f.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
        except OSError:
            return {}
        return {r[0]: int(r[2]) for r in rows if len(r) > 2 and r[2].isdigit()}

    def ensure_user(self) -> None:
        users = self._names("passwd")
        if USER in users:
            self.say("exists", f"user {USER} (uid {users[USER]})")
            return
        sysusers = shutil.which("systemd-sysusers")
        conf = self.p("/etc/sysusers.d/hazard-gateway.conf")
        if sysusers:
            cmd = [sysusers, *(["--root", str(self.prefix)] if str(self.prefix) != "/" else []), str(conf)]
        elif str(self.prefix) == "/" and shutil.which("useradd"):
            cmd = ["useradd", "--system", "--user-group", "--home-dir", STATE_DIR, "--no-create-home",
                   "--shell", "/usr/sbin/nologin", "--groups", "dialout", USER]
        else:
            self.say("skipped", f"user {USER}: no systemd-sysusers or useradd for {self.prefix}; create it on the host")
            return
        self.say("create", f"user {USER} ({' '.join(cmd)})")
        if self.dry_run:
            return
        if not conf.exists() and sysusers:
            raise InstallError(f"{conf}: missing (sysusers.d step did not run)")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise InstallError(f"user {USER}: {cmd[0]} failed: {msg}")
        if not sysusers and "gpio" in self._names("group"):
            subprocess.run(["usermod", "-a", "-G", "gpio", USER], capture_output=True)

    # ---- directories ----

    def ensure_dir(self, target: str, mode: int, owner: str, group: str) -> None:
        path = self.p(target)
        uid = 0 if owner == "root" else self._names("passwd").get(owner)
        gid = 0 if group == "root" else self._names("group").get(group)
        can_chown = os.geteuid() == 0 and uid is not None and gid is not None
        if path.is_dir():
            st = path.stat()
            ok_mode = (st.st_mode & 0o7777) == mode
            ok_owner = not can_chown or (st.st_uid, st.st_gid) == (uid, gid)
            if ok_mode and ok_owner:
                self.say("unchanged", f"{path}/")
                return
            self.say("update", f"{path}/ (mode {mode:04o}{f', {owner}:{group}' if can_chown else ''})")
        else:
            self.say("create", f"{path}/ (mode {mode:04o}{f', {owner}:{group}' if can_chown else ''})")
        if self.dry_run:
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)
            if can_chown:
                os.chown(path, uid, gid)
        except OSError as exc:
            raise InstallError(f"{path}: {exc.strerror}") from None

    # ---- starter config ----

    def starter_config(self) -> str:
        """The one-device starter config (STARTER_CONFIG for this config dir)."""
        cfg_dir = self.config_dir.rstrip("/")
        return STARTER_CONFIG.format(state_dir=STATE_DIR, config_dir=cfg_dir, config=f"{cfg_dir}/gateway.yaml")

    def ensure_config(self) -> None:
        target = self.p(f"{self.config_dir.rstrip('/')}/gateway.yaml")
        if target.exists():
            self.say("kept", f"{target} (existing config is never overwritten)")
            return
        text = self.starter_config()
        self.say("create", f"{target} (one-device starter config; edit it, then `hazard-gateway check`)")
        if self.dry_run:
            return
        try:
            target.write_text(text, encoding="utf-8")
            os.chmod(target, 0o640)
            gid = self._names("group").get(USER)
            if os.geteuid() == 0 and gid is not None:
                os.chown(target, 0, gid)
        except OSError as exc:
            raise InstallError(f"{target}: cannot write: {exc.strerror}") from None

    # ---- all ----

    def run(self) -> list[str]:
        cfg = self.config_dir.rstrip("/")
        self.unit_changed = self.put_file("/etc/systemd/system/hazard-gateway.service",
                                          self._render("hazard-gateway.service"), 0o644)
        self.put_file("/etc/sysusers.d/hazard-gateway.conf", self._render("hazard-gateway.sysusers.conf"), 0o644)
        self.put_file("/etc/tmpfiles.d/hazard-gateway.conf", self._render("hazard-gateway.tmpfiles.conf"), 0o644)
        self.ensure_user()
        self.ensure_dir(cfg, 0o750, "root", USER)
        self.ensure_dir(f"{cfg}/keys", 0o700, USER, USER)
        self.ensure_dir(STATE_DIR, 0o750, USER, USER)
        self.ensure_config()
        # the config's JSON Schema beside it, for editors; refreshed when this version's schema differs
        self.put_file(f"{cfg}/schema.json", schema_text(), 0o644)
        if self.unit_changed and str(self.prefix) == "/" and Path("/run/systemd/system").is_dir():
            self.say("run", "systemctl daemon-reload")
            if not self.dry_run:
                subprocess.run(["systemctl", "daemon-reload"], check=False)
        return self.lines


def default_exec() -> str:
    """The hazard-gateway executable of this installation (next to the running Python), else PATH."""
    here = Path(sys.executable).parent / "hazard-gateway"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("hazard-gateway")
    return str(Path(found).resolve()) if found else DEFAULT_EXEC


def install_service(prefix: str = "/", config_dir: str = DEFAULT_CONFIG_DIR, dry_run: bool = False,
                    exec_path: str | None = None) -> list[str]:
    """Run every step; returns the report lines. Raises InstallError (one line) when a step fails,
    ValueError for a relative --config-dir."""
    if not config_dir.startswith("/"):
        raise ValueError(f"--config-dir {config_dir}: must be an absolute path")
    inst = Installer(Path(prefix), config_dir=config_dir, exec_path=exec_path or default_exec(), dry_run=dry_run)
    return inst.run()
