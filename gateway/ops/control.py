"""Operator actions over a local unix socket: ack, reset, shelve, unshelve, bypass, silence, status.

Protocol: a unix stream socket (default ``state_dir/control.sock``), one JSON object per line each
way. A request is ``{"action": ..., ...}``; the answer is ``{"ok": true, "message": ..., ...}`` or
``{"ok": false, "error": "<one line>"}``. Requests and their fields:

=========  ============================================  =====================================
action     fields                                        does
=========  ============================================  =====================================
status     -                                             the status snapshot (``status`` key)
ack        id, reason?                                   AlarmEngine.ack (ISA-18.2 acknowledge)
reset      target (alarm id or interlock), reason?       InterlockEngine.reset / AlarmEngine.reset
shelve     id, minutes, reason (required)                AlarmEngine.shelve (ISA-18.2 shelving)
unshelve   id, reason?                                   AlarmEngine.unshelve
bypass     interlock, minutes, reason (required), end?   InterlockEngine.bypass / end_bypass
silence    reason?                                       silence horns (GB 16808: a new alarm
                                                         sounds again)
=========  ============================================  =====================================

Who may act is decided by the operating system: the socket file gets ``control.mode`` (0660)
and ``control.group``, so only the daemon's user and members of that group can connect. The
server identifies the peer with SO_PEERCRED (unix(7)): uid -> user name via pwd. A user name sent
by the client is never read. Every action, accepted or refused, is an event
``{"type": "operator", "action", "target", "user", "uid", "pid", "reason", "result", "error"}`` in
the store (persisted and uploaded); the alarm / interlock transitions it causes are events too,
carrying the same user and reason (ISA-18.2 / IEC 62682 audit trail).

The handlers run on the gateway's event loop and touch only memory (alarm, interlock and output
state), except ``status``, which reads store counters in a thread with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Iterator

from gateway.safety.alarms import AlarmActionError
from gateway.safety.interlocks import InterlockActionError
from gateway.i18n import gettext as _
from gateway.model import format_value, rfc3339
from gateway.runtime.ports import OperatorTarget, StatusSource

log = logging.getLogger("hazard_gateway.control")

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
STORE_STATS_TIMEOUT_S = 2.0
ACTIONS = ("status", "ack", "reset", "shelve", "unshelve", "bypass", "silence")
#: exit codes of the client commands
EXIT_OK, EXIT_REFUSED, EXIT_NOT_RUNNING = 0, 1, 2


class ControlError(Exception):
    """A client-side failure; ``exit_code`` 1 (refused / not permitted) or 2 (daemon not running)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def socket_path(cfg: Any) -> Path:
    """The control socket of a LoadedConfig: control.socket (relative to the config file) or state_dir/control.sock."""
    p = cfg.model.control.socket
    return cfg.resolve(p) if p else cfg.state_dir / SOCKET_NAME


