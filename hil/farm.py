"""The simulated tank farm: tank PLC (Modbus TCP) + gas detectors (Modbus RTU) + OPC UA plant.

One object, :class:`TankFarm`, starts three real protocol peers on loopback:

* ``modbus_tcp``: :class:`hil.tank_plc.TankPlc`, unit id 1 (tanks T101/T102,
  valves XV101/XV102/XV100, beacon, heartbeat register 100);
* ``serial``: :class:`hil.gas_detectors.GasBus`, slaves 1..3 (PT495-like
  %LEL detectors) on a paced pty serial line, 19200 8N1 by default; the
  gateway-side tty is symlinked as ``WORKDIR/tty-gas``;
* ``opcua``: :class:`hil.opcua_plant.OpcUaPlant` (H2S detector AT-301,
  ESD valve XV-100 position).

The ESD valve XV-100 is one valve seen through two protocols: its command is
PLC coil 2 (1 = energised = open; de-energise-to-trip). The farm strokes the
OPC UA ``ESD.XV100.Position`` towards 100 % while coil 2 is 1 and towards 0 %
while it is 0, at 100 %/``esd_stroke_s`` (1 s full stroke). A client writing
``ESD.XV100.TripCommand`` = True on the OPC UA side de-energises coil 2 (and
False re-energises it), so either path trips the same valve.

Scenario steps (:mod:`hil.scenario`) call the farm's methods by name:
set_inflow, set_outflow, set_level, set_coil, set_lel, ramp_lel, set_fault,
set_h2s, ramp_h2s, watch, log, link_down, clock_step (the OPC UA plant's
clock); power_loss acts on the gateway, so it calls the hook its runner
sets (``power_hook(down_s)``, async; gateway/ops/demo.py sets it).

Every event (threshold crossings, client coil writes, detector register
writes, scenario steps, ESD strokes) is kept in ``events`` and, when an
events path is given, appended as one JSON line to it
(``farm-events.jsonl``): {"t": UTC epoch s, "ts": RFC 3339, "kind": ..., ...}.

Standalone::

    python -m hil.farm --workdir DIR [--scenario demo] [--exit-after-scenario]

writes DIR/farm.json ({"modbus_tcp": [host, port], "serial": tty, "opcua":
endpoint, "pid": ...}) once every peer listens, appends events to
DIR/farm-events.jsonl, and stops cleanly (removing farm.json and the tty
symlinks) on SIGTERM or SIGINT. A bad scenario file or an unusable work
directory is reported as one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway.model import rfc3339
from hil.gas_detectors import GasBus
from hil.opcua_plant import XV100_TRIP, OpcUaPlant
from hil.scenario import CrossingWatch, Scenario, ScenarioError, load_scenario, run_scenario as _run_steps
from hil.tank_plc import TankPlc

log = logging.getLogger(__name__)

TICK_S = 0.1


class TankFarm:
    """The whole HIL rig. host: loopback interface for the TCP peers; ports 0 = pick free ones.

    gas_baudrate: RTU line speed (8N1). esd_stroke_s: full-stroke time of XV-100, s.
    Attributes after start(): ``plc``, ``gas``, ``plant``, ``endpoints``.
    """

    def __init__(self, host: str = "127.0.0.1", *, plc_port: int = 0, opcua_port: int = 0,
                 gas_baudrate: int = 19200, esd_stroke_s: float = 1.0, seed: int | None = None) -> None:
        self.host = host
        self.plc = TankPlc(host, plc_port, seed=seed)
        self.gas: GasBus | None = None
        self.plant = OpcUaPlant(host, opcua_port)
        self.gas_baudrate = gas_baudrate
        self.esd_stroke_s = esd_stroke_s
        self.events: list[dict] = []
        self.events_path: Path | None = None
        self.endpoints: dict[str, Any] = {}
        self.h2s_mg_m3 = 0.0
        self.esd_position_pct = 100.0
        self._h2s_ramp: tuple[float, float, float, float] | None = None
        self._h2s_written: float | None = None
        self.watches = CrossingWatch("opcua_plant", lambda: self._emit)
        self._events_file = None
        self._task: asyncio.Task | None = None
        self._scenario_task: asyncio.Task | None = None
        self._last_trip_cmd: bool | None = None
        self._background: set[asyncio.Task] = set()  # link_down / power_loss tasks
        #: set by the gateway's runner (gateway/ops/demo.py): async power_hook(down_s)
        self.power_hook: Any = None
        self.clock_offset_s = 0.0  # OPC UA plant clock minus true time (clock_step)

    # ------------------------------------------------------------------ life cycle
    async def start(self, workdir: str | os.PathLike, events_path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Start all three peers; returns {"modbus_tcp": (host, port), "serial": tty, "opcua": endpoint}.

        workdir: directory for the ``tty-gas`` symlink (created if missing).
        events_path: optional JSON-lines file to append events to.
        Raises OSError when a port, a pty or the work directory is unusable (everything started is stopped again).
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if events_path is not None:
            self.events_path = Path(events_path)
            self._events_file = open(self.events_path, "a", encoding="utf-8")
        self.gas = GasBus(self.gas_baudrate, link_dir=str(workdir), gateway_link_name="tty-gas",
                          device_link_name="tty-gas-dev")
        self.plc.on_event = self._emit
        self.gas.on_event = self._emit
        try:
            await self.plc.start()
            serial_path = await self.gas.start()
            await self.plant.start()
            await self.plant.set_esd_position(self.esd_position_pct)
            await self.plant.set_h2s(self.h2s_mg_m3)
            self._h2s_written = self.h2s_mg_m3
        except BaseException:
            await self.stop()
            raise
        self.watches.update("H2S", self.h2s_mg_m3)
        self.endpoints = {
            "modbus_tcp": (self.host, self.plc.port),
            "serial": serial_path,
            "serial_link": str(workdir / "tty-gas"),
            "serial_baudrate": self.gas_baudrate,
            "opcua": self.plant.endpoint,
        }
        self._task = asyncio.create_task(self._coupling(), name="farm-coupling")
        self._emit({"t": time.time(), "kind": "farm_started", "endpoints": self.endpoints})
        return self.endpoints

    async def stop(self) -> None:
        """Stop scenario, coupling task and all peers; close the events file. Idempotent."""
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for attr in ("_scenario_task", "_task"):
            task = getattr(self, attr)
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                setattr(self, attr, None)
        with contextlib.suppress(Exception):
            await self.plant.stop()
        if self.gas:
            with contextlib.suppress(Exception):
                await self.gas.stop()
        with contextlib.suppress(Exception):
            await self.plc.stop()
        if self._events_file:
            self._emit({"t": time.time(), "kind": "farm_stopped"})
            self._events_file.close()
            self._events_file = None

    # ------------------------------------------------------------------ scenarios
    async def run_scenario(self, scenario: Scenario | str | os.PathLike, time_scale: float = 1.0) -> None:
        """Run a scenario (object, name in hil/scenarios/, or path) to its last step.

        Raises ScenarioError for a bad file, KeyError/ValueError from a step that cannot apply.
        """
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario)
        self._emit({"t": time.time(), "kind": "scenario_start", "scenario": scenario.name, "source": scenario.source})
        await _run_steps(scenario, self, on_step=self._emit, time_scale=time_scale)
        self._emit({"t": time.time(), "kind": "scenario_end", "scenario": scenario.name})

    # scenario actions -------------------------------------------------------------
    def set_inflow(self, tank: str, m_per_min: float) -> None:
        self.plc.set_inflow(tank, m_per_min)

    def set_outflow(self, tank: str, m_per_min: float) -> None:
        self.plc.set_outflow(tank, m_per_min)

    def set_level(self, tank: str, m: float) -> None:
        self.plc.set_level(tank, m)

    def set_coil(self, coil: str, value: int | bool) -> None:
        self.plc.set_coil(coil, bool(value))

    def set_lel(self, slave: int, pct: float) -> None:
        self._gas().set_lel(slave, pct)

    def ramp_lel(self, slaves: list[int], to_pct: float, over_s: float) -> None:
        self._gas().ramp_lel(slaves, to_pct, over_s)

    def set_fault(self, slave: int, fault: bool) -> None:
        self._gas().set_fault(slave, fault)

    async def set_h2s(self, mg_m3: float) -> None:
        """Set AT-301 H2S in mg/m3 (cancels a ramp) and publish it on the OPC UA server now."""
        if mg_m3 < 0:
            raise ValueError(f"H2S must be >= 0 mg/m3, got {mg_m3}")
        self._h2s_ramp = None
        self.h2s_mg_m3 = float(mg_m3)
        await self._publish_h2s()

    def ramp_h2s(self, to_mg_m3: float, over_s: float) -> None:
        """Move H2S linearly from its current value to ``to_mg_m3`` over ``over_s`` s."""
        if to_mg_m3 < 0 or over_s <= 0:
            raise ValueError(f"ramp_h2s: need to_mg_m3 >= 0 and over_s > 0, got {to_mg_m3}, {over_s}")
        self._h2s_ramp = (time.monotonic(), self.h2s_mg_m3, float(to_mg_m3), float(over_s))

    def watch(self, tag: str, threshold: float, direction: str = "up") -> None:
        """Record the first crossing of ``threshold`` by ``tag``: T10x.level/temperature/pressure, LEL.1-3, H2S."""
        self._owner(tag).watch(tag, threshold, direction)

    def first_crossing(self, tag: str, threshold: float) -> float | None:
        """UTC epoch seconds of the first crossing of a watched threshold, or None."""
        return self._owner(tag).first_crossing(tag, threshold)

    def log(self, message: str) -> None:
        self._emit({"t": time.time(), "kind": "log", "message": message})
        log.info("%s", message)

    def link_down(self, link: str, for_s: float) -> None:
        """The link to one peer fails for ``for_s`` s, then comes back; returns at once (a background task).

        modbus_tcp: the PLC's server closes (connections dropped, connects refused) and listens again on the
        same port; the tank physics is integrated over the outage. opcua: the plant server stops and starts
        again on the same port. serial: all three detectors stop answering (a cut RS-485 pair).
        Raises ValueError for another link name.
        """
        if link not in ("modbus_tcp", "serial", "opcua"):
            raise ValueError(f"link_down: link must be modbus_tcp, serial or opcua, got {link!r}")
        self._spawn(self._link_down(link, float(for_s)), f"link_down:{link}")

    async def _link_down(self, link: str, for_s: float) -> None:
        self._emit({"t": time.time(), "kind": "link_down", "link": link, "for_s": for_s})
        if link == "serial":
            for s in (1, 2, 3):
                self._gas().set_silent(s, True)
            await asyncio.sleep(for_s)
            for s in (1, 2, 3):
                self._gas().set_silent(s, False)
        elif link == "modbus_tcp":
            port, t_down = self.plc.port, time.monotonic()
            await self.plc.stop()
            await asyncio.sleep(for_s)
            self.plc._req_port = port  # same port as before (it was 0 = "any" at the first start)
            await self.plc.start()
            self.plc._last_tick = t_down  # the next physics tick integrates the outage: the plant kept filling
        else:
            await self.plant.stop()
            await asyncio.sleep(for_s)
            await self.plant.start()
            await self.plant.set_esd_position(self.esd_position_pct)
            await self.plant.set_h2s(self.h2s_mg_m3)
            self._h2s_written = self.h2s_mg_m3
        self._emit({"t": time.time(), "kind": "link_up", "link": link})

    def power_loss(self, down_s: float) -> None:
        """SIGKILL the gateway and restart it after ``down_s`` s, through ``power_hook`` (set by the demo).

        Raises RuntimeError when no runner set the hook (the farm alone cannot reach the gateway)."""
        if self.power_hook is None:
            raise RuntimeError("power_loss needs the gateway's runner: use `hazard-gateway demo --scenario ...`")
        self._emit({"t": time.time(), "kind": "power_loss", "down_s": down_s})
        self._spawn(self.power_hook(float(down_s)), "power_loss")

    async def clock_step(self, offset_s: float) -> None:
        """Step the OPC UA plant's clock by ``offset_s`` s (cumulative): its SourceTimestamps (H2S) jump, as
        when a device's clock is set wrong or stepped by NTP; the value is republished at once."""
        self.clock_offset_s += float(offset_s)
        self._emit({"t": time.time(), "kind": "clock_step", "offset_s": offset_s, "total_s": self.clock_offset_s})
        self._h2s_written = None
        await self._publish_h2s()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                self._emit({"t": time.time(), "kind": "farm_error", "error": f"{name}: {type(exc).__name__}: {exc}"})
                log.warning("%s: %s", name, exc)

        task.add_done_callback(done)

    # ------------------------------------------------------------------ internals
    def _gas(self) -> GasBus:
        if self.gas is None:
            raise RuntimeError("TankFarm not started")
        return self.gas

    def _owner(self, tag: str):
        if tag == "H2S":
            return self.watches
        if tag.startswith("LEL."):
            return self._gas()
        if tag.startswith(("T101.", "T102.")):
            return self.plc
        raise KeyError(f"unknown tag {tag!r}; known: T101.level|temperature|pressure, T102.*, LEL.1-3, H2S")

    def _emit(self, event: dict) -> None:
        event = dict(event)
        event.setdefault("ts", rfc3339(event.get("t", time.time())))
        self.events.append(event)
        if self._events_file:
            try:
                self._events_file.write(json.dumps(event, default=str) + "\n")
                self._events_file.flush()
            except OSError as exc:
                log.warning("farm events file %s: %s", self.events_path, exc)

    async def _publish_h2s(self) -> None:
        self.watches.update("H2S", self.h2s_mg_m3)
        if self._h2s_written != self.h2s_mg_m3:
            await self.plant.set_h2s(self.h2s_mg_m3, source_ts=time.time() + self.clock_offset_s)
            self._h2s_written = self.h2s_mg_m3

    async def _coupling(self) -> None:
        """Every 100 ms: H2S ramp, XV-100 stroke following coil 2, OPC UA TripCommand -> coil 2."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._couple_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the rig alive; the event log shows why
                self._emit({"t": time.time(), "kind": "farm_error", "error": f"{type(exc).__name__}: {exc}"})
                log.warning("farm coupling: %s", exc)

    async def _couple_once(self) -> None:
        now = time.monotonic()
        if self._h2s_ramp:
            t0, frm, to, over = self._h2s_ramp
            frac = min(1.0, (now - t0) / over)
            self.h2s_mg_m3 = frm + (to - frm) * frac
            if frac >= 1.0:
                self._h2s_ramp = None
            await self._publish_h2s()
        trip = bool(await self.plant.read(XV100_TRIP))
        if self._last_trip_cmd is not None and trip != self._last_trip_cmd:
            self.plc.set_coil("XV100", not trip)
            self._emit({"t": time.time(), "kind": "opcua_trip_command", "value": trip})
        self._last_trip_cmd = trip
        target = 100.0 if self.plc.coil("XV100") else 0.0
        if self.esd_position_pct != target:
            step = 100.0 * TICK_S / self.esd_stroke_s if self.esd_stroke_s > 0 else 100.0
            pos = self.esd_position_pct
            pos = min(target, pos + step) if target > pos else max(target, pos - step)
            self.esd_position_pct = pos
            await self.plant.set_esd_position(pos)
            if pos == target:
                self._emit({"t": time.time(), "kind": "esd_position", "pct": pos})


# ---------------------------------------------------------------------------- CLI
def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


async def _main_async(args: argparse.Namespace, scenario: Scenario | None) -> int:
    workdir = Path(args.workdir)
    farm_json = workdir / "farm.json"
    farm_json.unlink(missing_ok=True)  # never leave a stale endpoint file for a waiting script
    farm = TankFarm(args.host, plc_port=args.modbus_port, opcua_port=args.opcua_port, gas_baudrate=args.baud)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters: list[asyncio.Task] = []
    try:
        endpoints = await farm.start(workdir, events_path=workdir / "farm-events.jsonl")
    except OSError as exc:
        print(f"hil.farm: cannot start the farm: {exc}", file=sys.stderr)
        await farm.stop()
        return 1
    try:
        _write_json_atomic(farm_json, {**endpoints, "pid": os.getpid(), "started": rfc3339(time.time())})
        print(f"hil.farm: ready: modbus_tcp {endpoints['modbus_tcp'][0]}:{endpoints['modbus_tcp'][1]}, "
              f"serial {endpoints['serial_link']} -> {endpoints['serial']}, opcua {endpoints['opcua']}", flush=True)
        waiters.append(asyncio.create_task(stop.wait()))
        if scenario is not None:
            farm._scenario_task = asyncio.create_task(farm.run_scenario(scenario))
            if args.exit_after_scenario:
                waiters.append(farm._scenario_task)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if farm._scenario_task and farm._scenario_task.done() and not farm._scenario_task.cancelled():
            exc = farm._scenario_task.exception()
            if exc:
                print(f"hil.farm: scenario {scenario.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
        return 0
    finally:
        for w in waiters:
            w.cancel()
        await farm.stop()
        farm_json.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.farm --workdir DIR [--scenario NAME|PATH] [--exit-after-scenario]``."""
    ap = argparse.ArgumentParser(prog="python -m hil.farm", description="Run the simulated tank farm (HIL rig).")
    ap.add_argument("--workdir", required=True, help="directory for farm.json, farm-events.jsonl and the tty-gas link")
    ap.add_argument("--scenario", help="scenario name in hil/scenarios/ (demo, overfill, gas_leak) or a YAML path")
    ap.add_argument("--exit-after-scenario", action="store_true", help="stop when the scenario's last step has run")
    ap.add_argument("--host", default="127.0.0.1", help="interface for Modbus TCP and OPC UA (default 127.0.0.1)")
    ap.add_argument("--modbus-port", type=int, default=0, help="Modbus TCP port (default 0 = any free port)")
    ap.add_argument("--opcua-port", type=int, default=0, help="OPC UA port (default 0 = any free port)")
    ap.add_argument("--baud", type=int, default=19200, help="RTU line speed, 8N1 (default 19200)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # NoSecurity warnings are expected on a test rig
    scenario = None
    if args.scenario:
        try:
            scenario = load_scenario(args.scenario)
        except ScenarioError as exc:
            print(f"hil.farm: {exc}", file=sys.stderr)
            return 2
    try:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"hil.farm: work directory {args.workdir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main_async(args, scenario))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
