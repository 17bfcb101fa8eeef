"""Real Modbus traffic (tests/data/real, see ATTRIBUTION.md): parse every frame, then replay it.

Parsing: hil.pcap reassembles the TCP streams of four public captures and
splits MBAP ADUs; the counts per function code are checked against
the dpkt counts in tests/data/real/ATTRIBUTION.md (made independently); every PDU must
decode with pymodbus's DecodePDU; every RTU frame of three logic-analyser
captures of real devices must pass our CRC and be found by our
resynchronising reply scanner (drivers.modbus.scan_rtu_reply).

Replay: hil.replay answers the captured requests with the captured
responses (raw bytes) - over TCP on 127.0.0.1 and over a paced pty pair for
RTU - and the gateway's ModbusDevice, configured for the captured addresses,
must read exactly the values the capture carries; requests the capture left
unanswered must become BAD "timeout", never a value. Expected values are
decoded from the captured bytes with pymodbus/struct, not with our codec.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from pymodbus.pdu import DecodePDU

from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint, crc_ok, scan_rtu_reply
from gateway.model import Quality
from hil.pcap import (PcapError, StreamStats, function_counts, modbus_adus, per_packet_counts, read_segments,
                      transactions)
from hil.replay import (ModbusTcpReplay, RtuReplay, load_rtu_tsv, pair_rtu, rtu_table, tcp_table,
                        tcp_transactions)
from hil.serial_line import SerialLine

pytestmark = pytest.mark.timeout(60)

REAL = Path(__file__).parents[1] / "data" / "real"

# tests/data/real/ATTRIBUTION.md, dpkt counts: function code -> (requests, responses), dpkt per-packet counts
MANIFEST_TCP = {
    "ModbusTCP.pcap": ({1: (1519, 1519), 2: (1574, 1580), 4: (2768, 2767), 15: (2115, 2113), 16: (14, 14)}, 15983),
    "modbus_test.pcap": ({4: (1079, 1053), 6: (63, 63)}, 2258),
    "modbus_test_data_part1.pcap": ({1: (2, 12), 3: (1, 1), 5: (2, 2), 6: (1, 1), 7: (2, 0), 8: (8, 8),
                                     17: (2, 2), 42: (0, 2), 43: (2, 0)}, 48),
    "modbusSmall.pcap": ({1: (8, 8), 15: (8, 8)}, 32),
}
# RTU frame lists (ATTRIBUTION.md): file -> (frames, master line label, {function: requests})
MANIFEST_RTU = {
    "brainchild-io-16do.rtu.tsv": (30, "TX", {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 15: 2, 16: 1}),
    "wizmodbus.rtu.tsv": (88, "RX", {3: 40, 6: 4}),
    "flowmeter_target_15liter_per_min.rtu.tsv": (132, None, {3: 64, 16: 2}),
}


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("name", list(MANIFEST_TCP))
def test_pcap_counts_match_manifest(name):
    counts, total = MANIFEST_TCP[name]
    naive = per_packet_counts(REAL / name)
    assert naive == counts
    assert sum(a + b for a, b in naive.values()) == total


def test_pcap_reassembly_drops_retransmissions_and_joins_split_adus():
    """ModbusTCP.pcap: dpkt counted 8 retransmitted FC2 responses twice and missed one FC4 response
    split over two segments; reassembly gets both right (8 x 11-byte ADUs = 88 retransmitted bytes)."""
    st = StreamStats()
    adus = modbus_adus(REAL / "ModbusTCP.pcap", stats=st)
    c = function_counts(adus)
    assert c[2] == (1574, 1580 - 8) and c[4] == (2768, 2767 + 1)
    assert st.retransmitted_bytes == 8 * 11 and st.gap_bytes == 0 and st.junk_bytes == 0
    assert {a.unit for a in adus} == {255}
    assert len({a.conn[2] for a in adus}) == 13  # one master polls 13 slaves


@pytest.mark.parametrize("name", list(MANIFEST_TCP))
def test_every_tcp_pdu_decodes(name):
    srv, cli = DecodePDU(is_server=True), DecodePDU(is_server=False)
    failed = Counter()
    for a in modbus_adus(REAL / name):
        pdu = (srv if a.is_request else cli).decode(a.pdu)
        if pdu is None:
            failed[(a.is_request, a.function)] += 1
        elif not a.is_request and a.function & 0x80:
            assert pdu.exception_code == a.pdu[1]
    # The only undecodable PDUs: part1's answers to FC43/14 carry function 0x2A (malformed, MANIFEST)
    assert dict(failed) == ({(False, 0x2A): 2} if name == "modbus_test_data_part1.pcap" else {})


def test_part1_garbage_streams_are_junk_not_adus():
    """modbus_test_data_part1.pcap also holds two 451-byte payloads that are no MBAP stream (protocol
    id 0x8804 ...) and a header with protocol id 0x0010: strict framing takes none of them as an ADU."""
    st = StreamStats()
    adus = modbus_adus(REAL / "modbus_test_data_part1.pcap", stats=st)
    assert len(adus) == 46 and all(a.pid == 0 for a in adus)
    assert st.junk_bytes >= 2 * 451 + 2 * 12
    assert 7 not in function_counts(adus)


def test_modbus_test_pcap_units_and_unanswered():
    txs = transactions(modbus_adus(REAL / "modbus_test.pcap"))
    assert {t.request.unit for t in txs} == {1, 2, 3, 7}
    missing = [t for t in txs if t.response is None]
    # 1079 - 1053 = 26 FC4 requests without an answer, plus one whose response lost its request: 1 orphan
    assert len(missing) == 27 and all(t.request.function == 4 for t in missing)


def test_not_a_pcap_is_one_line_error(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(PcapError, match="pcapng is not supported"):
        list(read_segments(bad))
    bad.write_bytes(b"hello")
    with pytest.raises(PcapError, match="not a pcap"):
        list(read_segments(bad))


@pytest.mark.parametrize("name", list(MANIFEST_RTU))
def test_every_rtu_frame_passes_crc_and_reply_scanner(name):
    nframes, master, per_fc = MANIFEST_RTU[name]
    frames = load_rtu_tsv(REAL / name)
    assert len(frames) == nframes
    assert all(f.crc_ok and crc_ok(f.raw) for f in frames)
    pairs = pair_rtu(frames, master)
    assert Counter(q[1] for q, _ in pairs) == per_fc
    srv, cli = DecodePDU(is_server=True), DecodePDU(is_server=False)
    for req, rsp in pairs:
        assert rsp is not None
        assert srv.decode(req[1:-2]) is not None and cli.decode(rsp[1:-2]) is not None
        fc = req[1]
        count = struct.unpack(">H", req[4:6])[0]
        reply_len = {1: 5 + (count + 7) // 8, 2: 5 + (count + 7) // 8, 3: 5 + 2 * count,
                     4: 5 + 2 * count}.get(fc, 8)
        # the reply, alone and behind the request's own echo (a 2-wire adapter), is found by the scanner
        # (an FC5/FC6 reply IS an echo of the request, so there the two cannot be told apart by bytes)
        for buf in (rsp, req + rsp) if req != rsp else (rsp,):
            frame, consumed, _ = scan_rtu_reply(buf, req[0], fc, reply_len)
            assert frame == rsp and consumed == len(buf)


# --------------------------------------------------------------------------- TCP replay
def _regs(pdu: bytes) -> list[int]:
    return list(DecodePDU(is_server=False).decode(pdu).registers)


def _bits(pdu: bytes, count: int) -> list[bool]:
    return [bool(b) for b in DecodePDU(is_server=False).decode(pdu).bits[:count]]


@pytest.mark.e2e
async def test_replay_modbus_test_pcap_tcp_gateway_reads_captured_values():
    """The TCP-to-serial gateway 192.168.0.20 with unit ids 1, 2, 3, 7: every captured FC4 read is
    replayed through ModbusDevices sharing one link; each value equals the captured one, in order;
    the 27 requests without a captured answer read BAD "timeout"."""
    pcap = REAL / "modbus_test.pcap"
    txs = [t for t in tcp_transactions(pcap) if t.request.function == 4]
    by_key: dict[tuple, list] = {}
    for t in txs:
        by_key.setdefault((t.request.unit, t.request.pdu), []).append(t.response)
    assert {k[0] for k in by_key} == {1, 2, 3, 7}
    table = tcp_table(pcap)
    async with ModbusTcpReplay(table) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port, timeout_s=0.08)
        timeouts = values = 0
        for (unit, pdu), responses in by_key.items():
            _fc, address, count = struct.unpack(">BHH", pdu)
            point = ModbusPoint("v", unit, "input_register", address, length=count)
            d = ModbusDevice(f"u{unit}", link, unit, [point], "modbus_tcp", retries=0, offline_after=10_000)
            for rsp in responses:
                (r,) = await d.read()
                if rsp is None:
                    assert r.quality is Quality.BAD and r.reason == "timeout" and r.value is None
                    timeouts += 1
                else:
                    assert r.quality is Quality.GOOD, r.reason
                    expected = _regs(rsp.pdu)
                    assert (r.value if count > 1 else [r.value]) == expected
                    values += 1
        # 1053 captured responses, one of them to a request sent before the capture started
        assert (values, timeouts) == (1053 - 1, 1079 - 1052)
        assert table.served["unknown"] == 0 and table.served["exhausted"] == 0
        # FC6 writes of unit 7: the captured echo comes back through our link
        assert await link.write_register(7, 4, 0x09C4) == (4, 0x09C4)
        await links.close_all()


@pytest.mark.e2e
async def test_replay_ModbusTCP_pcap_one_plc():
    """One of the 13 slaves in ModbusTCP.pcap (unit 255): coils, discrete inputs, input registers
    (FC4 @1100 x115) and FC15 writes, replayed in capture order."""
    pcap = REAL / "ModbusTCP.pcap"
    txs = tcp_transactions(pcap)
    server = Counter(t.request.conn[2] for t in txs).most_common(1)[0][0]
    txs = [t for t in txs if t.request.conn[2] == server][:400]
    table = tcp_table(pcap, server=server)
    tables = {1: "coil", 2: "discrete_input", 3: "holding_register", 4: "input_register"}
    seen = Counter()
    async with ModbusTcpReplay(table) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port, timeout_s=0.08)
        devices: dict[tuple, ModbusDevice] = {}
        for t in txs:
            fc = t.request.function
            if fc in tables:
                _, address, count = struct.unpack(">BHH", t.request.pdu)
                key = (fc, address, count)
                if key not in devices:
                    dtype = "bool" if fc in (1, 2) else "uint16"
                    devices[key] = ModbusDevice(f"plc{key}", link, 255, [ModbusPoint(
                        "v", 255, tables[fc], address, dtype=dtype, length=count)], "modbus_tcp", retries=0,
                        offline_after=10_000)
                (r,) = await devices[key].read()
                if t.response is None:
                    assert r.quality is Quality.BAD and r.reason == "timeout"
                    continue
                got = r.value if count > 1 else [r.value]
                assert got == (_bits(t.response.pdu, count) if fc in (1, 2) else _regs(t.response.pdu))
                seen[fc] += 1
            elif fc == 15 and t.response is not None:
                _, address, count, nbytes = struct.unpack(">BHHB", t.request.pdu[:6])
                packed = t.request.pdu[6:6 + nbytes]
                bits = [(packed[i // 8] >> (i % 8)) & 1 for i in range(count)]
                assert await link.write_coils(255, address, bits) == (address, count)
                seen[15] += 1
        assert table.served["unknown"] == 0
        assert seen[1] and seen[2] and seen[4] and seen[15]
        await links.close_all()


# --------------------------------------------------------------------------- RTU replay
async def _rtu_rig(name: str, master: str | None, baud: int, bits_per_char: int):
    pairs = pair_rtu(load_rtu_tsv(REAL / name), master)
    line = SerialLine(baud, bits_per_char=bits_per_char)
    dev_path, gw_path = line.start()
    replay = RtuReplay(dev_path, rtu_table(pairs))
    await replay.start()
    return pairs, line, gw_path, replay


@pytest.mark.e2e
async def test_replay_flowmeter_rtu_ieee_floats():
    """Flow meter at slave 247, 9600 8N1: FC3 @0x0000 x15 carries IEEE floats (ABCD); the setpoint
    write (FC16 @6 = 15.0) shows up at registers 6-7 afterwards."""
    pairs, line, gw_path, replay = await _rtu_rig("flowmeter_target_15liter_per_min.rtu.tsv", None, 9600, 10)
    try:
        links = ModbusLinks()
        link = links.rtu(gw_path, 9600, "N", 1, 8, timeout_s=0.15)
        floats = [ModbusPoint(f"f{a}", 247, "holding_register", a, dtype="float32", unit="") for a in range(0, 12, 2)]
        main = ModbusDevice("flow", link, 247, floats + [
            ModbusPoint("w12", 247, "holding_register", 12, dtype="uint32"),
            ModbusPoint("w14", 247, "holding_register", 14)], "modbus_rtu", retries=0)
        other = ModbusDevice("flow_b", link, 247, [ModbusPoint("x4082", 247, "holding_register", 0x4082,
                                                               dtype="uint32")], "modbus_rtu", retries=0)
        status = ModbusDevice("flow_c", link, 247, [ModbusPoint("x0d", 247, "holding_register", 0x0D)],
                              "modbus_rtu", retries=0)
        assert [str(b) for b in main.planner.blocks] and len(main.planner.blocks) == 1
        setpoints = []
        for req, rsp in pairs:
            pdu = req[1:-2]
            if pdu == bytes.fromhex("030000000f"):
                readings = {r.tag: r for r in await main.read()}
                data = rsp[3:-2]
                for a in range(0, 12, 2):
                    expect = struct.unpack(">f", data[2 * a:2 * a + 4])[0]
                    assert readings[f"f{a}"].quality is Quality.GOOD
                    assert readings[f"f{a}"].value == pytest.approx(expect, rel=1e-7)
                assert readings["w12"].value == struct.unpack(">I", data[24:28])[0]
                assert readings["w14"].value == struct.unpack(">H", data[28:30])[0]
                setpoints.append(readings["f6"].value)
            elif pdu == bytes.fromhex("0340820002"):
                (r,) = await other.read()
                assert r.value == struct.unpack(">I", rsp[3:7])[0] == 3
            elif pdu == bytes.fromhex("03000d0001"):
                (r,) = await status.read()
                assert r.value == struct.unpack(">H", rsp[3:5])[0]
            elif req[1] == 16:
                assert await link.write_registers(247, 6, [0x4170, 0x0000]) == (6, 2)
        assert replay.table.served["answered"] == len(pairs) and replay.table.served["unknown"] == 0
        assert setpoints[0] == 20.0 and setpoints[-1] == 15.0  # the capture's setpoint change, 20 -> 15 l/min
        assert link.discarded_frames == 0
        await links.close_all()
    finally:
        await replay.stop()
        line.stop()


@pytest.mark.e2e
async def test_replay_wizmodbus_rtu_cdab_floats_and_unknown_is_timeout():
    """wizmodbus, 9600 8N1 slave 1, replayed in capture order: FC3 reads of 2 registers at 1000, 1002
    .. 1024 hold float32 in CDAB order (11049.11, 22160.11 ...); 1026-1032 are single registers;
    the FC6 writes echo. A request the capture never saw gets no answer: BAD timeout."""
    pairs, line, gw_path, replay = await _rtu_rig("wizmodbus.rtu.tsv", "RX", 9600, 10)
    try:
        links = ModbusLinks()
        link = links.rtu(gw_path, 9600, "N", 1, 8, timeout_s=0.15)
        devices: dict[int, ModbusDevice] = {}
        floats = []
        for req, rsp in pairs:
            fc, address, value = struct.unpack(">BHH", req[1:6])  # value = quantity for FC3
            if fc == 6:
                assert await link.write_register(1, address, value) == (address, value)
                continue
            if address not in devices:
                point = (ModbusPoint("v", 1, "holding_register", address, dtype="float32", order="CDAB")
                         if address <= 1024 else ModbusPoint("v", 1, "holding_register", address, length=value))
                devices[address] = ModbusDevice(f"wiz{address}", link, 1, [point], "modbus_rtu", retries=0)
            (r,) = await devices[address].read()
            assert r.quality is Quality.GOOD, r.reason
            data = rsp[3:-2]
            if address <= 1024:
                assert r.value == struct.unpack(">f", data[2:] + data[:2])[0]
                floats.append(r.value)
            else:
                assert [r.value] == _regs(rsp[1:-2])
        assert floats[1] == pytest.approx(11049.11, abs=0.01) and floats[2] == pytest.approx(22160.11, abs=0.01)
        assert replay.table.served["answered"] == len(pairs)
        stranger = ModbusDevice("wiz2", link, 1, [ModbusPoint("z", 1, "holding_register", 5000)], "modbus_rtu",
                                retries=0)
        (r,) = await stranger.read()
        assert r.quality is Quality.BAD and r.reason == "timeout" and r.value is None
        assert replay.table.served["unknown"] == 1
        await links.close_all()
    finally:
        await replay.stop()
        line.stop()


async def test_replay_brainchild_rtu_all_function_codes_8e1_as_8n2():
    """Brainchild IO-16DO, 19200 8E1 (on a pty as 8N2, same 11-bit character): FC1-4 reads, a coil
    write with read-back through ModbusDevice.write, FC6/FC15/FC16 echoes through the link."""
    pairs, line, gw_path, replay = await _rtu_rig("brainchild-io-16do.rtu.tsv", "TX", 19200, 11)
    try:
        links = ModbusLinks()
        link = links.rtu(gw_path, 19200, "N", 2, 8, timeout_s=0.15)
        d = ModbusDevice("io16", link, 1, [
            ModbusPoint("do3", 1, "coil", 3, dtype="bool", writable=True),
            ModbusPoint("di0", 1, "discrete_input", 0, dtype="bool"),
            ModbusPoint("hr99", 1, "holding_register", 0x63),
            ModbusPoint("ir120", 1, "input_register", 0x78)], "modbus_rtu", retries=0)
        r = {x.tag: x for x in await d.read()}
        assert (r["do3"].value, r["di0"].value, r["hr99"].value, r["ir120"].value) == (True, False, 0x0201, 0x4B00)
        back = await d.write("do3", True)  # FC5 echo, then FC1 read-back: both captured
        assert back.value is True and back.quality is Quality.GOOD
        assert await link.write_register(1, 1, 0x55) == (1, 0x55)
        assert await link.write_coils(1, 2, [1]) == (2, 1)
        assert await link.write_registers(1, 1, [0xAA]) == (1, 1)
        assert replay.crc_errors == 0 and replay.table.served["unknown"] == 0
        await links.close_all()
    finally:
        await replay.stop()
        line.stop()
