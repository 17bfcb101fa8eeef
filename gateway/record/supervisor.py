"""Supervision of the record path inside the process: the store writer and the uploader.

docs/design.md, "Two paths, never coupled": the systemd watchdog vouches for the safety path only
(gateway.runtime.health.SAFETY_PATH: the alarm tick and the poll loops). A record path that stalls (an fsync
that hangs on a failing SD card, a full or read-only disk, a database another process holds, an
uploader bug) must never restart the process that runs the interlocks: after five starts in ten
minutes systemd would give up and the plant would have no layer at all. It is supervised here
instead, every :data:`SUPERVISE_EVERY_S`, on the event loop (every call that touches the disk runs
in a thread):

* **store not open** (``open()`` failed at start or after a corruption): retried with backoff
  (:data:`OPEN_RETRY_S` doubling to :data:`OPEN_RETRY_MAX_S`); meanwhile readings and events wait in
  the store's bounded queues (what overflows becomes a gap row) and are noted in the uncommitted
  journal (gateway.record.journal), so a power loss in between still leaves a gap record. Once open,
  the uploader starts and a ``store_opened`` event says after how long.
* **store corrupt** (``Store.corrupt``, SQLITE_CORRUPT / SQLITE_NOTADB while running): the file is set
  aside and a fresh store carries the chain on (``Store.recover_corrupt``, in a thread).
* **store writer not committing**: ``writer_error`` (disk full, read-only, I/O error, locked), or the
  stall check (store_writer_check: the thread died, or nothing committed while records
  wait); a dead writer thread is started again (``Store.restart_writer``).
* **store file deleted or replaced** while open (``Store.file_problem``): alarmed (no repair in process).
* **store full** at its cap with records younger than the retention floor (``Store.full_reason``).
* **uploader**: its task ended (an exception escaped) - started again after a backoff; no loop
  iteration for its limit (uploader_check) - cancelled and started again after
  :data:`UPLINK_HUNG_RESTARTS_AFTER` limits; the receiver refuses the gateway (401/403); the receiver
  refuses a batch's content without a rejection signed by ``uplink.receiver_key`` (the batch is held and
  retried, never set aside: ``Forwarder.held``); the receiver's chain disagrees (409: e.g. a fresh store
  or a restored old copy sends seqs the receiver holds with other bytes; ``Forwarder.chain_conflict``).

Each condition raises the system alarm ``system.STORE`` (记录存储故障) or ``system.UPLINK`` (数据上传故障)
with a reason that stays the same while the condition lasts (a changed reason is a new transition, ISA-18.2),
clears it when the condition ends, and shows in :meth:`RecordSupervisor.problems` (the STATUS line, the
status file and ``hazard-gateway status``). Details that change (seconds, counts) go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol

from gateway.model import rfc3339
from gateway.safety.alarms import SYSTEM_TAG

log = logging.getLogger("hazard_gateway.record")

#: system alarm kinds (tag "system": system.STORE, system.UPLINK)
STORE = "STORE"
UPLINK = "UPLINK"
#: a record-path fault is a fault of the record, not of the process (priority 3 of 1..4, as system.CLOCK)
RECORD_ALARM_PRIORITY = 3
STORE_TEXT = "记录存储故障"
UPLINK_TEXT = "数据上传故障"
STORE_OK_TEXT = "记录存储已恢复 / recording resumed"
UPLINK_OK_TEXT = "数据上传已恢复 / uploads resumed"

SUPERVISE_EVERY_S = 1.0
#: a condition is alarmed once it has lasted this long (a lock held for a second by a backup is no alarm)
ALARM_GRACE_S = 3.0
#: ... except these, alarmed at once: a corruption is recovered within one pass, and the operator must
#: still see (and acknowledge) that the buffer was damaged
CORRUPT_REASON = "buffer database corrupt / 缓存数据库损坏"
IMMEDIATE_REASONS = frozenset({CORRUPT_REASON})
OPEN_RETRY_S = 2.0
OPEN_RETRY_MAX_S = 60.0
UPLINK_RESTART_S = 5.0
#: a hung uploader loop is cancelled and started again after this many of its limits
UPLINK_HUNG_RESTARTS_AFTER = 2
#: the store writer may commit nothing for this long while records wait before it counts as hung
STORE_STALL_FLOOR_S = 10.0


class SupervisedGateway(Protocol):
    """What the supervisor watches and acts on (gateway.runtime.gateway.Gateway implements it): the store, the
    forwarder and its task, the alarm engine for system.STORE / system.UPLINK, and the record."""

    store: Any                          # gateway.record.store.Store
    forwarder: Any                      # gateway.record.uplink.Forwarder, or None without an uplink
    uploader_task: asyncio.Task | None

    @property
    def alarms(self) -> Any: ...        # gateway.safety.alarms.AlarmEngine of the running plant

    def log_event(self, rec: dict[str, Any]) -> None: ...

    def start_uploader(self) -> None: ...

    async def on_store_opened(self, waited_s: float | None) -> None: ...


def store_writer_check(store: Any, stall_s: float) -> Callable[[float], str | None]:
    """A check of the store's writer thread (gateway.record.store.Store.progress): called with
    time.monotonic(), returns a one-line problem or None.

    Not making progress: the writer thread has died, or records have been queued and not one
    was committed for ``stall_s`` seconds while the writer reports no error. A writer that
    reports an error (``writer_error``: a locked database, a full disk) is retrying and is
    alive: a restart would not cure it, and it would interrupt the safety path, so it is left
    to the STATUS line and the logs instead.
    """
    state = {"done": None, "since": None}

    def check(now: float) -> str | None:
        alive, queued, done = store.progress()
        if alive is None:
            return None  # not opened yet, or closed at shutdown
        if not alive:
            return "store writer thread has died"
        if done != state["done"] or all(d >= q for d, q in zip(done, queued)):
            state["done"], state["since"] = done, now
            return None
        if store.writer_error:
            state["since"] = now
            return None
        if now - state["since"] > stall_s:
            return f"nothing committed for {now - state['since']:.1f} s with {sum(queued) - sum(done)} records queued"
        return None

    return check


def uploader_check(gw: SupervisedGateway, floor_s: float) -> Callable[[float], str | None]:
    """A check of the uploader of a gateway (``gw.forwarder``, ``gw.uploader_task``; SupervisedGateway):
    called with time.monotonic(), returns a one-line problem or None.

    Read through ``gw`` on every call, so a forwarder rebuilt by a SIGHUP reload is the one
    watched. Not making progress: the task has ended while the forwarder was not stopped (an
    exception escaped run()), or ``last_beat_mono`` (set at the start of every loop iteration) is
    older than ``floor_s`` + the forwarder's own worst iteration (Forwarder.max_iteration_s).
    No uplink configured, a stopped forwarder, or one not yet running: nothing to report.
    """
    def check(now: float) -> str | None:
        fw = getattr(gw, "forwarder", None)
        task = getattr(gw, "uploader_task", None)
        if fw is None or task is None or getattr(fw, "stopped", False):
            return None
        if task.done():
            exc = None if task.cancelled() else task.exception()
            return f"uploader task has ended ({type(exc).__name__ + ': ' + str(exc) if exc else 'returned'})"
        beat = getattr(fw, "last_beat_mono", None)
        if beat is None:
            return None   # created, its first iteration not begun yet
        limit = floor_s + fw.max_iteration_s()
        if now - beat > limit:
            return f"no loop iteration for {now - beat:.1f} s (limit {limit:g} s)"
        return None

    return check


class RecordSupervisor:
    """Watches ``gw`` (SupervisedGateway; read through on every pass, so the parts a SIGHUP
    reload rebuilt are the ones watched) and acts as the module docstring says.

    ``problems()``: {"store": one line or None, "uplink": one line or None}, the detail of the last pass.
    """

    def __init__(self, gw: SupervisedGateway) -> None:
        self.gw = gw
        self._store_problem: str | None = None
        self._uplink_problem: str | None = None
        self._open_error: str | None = None
        self._next_open_mono = 0.0
        self._open_backoff = OPEN_RETRY_S
        self._open_failed_since: float | None = None
        self._uplink_restart_mono: float | None = None
        self._recovering = False
        self._stall = store_writer_check(gw.store, self._stall_s())
        self._uplink = uploader_check(gw, STORE_STALL_FLOOR_S)
        self._logged: dict[str, str | None] = {}
        self._since: dict[str, tuple[str | None, float]] = {}

    def _stall_s(self) -> float:
        return max(STORE_STALL_FLOOR_S, 4 * self.gw.store.commit_interval_s)

    def problems(self) -> dict[str, str | None]:
        return {"store": self._store_problem, "uplink": self._uplink_problem}

    # ---- the store

    def note_open_failed(self, exc: BaseException) -> None:
        """Gateway.run: the store could not be opened at start; the first retry follows after OPEN_RETRY_S."""
        self._open_error = str(exc)
        self._open_failed_since = time.monotonic()
        self._next_open_mono = self._open_failed_since + self._open_backoff

    async def _store_pass(self, now: float) -> tuple[str | None, str | None]:
        """(stable alarm reason, detail) of the store, acting where it can."""
        st = self.gw.store
        if not st.is_open:
            if now >= self._next_open_mono:
                try:
                    await asyncio.to_thread(st.open)
                except OSError as exc:   # StoreError, or the directory cannot be made
                    self._open_error = str(exc)
                    self._open_backoff = min(OPEN_RETRY_MAX_S, self._open_backoff * 2)
                    self._next_open_mono = now + self._open_backoff
                else:
                    await self.gw.on_store_opened(None if self._open_failed_since is None
                                                  else now - self._open_failed_since)
                    self._open_error, self._open_failed_since, self._open_backoff = None, None, OPEN_RETRY_S
                    self._stall = store_writer_check(st, self._stall_s())
                    return None, None
            await asyncio.to_thread(st.note_waiting, "the store cannot be opened")
            return ("cannot open the buffer database / 缓存数据库无法打开",
                    f"{self._open_error}; retry in {max(0.0, self._next_open_mono - now):.0f} s")
        corrupt = st.corrupt
        if corrupt:
            if not self._recovering:
                self._recovering = True
                try:
                    summary = await asyncio.to_thread(st.recover_corrupt)
                    log.error("store: corrupt while running (%s); set aside, a fresh store carries the chain on: %s",
                              corrupt, summary)
                    self._stall = store_writer_check(st, self._stall_s())
                except Exception as exc:   # noqa: BLE001 - recovery failed: alarm stays, next pass retries
                    log.error("store: recovery from corruption failed: %s", exc)
                finally:
                    self._recovering = False
            return CORRUPT_REASON, str(corrupt)
        gone = st.file_problem()
        if gone:
            return ("buffer database file deleted or replaced / 缓存数据库文件被删除或替换",
                    f"{gone}; records go on into the open file and are uploaded; what is not uploaded when "
                    f"the gateway stops is lost (a gap row at the next start)")
        stall = self._stall(now)
        if stall:
            st.restart_writer()   # a no-op unless the writer thread has died
            return "store writer stalled / 写入停滞", stall
        err = st.writer_error
        if err:
            return "store cannot commit / 无法写入", err
        full = st.full_reason
        if full:
            return "store full / 存储已满", full
        return None, None

    # ---- the uploader

    def _uplink_pass(self, now: float) -> tuple[str | None, str | None]:
        gw = self.gw
        fw, task = gw.forwarder, gw.uploader_task
        if fw is None or fw.stopped or not gw.store.is_open:
            return None, None
        if task is None:
            gw.start_uploader()
            return None, None
        problem = self._uplink(now)
        if problem and task.done():
            if self._uplink_restart_mono is None:
                self._uplink_restart_mono = now + UPLINK_RESTART_S
            elif now >= self._uplink_restart_mono:
                log.error("uplink: restarting the uploader (%s)", problem)
                self._uplink_restart_mono = None
                gw.uploader_task = None
                gw.start_uploader()
            return "uploader stopped, restarting / 上传程序已停止", problem
        if problem:
            beat = fw.last_beat_mono
            limit = STORE_STALL_FLOOR_S + fw.max_iteration_s()
            if beat is not None and now - beat > UPLINK_HUNG_RESTARTS_AFTER * limit:
                log.error("uplink: uploader hung (%s); cancelling and restarting it", problem)
                task.cancel()
                gw.uploader_task = None
                fw.last_beat_mono = now
                gw.start_uploader()
            return "uploader hung / 上传程序无响应", problem
        self._uplink_restart_mono = None
        if fw.refused:
            return "receiver refuses this gateway / 平台拒绝本网关", fw.last_error
        if fw.chain_conflict:
            return "receiver's chain disagrees (409), uploads held / 平台数据链冲突, 暂停上传", fw.chain_conflict
        if fw.held:
            return "receiver refuses a batch, held without a signed rejection / 平台拒收数据, 已保留重试", fw.held
        return None, None

    # ---- the loop

    def _alarm(self, kind: str, text: str, reason: str | None, detail: str | None, ok_text: str,
               now: float) -> None:
        seen, t0 = self._since.get(kind, (None, now))
        if seen != reason:
            self._since[kind] = (reason, now)
            t0 = now
        if reason is not None and reason not in IMMEDIATE_REASONS and now - t0 < ALARM_GRACE_S:
            return
        line = None if reason is None else f"{reason}: {detail}" if detail else reason
        if self._logged.get(kind) != reason:
            if reason is None:
                if self._logged.get(kind) is not None:
                    log.warning("record path: %s ok again", kind.lower())
            else:
                log.error("record path: %s: %s", kind.lower(), line)
            self._logged[kind] = reason
        for e in self.gw.alarms.set_system_alarm(SYSTEM_TAG, kind, reason is not None,
                                                 None if reason is None else f"{text} / {reason}",
                                                 now_mono=now, clear_reason=ok_text,
                                                 priority=RECORD_ALARM_PRIORITY):
            self.gw.log_event(e.to_record())

    async def step(self) -> None:
        """One supervision pass (the loop calls it every SUPERVISE_EVERY_S; tests may call it directly)."""
        now = time.monotonic()
        reason, detail = await self._store_pass(now)
        self._store_problem = None if reason is None else f"{reason}: {detail}" if detail else reason
        self._alarm(STORE, STORE_TEXT, reason, detail, STORE_OK_TEXT, now)
        reason, detail = self._uplink_pass(time.monotonic())
        self._uplink_problem = None if reason is None else f"{reason}: {detail}" if detail else reason
        self._alarm(UPLINK, UPLINK_TEXT, reason, detail, UPLINK_OK_TEXT, now)

    async def run(self, stopping: Any) -> None:
        """Supervise until ``stopping()`` is true. Never raises (a failing pass is logged and retried)."""
        while not stopping():
            try:
                await self.step()
            except Exception:   # noqa: BLE001 - the supervisor must outlive its own bugs
                log.exception("record path supervisor: pass failed")
            await asyncio.sleep(SUPERVISE_EVERY_S)


def opened_event(waited_s: float | None) -> dict[str, Any]:
    """The record of the store opening after it could not be opened at start (waited_s seconds)."""
    return {"type": "store", "event": "store_opened", "waited_s": None if waited_s is None else round(waited_s, 1),
            "ts": rfc3339(time.time())}