@contextlib.contextmanager
def _sun_path(path: Path) -> Iterator[str]:
    """A name for bind/connect that fits sockaddr_un (108 bytes, unix(7)): a long path is reached
    through /proc/self/fd/N/NAME of its directory (Linux)."""
    s = os.fspath(path)
    if len(os.fsencode(s)) < 100:
        yield s
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_user(sock: socket.socket) -> tuple[str, int, int]:
    """(user name, uid, pid) of the process at the other end of a unix socket (SO_PEERCRED, unix(7)).

    The name comes from the password database; an unknown uid reads "uid N"."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return name, uid, pid


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return (str(msg).splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------- server

class ControlStartError(Exception):
    """The control socket could not be created (one line naming the path)."""


class ControlServer:
    """The daemon side. gw: the running gateway (gateway.runtime.ports.OperatorTarget). path: socket file. mode: permission bits.
    group: group name owning the socket (None: the daemon's). max_shelve_s: longest shelve.

    start() raises ControlStartError (one line) when the socket cannot be made: another daemon
    listens on it, the path exists and is no socket, the group is unknown or not ours to give."""

    def __init__(self, gw: OperatorTarget, path: Path, mode: int = 0o660, group: str | None = None,
                 max_shelve_s: float = 8 * 3600.0) -> None:
        self.gw = gw
        self.path = Path(path)
        self.mode = mode
        self.group = group
        self.max_shelve_s = max_shelve_s
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()
        self.requests = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        gid = -1
        if self.group is not None:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ControlStartError(f"control socket {self.path}: group {self.group!r} does not exist") from None
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _sun_path(self.path) as name:
                sock.bind(name)  # not listening yet: nobody can connect before mode and group are set
                os.chmod(name, self.mode)
                if gid != -1:
                    os.chown(name, -1, gid)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise ControlStartError(f"control socket {self.path}: {exc.strerror or exc}") from None
        log.info("control socket %s (mode %04o%s)", self.path, self.mode, f", group {self.group}" if self.group else "")

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlStartError(f"control socket {self.path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            with _sun_path(self.path) as name:
                probe.connect(name)
        except OSError:
            self.path.unlink()  # left behind by a daemon that died: nobody listens
            return
        finally:
            probe.close()
        raise ControlStartError(f"control socket {self.path}: another gateway is listening on it")

    async def close(self) -> None:
        """Stop accepting, drop open connections, remove the socket file; idempotent."""
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            user, uid, pid = peer_user(writer.get_extra_info("socket"))
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False, "error": _("request longer than {limit} bytes").format(
                        limit=MAX_LINE)})
                    return
                if not line:
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    await self._send(writer, {"ok": False, "error": _("bad request (one JSON object per line): {error}")
                                              .format(error=exc)})
                    continue
                self.requests += 1
                await self._send(writer, await self.handle(req, user, uid, pid))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await writer.drain()

    # ---- actions ----

    async def handle(self, req: dict[str, Any], user: str, uid: int = -1, pid: int = 0) -> dict[str, Any]:
        """Answer one request for ``user`` (already authenticated by SO_PEERCRED). Never raises."""
        action = req.get("action")
        if action == "status":
            return {"ok": True, "status": await snapshot(self.gw)}
        if action not in ACTIONS:
            return {"ok": False, "error": _("unknown action {action}; one of {actions}").format(
                action=repr(action), actions=", ".join(ACTIONS))}
        reason = req.get("reason")
        reason = str(reason).strip() if reason is not None and str(reason).strip() else None
        target = req.get("id") or req.get("target") or req.get("interlock")
        try:
            message = self._act(action, req, target, user, reason)
        except (AlarmActionError, InterlockActionError, KeyError, ValueError, TypeError) as exc:
            error = _one_line(exc)
            self._audit(action, target, user, uid, pid, reason, "refused", error, req)
            return {"ok": False, "error": error}
        self._audit(action, target, user, uid, pid, reason, "ok", None, req)
        return {"ok": True, "message": message, "user": user}

    def _audit(self, action: str, target: Any, user: str, uid: int, pid: int, reason: str | None, result: str,
               error: str | None, req: dict[str, Any]) -> None:
        rec = {"type": "operator", "action": action, "target": target, "user": user, "uid": uid, "pid": pid,
               "reason": reason, "result": result, "error": error, "ts": rfc3339(time.time())}
        if "minutes" in req:
            rec["minutes"] = req.get("minutes")
        self.gw.log_event(rec)

    def _events(self, events: list[Any]) -> None:
        for e in events:
            if e is not None:
                self.gw.log_event(e.to_record())

    @staticmethod
    def _minutes(req: dict[str, Any]) -> float:
        try:
            m = float(req.get("minutes"))
        except (TypeError, ValueError):
            raise ValueError(_("minutes must be a number")) from None
        if not m > 0:
            raise ValueError(_("minutes must be > 0, got {minutes}").format(minutes=f"{m:g}"))
        return m

    def _act(self, action: str, req: dict[str, Any], target: Any, user: str, reason: str | None) -> str:
        gw = self.gw
        now = time.monotonic()
        if action == "silence":
            ann = getattr(gw, "annunciators", None)
            n = ann.silence(user, reason) if ann is not None else 0
            return _("silenced {count} sounding alarm(s)").format(count=n) if n else _("nothing sounding")
        if not target or not isinstance(target, str):
            raise ValueError(_("{action}: which alarm or interlock? (give its id)").format(action=action))
        interlocks = {s["name"] for s in gw.interlocks.status()}
        if action == "ack":
            self._events(gw.alarms.ack(target, user, reason, now_mono=now))
            return _("{target} acknowledged").format(target=target)
        if action == "reset":
            if target in interlocks:
                cmds, events = gw.interlocks.reset(target, user, reason, alarms=gw.alarms, now_mono=now)
                self._events(events)
                if cmds:
                    gw.outputs.apply(cmds)
                return _("interlock {target} reset").format(target=target) + (
                    _("; writing {outputs}").format(outputs=", ".join(c.tag for c in cmds)) if cmds else
                    _("; outputs stay in the safe state until restarted locally"))
            self._events(gw.alarms.reset(target, user, reason, now_mono=now))
            return _("{target} reset").format(target=target)
        if action == "shelve":
            if reason is None:
                raise ValueError(_("{target}: shelve needs a reason").format(target=target))
            minutes = self._minutes(req)
            feeds = interlocks_fed_by(gw, target)
            if feeds:
                raise ValueError(_(
                    "{target} is an input of interlock {interlocks}: shelving it would quiet the annunciator "
                    "while the interlock can still trip; bypass the interlock first (hazard-gateway bypass "
                    "{first} --reason ...), with its own reason").format(target=target, interlocks=", ".join(feeds),
                                                                        first=feeds[0]))
            self._events(gw.alarms.shelve(target, user, reason, minutes * 60.0, self.max_shelve_s, now_mono=now))
            return _("{target} shelved for {minutes} min").format(target=target, minutes=f"{minutes:g}")
        if action == "unshelve":
            self._events(gw.alarms.unshelve(target, user, reason, now_mono=now))
            return _("{target} unshelved").format(target=target)
        if action == "bypass":
            if target not in interlocks:
                raise KeyError(_("no interlock {name}").format(name=repr(target)))
            if req.get("end"):
                self._events([gw.interlocks.end_bypass(target, user, reason, now_mono=now)])
                return _("bypass of {target} ended").format(target=target)
            if reason is None:
                raise ValueError(_("interlock {target}: bypass needs a reason").format(target=target))
            minutes = self._minutes(req)
            self._events([gw.interlocks.bypass(target, user, reason, minutes * 60.0, now_mono=now)])
            return _("interlock {target} bypassed for {minutes} min").format(target=target, minutes=f"{minutes:g}")
        raise ValueError(_("unknown action {action}").format(action=repr(action)))


def interlocks_fed_by(gw: OperatorTarget, alarm_id: str) -> list[str]:
    """The interlocks, not bypassed, that alarm ``alarm_id`` (f"{tag}.{condition}") is a voting input of.

    Shelving such an alarm (ISA-18.2 shelving) would silence the operator's annunciation of a condition
    that still trips the plant: the operator would see a trip without its cause. It is refused unless the
    interlock is bypassed first, which is its own audited action with its own reason (docs/design.md,
    Fail safe, Bypass)."""
    bypassed = {s["name"] for s in gw.interlocks.status() if s.get("state") == "bypassed"}
    out = []
    for il in gw.cfg.model.interlocks:
        if il.name not in bypassed and any(f"{i.tag}.{i.condition}" == alarm_id for i in il.inputs):
            out.append(il.name)
    return out


# --------------------------------------------------------------------------- status snapshot

async def snapshot(gw: StatusSource) -> dict[str, Any]:
    """The status snapshot (Gateway.snapshot: alarms, interlocks, outputs, devices with link state, tags,
    heartbeats, annunciators, hidden alarms, store and uplink). Store counters come from SQLite in a
    thread, bounded by STORE_STATS_TIMEOUT_S (a locked store reads {"error": ...} instead of delaying the
    answer)."""
    return await gw.snapshot(STORE_STATS_TIMEOUT_S)




def _word(value: Any) -> str:
    """A state word of the snapshot (alarm, interlock, link, quality, output, heartbeat, annunciator) in the
    reader's language (ISA-18.2 states as a DCS shows them: 未确认, 已确认, 搁置, 屏蔽, 停用 ...); a word
    not listed here is shown as it is."""
    words = {
        "normal": _("normal"), "unacked": _("unacked"), "acked": _("acked"), "rtn_unacked": _("rtn_unacked"),
        "shelved": _("shelved"), "suppressed": _("suppressed"), "out_of_service": _("out_of_service"),
        "tripped": _("tripped"), "tripped_cleared": _("tripped_cleared"), "bypassed": _("bypassed"),
        "bypass": _("bypass"), "shelve": _("shelve"),
        "process": _("process"), "fault": _("fault"), "up": _("up"), "down": _("down"),
        "good": _("good"), "bad": _("bad"), "uncertain": _("uncertain"),
        "ok": _("ok"), "failing": _("failing"), "held": _("held"), "starting": _("starting"),
        "off": _("off"), "alarm": _("alarm"), "beacon": _("beacon"), "horn": _("horn"),
        "disabled_indicator": _("disabled_indicator"), "count": _("count"), "toggle": _("toggle"),
    }
    return words.get(value, str(value)) if isinstance(value, str) else str(value)


def render_status(s: dict[str, Any]) -> str:
    """The status snapshot as text for a terminal (one section per part; alarms in priority order,
    level 2 before level 1, toxic before combustible, then time; '*' marks first-out). Below the list:
    the disabled gas points (屏蔽, GB 16808) and, per first-out group, the first alarm and the later alarms
    in time order (GB 16808-2008 5.3). After the interlocks: the open hidden-danger records (隐患), who and
    why and since when (gateway.safety.hidden_danger). In the reader's language (gateway.i18n): the English is the msgids."""
    out: list[str] = []
    w = out.append
    w(_("gateway {id}  up {uptime} s  config {config}  at {time}").format(
        id=s.get("gateway_id"), uptime=s.get("uptime_s"), config=str(s.get("config_hash"))[:12], time=s.get("time")))
    w("")
    w(_("DEVICES"))
    for name, d in (s.get("devices") or {}).items():
        err = f"  ({d['error']})" if d.get("error") and d.get("state") != "up" else ""
        w(_("  {name} {protocol} link {state} polls {polls} bad readings {bad}{error}").format(
            name=f"{name:<14}", protocol=f"{d.get('protocol', ''):<11}", state=f"{_word(d.get('state', '?')):<5}",
            polls=f"{d.get('polls', 0):<7}", bad=d.get("bad", 0), error=err))
    w("")
    w(_("TAGS"))
    for tag, t in (s.get("tags") or {}).items():
        reason = f"  {t['reason']}" if t.get("reason") else ""
        w(_("  {tag} {value} {unit} {quality} age {age} s{reason}").format(
            tag=f"{tag:<18}", value=f"{format_value(t.get('value'), t.get('precision')):>10}", unit=f"{t.get('unit') or '':<7}",
            quality=f"{_word(t.get('quality')):<9}", age=t.get("age_s"), reason=reason))
    alarms = s.get("alarms") or []
    shown = {tag: t.get("precision") for tag, t in (s.get("tags") or {}).items()}  # an alarm's tag's precision
    w("")
    w(_("ALARMS ({count} active; * first-out)").format(count=len(alarms)))
    for a in alarms:
        lvl = _(" L{level}").format(level=a["level"]) if a.get("level") else ""
        digits = shown.get(a.get("tag"))
        detail = _("value {value} limit {limit}").format(value=format_value(a.get("value"), digits),
                                                          limit=format_value(a.get("limit"), digits)) \
            if a.get("limit") is not None else (a.get("reason") or "")
        w(_("  {mark} {id} {state} P{priority}{level} {detail}  since {since}").format(
            mark="*" if a.get("first_out") else " ", id=f"{a['id']:<22}", state=f"{_word(a['state']):<11}",
            priority=a["priority"], level=f"{lvl:<3}", detail=detail, since=a.get("since") or "-"))
    hidden = s.get("alarms_hidden") or []
    if hidden:
        w(_("  hidden: {alarms}").format(alarms=", ".join(
            f"{a['id']} ({_word(a['state'])}"
            + (_(" until {time}").format(time=a["shelved_until"]) if a.get("shelved_until") else "") + ")"
            for a in hidden)))
    pd = s.get("points_disabled") or {}
    if pd.get("active"):  # GB 16808 屏蔽: disabled gas points are shown and counted
        w(_("  POINTS DISABLED (屏蔽): {count} gas point(s): {points}").format(
            count=pd.get("count"), points=", ".join(pd.get("points") or [])))
    for g in s.get("alarm_sequence") or []:  # GB 16808: the first alarm, then later alarms in time order
        w(_("  group {group}: first alarm, then later alarms in time order ({count} activation(s))").format(
            group=g["group"], count=g.get("count")))
        for i, a in enumerate(g.get("alarms") or [], 1):
            lvl = _(" L{level}").format(level=a["level"]) if a.get("level") else ""
            w(_("    {n}. {mark} {id} at {since}  {state} P{priority}{level}").format(
                n=f"{i:>3}", mark="*" if a.get("first_out") else " ", id=f"{a['id']:<22}", since=a["since"],
                state=f"{_word(a['state']):<11}", priority=a["priority"], level=lvl))
    w("")
    w(_("INTERLOCKS"))
    for il in s.get("interlocks") or []:
        v = il.get("votes") or {}
        votes = _("votes {process} alarm + {fault} fault, {needed} of {of}").format(
            process=v.get("process", 0), fault=v.get("fault", 0), needed=v.get("needed"), of=v.get("of")) \
            if v else _("not evaluated")
        cause = f" ({_word(il['cause'])})" if il.get("cause") else ""
        w(f"  {il['name']:<18} {_word(il['state'])}{cause:<10} {il['vote']}  {votes}"
          + (_("  DEGRADED") if il.get("degraded") else ""))
        b = il.get("bypass")
        if b:
            w(_("    BYPASSED by {user} until {until}: {reason}").format(user=b["user"], until=b["until"],
                                                                      reason=b["reason"]))
    hd = s.get("hidden_dangers") or []
    if hd:  # gateway.safety.hidden_danger: protections defeated longer than hidden_danger.after_minutes
        w("")
        w(_("HIDDEN DANGERS (隐患) {count} open, uploaded to the platform until closed").format(count=len(hd)))
        for h in hd:
            feeds = [*(h.get("feeds") or {}).get("gas_alarms", []), *(h.get("feeds") or {}).get("interlocks", [])]
            w(_("  {kind} {target} by {user} since {since}: {reason}").format(
                kind=f"{_word(h.get('kind'))}", target=h.get("target"), user=h.get("by") or "-",
                since=h.get("since"), reason=h.get("reason") or "-"))
            w(_("    defeats {feeds}; until {until}; record {id}").format(
                feeds=", ".join(feeds) or "-", until=h.get("until") or "-", id=h.get("id")))
    w("")
    w(_("OUTPUTS"))
    for o in s.get("outputs") or []:
        state = _("confirmed") if o.get("confirmed") else (_("FAULT") if o.get("fault") else _("unconfirmed"))
        err = f"  {o['last_error']}" if o.get("last_error") and not o.get("confirmed") else ""
        w(_("  {tag} commanded {value} {state}{error}").format(
            tag=f"{o['tag']:<18}", value=f"{o.get('commanded')!s:<6}", state=state, error=err))
    for h in s.get("heartbeats") or []:
        w(_("  heartbeat {device} {address} ({mode} every {interval} ms): value {value}, {state}").format(
            device=h["device"], address=h["address"], mode=_word(h["mode"]), interval=h["interval_ms"],
            value=h["value"], state=_word(h["state"]))
          + (f" ({h['last_error']})" if h.get("last_error") else "")
          + (f" ({h['held_reason']})" if h.get("held_reason") else ""))
    for an in s.get("annunciators") or []:
        w(f"  {_word(an['kind'])} {an['output']}: {_word(an['mode'])}"
          + (_(", silenced {silenced}").format(silenced=an["silenced"]) if an.get("silenced") else "")
          + ("" if an.get("confirmed", True) else _(", UNCONFIRMED ({error})").format(error=an.get("last_error"))))
    st = s.get("store") or {}
    w("")
    if "error" in st:
        w(_("STORE  {error}").format(error=st["error"]))
    else:
        w(_("STORE  queue {queue}  readings {readings}  unsent {unsent}  oldest unsent {oldest}  dropped {dropped}")
          .format(queue=st.get("queue_depth"), readings=st.get("readings_total"), unsent=st.get("readings_unsent"),
                  oldest=st.get("oldest_unsent_ts") or "-", dropped=st.get("dropped"))
          + (_("  WRITER ERROR {error}").format(error=st["writer_error"]) if st.get("writer_error") else ""))
    rec = s.get("record_path") or {}
    if rec.get("store"):
        w(_("STORE  FAULT {fault}").format(fault=rec["store"]))
    up = s.get("uplink")
    if rec.get("uplink"):
        w(_("UPLINK FAULT {fault}").format(fault=rec["uplink"]))
    if up is None:
        w(_("UPLINK none configured"))
    else:
        state = _("ok") if not up.get("consecutive_failures") else \
            _("failing x{count}").format(count=up["consecutive_failures"])
        w(_("UPLINK {state}  sent {sent}  last acked seq {seq}").format(
            state=state, sent=up.get("sent"), seq=st.get("last_acked_seq"))
          + (_("  last error {error}").format(error=up["last_error"])
             if up.get("last_error") and up.get("consecutive_failures") else ""))
    return "\n".join(out)


# --------------------------------------------------------------------------- client

def request(path: str | os.PathLike[str], req: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the daemon at ``path`` and return its answer (a dict with "ok").

    Raises ControlError: exit_code 2 when the daemon is not running (socket missing or nobody
    listening) or does not answer; exit_code 1 when the socket's mode/group does not let us in."""
    p = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            with _sun_path(p) as name:
                sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(_("the gateway is not running (no one listens on {path})").format(path=p),
                               EXIT_NOT_RUNNING) from None
        except PermissionError:
            raise ControlError(_("not permitted to use {path} (the socket's mode and group decide who may act; "
                                 "ask to be added to its group)").format(path=p), EXIT_REFUSED) from None
        except OSError as exc:
            raise ControlError(_("cannot reach the gateway at {path}: {error}").format(
                path=p, error=exc.strerror or exc), EXIT_NOT_RUNNING) from None
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (socket.timeout, TimeoutError):
            raise ControlError(_("the gateway did not answer within {seconds} s ({path})").format(
                seconds=f"{timeout_s:g}", path=p), EXIT_NOT_RUNNING) from None
        except OSError as exc:
            raise ControlError(_("connection to the gateway lost: {error}").format(error=exc.strerror or exc),
                               EXIT_NOT_RUNNING) from None
    finally:
        sock.close()
    try:
        ans = json.loads(buf)
    except ValueError:
        raise ControlError(_("the gateway closed the connection without an answer ({path})").format(path=p),
                           EXIT_NOT_RUNNING) from None
    if not isinstance(ans, dict):
        raise ControlError(_("malformed answer from the gateway"), EXIT_NOT_RUNNING)
    return ans
