"""Beacons and horns (gateway.safety.annunciator) and output faults as alarms (docs/design.md, Fail safe).

The logic is checked by tables over a real AlarmEngine; the outputs are checked on the HIL tank
PLC (pymodbus TCP): its own event log of client coil writes is the witness of flash rate, silence
and re-sounding. GB 16808-2008 4.2: alarm flashes >= 1 Hz, fault >= 0.2 Hz.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from gateway.safety.alarms import AlarmEngine, LimitSpec, TagAlarmConfig
from gateway.safety.annunciator import AnnunciatorLogic, AnnunciatorSpec
from gateway.config import ConfigError, load_config
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading
from hil.tank_plc import TankPlc
from conftest import run_cli as cli, wait_for

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------- pure logic

def engine() -> AlarmEngine:
    return AlarmEngine([
        TagAlarmConfig("L1", [LimitSpec("H", 10.0, priority=3), LimitSpec("HH", 20.0, priority=1)], group="tank"),
        TagAlarmConfig("L2", [LimitSpec("H", 10.0, priority=3)], group="tank"),
        TagAlarmConfig("G1", [LimitSpec("HH", 50.0, priority=1, level=2)], gas="combustible", group="gas"),
    ])


def feed(eng: AlarmEngine, tag: str, v: float | None, t: float) -> None:
    r = Reading(tag, v, "", Quality.GOOD, time.time()) if v is not None else Reading.bad(tag, "", "timeout")
    eng.update(r, t)


@pytest.mark.parametrize("pattern, offsets, expect", [
    ("flash", [0.0, 0.2, 0.49, 0.5, 0.9, 1.0, 1.6], [1, 1, 1, 0, 0, 1, 0]),   # 1 Hz: on first, half a period each
    ("steady", [0.0, 0.5, 1.3], [1, 1, 1]),
])
def test_beacon_alarm_pattern(pattern, offsets, expect):
    eng = engine()
    lg = AnnunciatorLogic(AnnunciatorSpec("B", "beacon", pattern, alarm_hz=1.0))
    feed(eng, "L1", 5.0, 0.0)
    assert lg.update(eng.active(), 0.0) == 0
    feed(eng, "L1", 12.0, 10.0)
    assert [lg.update(eng.active(), 10.0 + o) for o in offsets] == expect
    assert lg.mode == "alarm"


def test_beacon_fault_flashes_slower_and_alarm_outranks_fault():
    eng = engine()
    lg = AnnunciatorLogic(AnnunciatorSpec("B", "beacon", "flash", alarm_hz=2.0, fault_hz=0.2))
    feed(eng, "L2", None, 0.0)  # comm fault -> QUALITY alarm
    vals = [lg.update(eng.active(), t) for t in (0.0, 2.4, 2.6, 4.9, 5.1)]
    assert lg.mode == "fault" and vals == [1, 1, 0, 0, 1]  # 0.2 Hz: 2.5 s on, 2.5 s off
    feed(eng, "L1", 12.0, 6.0)
    vals = [lg.update(eng.active(), t) for t in (6.0, 6.26, 6.45, 6.5)]
    assert lg.mode == "alarm" and vals == [1, 0, 0, 1]  # 2 Hz now
    lg_nf = AnnunciatorLogic(AnnunciatorSpec("B", "beacon", "steady", faults=False))
    eng2 = engine()
    feed(eng2, "L2", None, 0.0)
    assert lg_nf.update(eng2.active(), 0.0) == 0 and lg_nf.mode == "off"


def test_beacon_stays_on_while_acknowledged_and_follows_groups_and_priorities():
    eng = engine()
    beacon = AnnunciatorLogic(AnnunciatorSpec("B", "beacon", "steady", groups=["tank"]))
    p1 = AnnunciatorLogic(AnnunciatorSpec("P", "beacon", "steady", priorities=[1]))
    feed(eng, "G1", 60.0, 0.0)
    assert beacon.update(eng.active(), 0.0) == 0 and p1.update(eng.active(), 0.0) == 1  # gas group, priority 1
    feed(eng, "L1", 12.0, 1.0)  # H, priority 3, tank group
    assert beacon.update(eng.active(), 1.0) == 1
    eng.ack("L1.H", "op", now_mono=2.0)
    assert beacon.update(eng.active(), 2.0) == 1  # acknowledged but still in alarm: still shown
    eng.shelve("L1.H", "op", "maintenance", 60, 3600, now_mono=3.0)
    assert beacon.update(eng.active(), 3.0) == 0  # shelved alarms do not annunciate


def test_horn_silence_then_a_new_alarm_sounds_again():
    eng = engine()
    horn = AnnunciatorLogic(AnnunciatorSpec("H", "horn", "steady"))
    feed(eng, "L1", 12.0, 0.0)
    assert horn.update(eng.active(), 0.0) == 1
    assert horn.silence(eng.active()) == 1
    assert horn.update(eng.active(), 0.1) == 0 and horn.update(eng.active(), 5.0) == 0  # stays silent
    assert horn.silence(eng.active()) == 0  # nothing left to mute
    feed(eng, "L2", 12.0, 6.0)  # a new alarm
    assert horn.update(eng.active(), 6.0) == 1
    eng.ack("L2.H", "op", now_mono=7.0)
    assert horn.update(eng.active(), 7.0) == 0  # acknowledging silences too (ISA-18.2)
    # The silenced L1.H returns and comes back: a new activation of the same alarm sounds again.
    feed(eng, "L1", 5.0, 8.0)
    eng.ack("L1.H", "op", now_mono=8.5)
    assert horn.update(eng.active(), 8.5) == 0
    feed(eng, "L1", 12.0, 9.0)
    assert horn.update(eng.active(), 9.0) == 1 and horn.mode == "alarm"
    beacon = AnnunciatorLogic(AnnunciatorSpec("B", "beacon", "steady"))
    assert beacon.silence(eng.active()) == 0  # silence is for horns; beacons keep showing


def test_output_fault_alarm_in_the_active_list():
    eng = engine()
    [ev] = eng.set_output_fault("XV1", True, "XV1: write of 0 failed after 3 attempts")
    assert (ev.id, ev.kind, ev.to_state, ev.reason) == ("XV1.OUTPUT", "OUTPUT", "unacked", ev.reason)
    assert eng.set_output_fault("XV1", True, "XV1: write of 0 failed after 3 attempts") == []
    active = {a.id: a for a in eng.active()}
    assert active["XV1.OUTPUT"].priority == 1 and "failed after 3 attempts" in active["XV1.OUTPUT"].reason
    [ev] = eng.set_output_fault("XV1", False)
    assert ev.to_state == "rtn_unacked" and ev.reason == "confirmed"
    eng.ack("XV1.OUTPUT", "op")
    assert "XV1.OUTPUT" not in {a.id for a in eng.active()}
    horn = AnnunciatorLogic(AnnunciatorSpec("H", "horn"))
    eng.set_output_fault("XV2", True, "no answer")
    assert horn.update(eng.active(), 0.0) == 1 and horn.mode == "fault"


def test_disabled_indicator_follows_disabled_gas_points_only():
    """GB 16808 屏蔽: a shelved / suppressed / out-of-service gas point lights the indicator; alarms do not."""
    eng = engine()
    lamp = AnnunciatorLogic(AnnunciatorSpec("Y", "disabled_indicator"))
    feed(eng, "G1", 60.0, 1.0)                          # a gas alarm: not this lamp's business
    assert lamp.update(eng.active(), 1.0, eng.disabled_points()) == 0 and lamp.mode == "off"
    eng.shelve("L1.H", "op", "radar cleaning", 600, 3600, now_mono=2.0)   # not a gas point
    assert lamp.update(eng.active(), 2.0, eng.disabled_points()) == 0
    eng.shelve("G1.HH", "op", "calibration", 600, 3600, now_mono=3.0)
    assert lamp.update(eng.active(), 3.0, eng.disabled_points()) == 1 and lamp.mode == "disabled"
    assert lamp.update(eng.active(), 3.7, eng.disabled_points()) == 1   # steady
    assert lamp.silence(eng.active()) == 0                                # silence is for horns
    eng.unshelve("G1.HH", "op", now_mono=4.0)
    assert lamp.update(eng.active(), 4.0, eng.disabled_points()) == 0 and lamp.mode == "off"
    eng.set_out_of_service("G1.QUALITY", "op", "detector removed", now_mono=5.0)
    other_group = AnnunciatorLogic(AnnunciatorSpec("Y2", "disabled_indicator", groups=["tank"]))
    assert lamp.update(eng.active(), 5.0, eng.disabled_points()) == 1
    assert other_group.update(eng.active(), 5.0, eng.disabled_points()) == 0   # follows its groups only
    with pytest.raises(ValueError, match="kind must be one of beacon, horn, disabled_indicator"):
        AnnunciatorSpec("Z", "lamp")


async def test_uncertain_read_back_does_not_confirm_an_annunciator_write():
    """S7: only a GOOD read-back confirms an output write, for annunciators as for interlock outputs."""
    from gateway.safety.annunciator import Annunciators

    async def write(tag, value):
        return Reading(tag, value, "", Quality.UNCERTAIN, time.time(), reason="status UncertainLastUsableValue")
    faults = []
    ann = Annunciators([AnnunciatorSpec("BEACON", "beacon", "steady")], write, lambda: [],
                       on_fault=lambda tag, fault, why: faults.append((tag, fault, why)))
    ann.step(0.0)
    await asyncio.gather(*ann._busy.values())
    assert faults and faults[0][:2] == ("BEACON", True) and "uncertain" in faults[0][2]
    assert "BEACON" not in ann._written


# ------------------------------------------------------------------------------------------- on the PLC

def cfg_text(port: int) -> str:
    return f"""gateway: {{id: ann-test, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{commit_interval_ms: 50, max_bytes: 1099511627776}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {port}
    poll_interval_ms: 100
    heartbeat: {{address: 40101}}
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{H: 10.5, HH: 11.0}}}}
      - {{name: T102.level, address: 30007, type: float32, unit: m, alarms: {{H: 10.5}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
      - {{name: HORN, address: {{table: coil, address: 1}}, type: bool, writable: true}}
      - {{name: BEACON, address: {{table: coil, address: 3}}, type: bool, writable: true}}
      - {{name: NOWHERE, address: {{table: coil, address: 6}}, type: bool, writable: true,
         description: "a coil the PLC does not have: every write fails"}}
      - {{name: LAMP2, address: {{table: coil, address: 2}}, type: bool, writable: true}}
annunciators:
  - {{output: BEACON, kind: beacon, pattern: flash, alarm_hz: 1.0}}
  - {{output: HORN, kind: horn, pattern: steady}}
  - {{output: LAMP2, kind: beacon, pattern: steady, faults: false}}
interlocks:
  - name: T101_overfill
    inputs: [{{tag: T101.level, condition: HH}}]
    actions: [{{output: NOWHERE, value: 0}}]
"""


@contextlib.asynccontextmanager
async def running(tmp_path: Path):
    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    (tmp_path / "gw.yaml").write_text(cfg_text(plc.port))
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    gw.outputs.backoff_s = gw.outputs.backoff_max_s = 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        yield plc, gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await plc.stop()


def writes(plc: TankPlc, coil: str) -> list[tuple[float, int]]:
    return [(e["t"], e["value"]) for e in plc.events if e["kind"] == "coil_write" and e["coil"] == coil]


@pytest.mark.e2e
async def test_beacon_flashes_at_1_hz_with_read_back_and_horn_silence_resounds(tmp_path):
    async with running(tmp_path) as (plc, gw):
        sock = str(tmp_path / "state" / "control.sock")
        await wait_for(lambda: "T101.level" in gw.values, 5, "first reading")
        plc.set_level("T101", 10.7)  # H alarm
        await wait_for(lambda: plc.coil("XV102"), 3, "horn on (coil 1)")
        t0 = time.time()
        await asyncio.sleep(3.2)
        w = [(t, v) for t, v in writes(plc, "beacon") if t >= t0]
        changes = [t for (t, v), (_, pv) in zip(w[1:], w) if v != pv]
        assert len(changes) >= 5, w
        gaps = [b - a for a, b in zip(changes, changes[1:])]
        mean = sum(gaps) / len(gaps)
        assert 0.4 <= mean <= 0.6, gaps  # half a period of 1 Hz (GB 16808-2008 4.2: >= 1 Hz)
        ann = gw.annunciators.status()
        beacon = next(a for a in ann if a["output"] == "BEACON")
        assert beacon["mode"] == "alarm" and beacon["confirmed"]
        assert len(gw.annunciators.history["BEACON"]) >= 6  # each change confirmed by read-back
        assert plc.coil("XV102")  # horn still sounding
        rc, out, err = await cli("silence", "--socket", sock, "--reason", "operator in the field")
        assert rc == 0 and "silenced 1" in out, (out, err)
        await wait_for(lambda: not plc.coil("XV102"), 2, "horn silenced")
        await asyncio.sleep(0.5)
        assert not plc.coil("XV102")
        plc.set_level("T102", 10.7)  # a new alarm
        await wait_for(lambda: plc.coil("XV102"), 2, "horn sounds again for the new alarm")
        for a in ("T101.level.H", "T102.level.H"):
            rc, out, err = await cli("ack", a, "--socket", sock)
            assert rc == 0, err
        await wait_for(lambda: not plc.coil("XV102"), 2, "horn off after acknowledgement")


@pytest.mark.e2e
async def test_unconfirmed_writes_are_output_fault_alarms_and_are_retried(tmp_path):
    async with running(tmp_path) as (plc, gw):
        await wait_for(lambda: "T101.level" in gw.values, 5, "first reading")
        plc.set_level("T101", 11.5)  # trips T101_overfill -> NOWHERE := 0, which the PLC refuses
        await wait_for(lambda: "NOWHERE.OUTPUT" in {a.id for a in gw.alarms.active()}, 10, "output-fault alarm")
        a = next(a for a in gw.alarms.active() if a.id == "NOWHERE.OUTPUT")
        assert a.kind == "OUTPUT" and a.state == "unacked" and a.priority == 1
        assert "exception 02" in a.reason or "illegal" in a.reason.lower(), a.reason
        st = gw.outputs.state("NOWHERE")
        assert st.fault and not st.confirmed
        n = st.attempts
        # beacon (faults: true) shows alarm mode; LAMP2 (faults: false) shows only the process alarm
        await asyncio.sleep(5.5)  # OUTPUT_RETRY_S: the write is tried again, not given up
        assert gw.outputs.state("NOWHERE").attempts > n
        rc, out, err = await cli("status", "--socket", str(tmp_path / "state" / "control.sock"))
        assert "NOWHERE.OUTPUT" in out and "FAULT" in out, out


@pytest.mark.e2e
async def test_disabled_indicator_lamp_on_the_plc_while_a_gas_point_is_shelved(tmp_path):
    """End to end: shelving a gas point over the operator socket lights the disabled_indicator coil (read back
    from the PLC) and `status` shows POINTS DISABLED; unshelving clears both."""
    plc = TankPlc()
    await plc.start()
    (tmp_path / "gw.yaml").write_text(f"""gateway: {{id: ann-disabled, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{commit_interval_ms: 50, max_bytes: 1099511627776}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc.port}
    poll_interval_ms: 100
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{H: 10.5, group: gas}}}}
      - {{name: T102.level, address: 30007, type: float32, unit: m, alarms: {{H: 10.5}}}}
      - {{name: YLAMP, address: {{table: coil, address: 2}}, type: bool, writable: true}}
annunciators:
  - {{output: YLAMP, kind: disabled_indicator}}
""")
    plc.set_coil("XV100", False)  # coil 2 starts off
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    sock = str(tmp_path / "state" / "control.sock")
    try:
        await wait_for(lambda: "T101.level" in gw.values and gw.control is not None, 5, "first reading")
        await asyncio.sleep(0.3)
        assert not plc.coil("XV100")
        rc, out, err = await cli("shelve", "T102.level.H", "--minutes", "5", "--reason", "radar cleaning",
                                 "--socket", sock)
        assert rc == 0, err
        await asyncio.sleep(0.3)
        assert not plc.coil("XV100")                          # T102 is not a gas point
        rc, out, err = await cli("shelve", "T101.level.H", "--minutes", "5", "--reason", "bump test",
                                 "--socket", sock)
        assert rc == 0, err
        await wait_for(lambda: plc.coil("XV100"), 3, "disabled indicator on (coil 2)")
        rc, out, err = await cli("status", "--socket", sock)
        assert rc == 0 and "POINTS DISABLED (屏蔽): 1 gas point(s): T101.level" in out, out
        lamp = next(a for a in gw.annunciators.status() if a["output"] == "YLAMP")
        assert lamp["mode"] == "disabled" and lamp["confirmed"] and lamp["value"] in (1, True)
        rc, out, err = await cli("unshelve", "T101.level.H", "--socket", sock)
        assert rc == 0, err
        await wait_for(lambda: not plc.coil("XV100"), 3, "disabled indicator off")
        rc, out, err = await cli("status", "--socket", sock)
        assert "POINTS DISABLED" not in out
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await plc.stop()


def test_annunciator_config_errors(tmp_path):
    base = cfg_text(502)
    cases = [
        (base.replace("{output: HORN, kind: horn", "{output: NOTATAG, kind: horn"), "unknown tag 'NOTATAG'"),
        (base.replace("{output: HORN, kind: horn", "{output: T101.level, kind: horn"), "is not writable"),
        (base.replace("{output: HORN, kind: horn", "{output: NOWHERE, kind: horn"),
         "also an interlock action output"),
        (base.replace("{output: HORN, kind: horn", "{output: BEACON, kind: horn"), "also driven by annunciators[0]"),
        (base.replace("kind: horn", "kind: siren"), "annunciators[1].kind"),
    ]
    for text, message in cases:
        (tmp_path / "a.yaml").write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / "a.yaml")
        assert message in str(e.value) and ":22:" in str(e.value), (message, str(e.value))
    (tmp_path / "a.yaml").write_text(base.replace("alarm_hz: 1.0", "alarm_hz: 0.5"))
    warns = [str(w) for w in load_config(tmp_path / "a.yaml").warnings]
    assert any("0.5 Hz is slower than the GB 16808-2008 4.2 minimum of 1 Hz" in w for w in warns), warns
