"""The receiver and the basic-data record (基础数据): each basic_data event of a batch is validated, bound to the
batch's gateway and config and to the gateway's enterprise code; a good one is kept and served by a signed
GET /v1/gateways/<id>/basic-data, a bad one refuses the whole batch (400 basic_data, signed rejection), nothing
stored. Real HTTPS receivers on 127.0.0.1; the last test runs a real Gateway against the simulated tank PLC
and reloads it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import shutil
import time
from pathlib import Path

import httpx
import pytest

from conftest import gateway_signers, hazard_section
from gateway.chain.basic_data import point_code
from gateway.chain.rejection import load_receiver_key, verify_rejection
from gateway.chain.signing import Signer, build_payload, chain_hash, decode_unverified, keygen
from gateway.config import load_config
from gateway.model import Quality, Reading
from gateway.regulator.receiver import BackgroundReceiver, signed_request_headers
from gateway.runtime.basic_data import build_document
from gateway.runtime.build import build_plant

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]   # e2e: HTTPS receivers, a gateway

ROOT = Path(__file__).resolve().parents[2]
GID = "demo-tank-farm"
JOSE = {"content-type": "application/jose"}


@pytest.fixture(scope="module")
def demo_doc():
    """The basic data the demo gateway would send (gateway.runtime.basic_data on config/demo.yaml)."""
    cfg = load_config(ROOT / "config" / "demo.yaml")
    plant = build_plant(cfg)
    return build_document(cfg, plant.hazard, plant.points)


@pytest.fixture()
def keys(tmp_path):
    """The gateway's key A (trusted for GID), another gateway's key B (trusted for gw-02) and the receiver's key."""
    trust, by_gateway = gateway_signers(tmp_path, (GID, "gw-02"))
    out = {"A": by_gateway[GID], "B": by_gateway["gw-02"]}
    rkid = keygen(tmp_path / "rxkey")
    out["trust"], out["rx_key"], out["rx_jwk"] = trust, tmp_path / "rxkey" / "private.pem", \
        tmp_path / "rxkey" / f"{rkid}.jwk"
    return out


def doc_for(demo_doc: dict, config_hash: str, **changes) -> dict:
    d = copy.deepcopy(demo_doc)
    d["config_hash"] = config_hash
    d.update(changes)
    return d


def with_enterprise(doc: dict, code: str) -> dict:
    """The document of another enterprise code, consistent in itself (every point code rebuilt)."""
    d = copy.deepcopy(doc)
    d["enterprise"]["code"] = code
    for p in d["points"]:
        p["code"] = point_code(code, p["major_hazard_code"], p["tag_code"])
    return d


class Chain:
    """Signed batches of one gateway, each linked to the last one sent with ok=True."""

    def __init__(self, signer: Signer, gid: str = GID):
        self.signer, self.gid, self.seq, self.prev = signer, gid, 0, None

    def batch(self, config_hash: str, events: list[dict]) -> str:
        r = Reading("T101.level", 8.0, "m", Quality.GOOD, time.time()).to_record()
        return self.signer.sign(build_payload(self.gid, self.seq + 1, self.prev, config_hash, [r], events))

    def accepted(self, jws: str) -> None:
        self.seq += 1
        self.prev = chain_hash(jws)


def post(c: httpx.Client, jws: str) -> httpx.Response:
    return c.post("/v1/batches", content=jws, headers=JOSE)


@contextlib.contextmanager
def receiver(tmp_path: Path, keys: dict, signing: bool = False):
    with BackgroundReceiver(tmp_path / "rx", keys["trust"], signing_key=keys["rx_key"] if signing else None) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        yield rx, c


PATH = f"/v1/gateways/{GID}/basic-data"


def test_good_basic_data_is_stored_and_served_by_a_signed_get(tmp_path, keys, demo_doc):
    A, B = keys["A"], keys["B"]
    ch = Chain(A)
    with receiver(tmp_path, keys) as (rx, c):
        r = c.get(PATH, headers=signed_request_headers(A, GID, PATH))
        assert r.status_code == 404 and r.json()["error"] == f"no basic data of gateway {GID}"
        doc = doc_for(demo_doc, "cfg-1")
        jws = ch.batch("cfg-1", [{"type": "gateway", "event": "start", "config_hash": "cfg-1"}, doc])
        r = post(c, jws)
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        ch.accepted(jws)
        # unsigned, signed for another path, signed by another gateway's key: 401, nothing shown
        r = c.get(PATH)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("JWS") and "points" not in r.text
        r = c.get(PATH, headers=signed_request_headers(A, GID))   # a status request used here
        assert r.status_code == 401 and f"not GET {PATH}" in r.json()["error"]
        r = c.get(PATH, headers=signed_request_headers(B, GID, PATH))
        assert r.status_code == 401 and "bound to gateway gw-02" in r.json()["error"]
        r = c.get(PATH, headers=signed_request_headers(A, GID, PATH))
        assert r.status_code == 200, r.text
        held = r.json()
        assert (held["gateway_id"], held["seq"], held["config_hash"]) == (GID, 1, "cfg-1") and held["received_at"]
        assert held["doc"] == doc
        # the status route still answers, with its own counter
        assert c.get(f"/v1/gateways/{GID}/status", headers=signed_request_headers(A, GID)).json()["last_seq"] == 1
        # a later batch with the basic data of a new config (after a reload) replaces it
        new = doc_for(demo_doc, "cfg-2", ts="2026-12-08T03:00:00.000Z")
        jws = ch.batch("cfg-2", [{"type": "gateway", "event": "config_reloaded", "config_hash": "cfg-2",
                                  "previous_config_hash": "cfg-1"}, new])
        assert post(c, jws).status_code == 200
        held = c.get(PATH, headers=signed_request_headers(A, GID, PATH)).json()
        assert (held["seq"], held["config_hash"], held["doc"]["ts"]) == (2, "cfg-2", "2026-12-08T03:00:00.000Z")
        st = rx.receiver.stats()
        assert st["basic_data_ok"] == 3 and st["rejected_basic_data_auth"] == 3   # the 404 passed the check too and st["status_ok"] == 1
        assert st["accepted"] == 2 and "rejected_basic_data" not in st


FORGERIES = {
    "other gateway_id": (lambda d: d | {"gateway_id": "gw-02"}, "names gateway gw-02, not demo-tank-farm"),
    "other config_hash": (lambda d: d | {"config_hash": "cfg-forged"}, "config_hash cfg-forged is not the batch's"),
    "other enterprise": (lambda d: with_enterprise(d, "330100000002"),
                         "enterprise code 330100000002 is not 330100000001, bound to demo-tank-farm by the basic "
                         "data of seq 1"),
    "no enterprise": (lambda d: d | {"enterprise": {"code": None, "name": None},
                                     "points": [p | {"code": None} for p in d["points"]]},
                      "enterprise code None is not 330100000001"),
    "bad schema": (lambda d: d | {"points": [p | {"unit": "degC"} if p["tag"] == "T101.level" else p
                                             for p in d["points"]]},
                   "unit 'degC' does not fit measure level"),
    "old version": (lambda d: d | {"version": 2}, "version 2 is not 1"),
}


def test_forged_basic_data_refuses_the_whole_batch_with_a_signed_rejection(tmp_path, keys, demo_doc):
    A = keys["A"]
    ch = Chain(A)
    rkey = load_receiver_key(keys["rx_jwk"])
    with receiver(tmp_path, keys, signing=True) as (rx, c):
        good = doc_for(demo_doc, "cfg-1")
        jws = ch.batch("cfg-1", [good])
        assert post(c, jws).status_code == 200
        ch.accepted(jws)   # binds enterprise 330100000001 to the gateway
        for name, (forge, needle) in FORGERIES.items():
            jws = ch.batch("cfg-1", [forge(copy.deepcopy(good))])
            r = post(c, jws)
            assert r.status_code == 400, (name, r.text)
            err = r.json()["error"]
            assert err.startswith(f"basic_data: {GID} seq 2 events[0]: ") and needle in err, (name, err)
            claims = verify_rejection(r.json()["rejection"], rkey, gateway_id=GID, seq=2,
                                      sent_sha256=hashlib.sha256(jws.encode()).hexdigest(), status=400)
            assert claims["reason"] == err
            # not stored: neither the batch nor its basic data
            assert rx.receiver.store.last_seq(GID) == 1 and rx.receiver.store.get(GID, 2) is None
            assert rx.receiver.store.basic_data(GID)["seq"] == 1
        st = rx.receiver.stats()
        assert st["rejected_basic_data"] == len(FORGERIES) and st["rejection_signed"] == len(FORGERIES)
        # the chain goes on: seq 2 with good basic data is accepted
        jws = ch.batch("cfg-1", [doc_for(demo_doc, "cfg-1")])
        assert post(c, jws).status_code == 200 and rx.receiver.store.basic_data(GID)["seq"] == 2


def test_a_backlog_across_a_restart_carries_both_configs_records(tmp_path, keys, demo_doc):
    """A batch is built after the fact: readings and events queued under config A, then a restart on config B,
    ride in one batch stamped B. The record of A is accepted when the batch records A's start; the latest one
    is kept. Without that start event it is refused."""
    A = keys["A"]
    ch = Chain(A)
    old, new = doc_for(demo_doc, "cfg-A"), doc_for(demo_doc, "cfg-B", ts="2026-12-08T03:00:00.000Z")
    with receiver(tmp_path, keys) as (rx, c):
        r = post(c, ch.batch("cfg-B", [old, new]))
        assert r.status_code == 400 and "config_hash cfg-A is not the batch's" in r.json()["error"]
        assert rx.receiver.store.basic_data(GID) is None and rx.receiver.store.last_seq(GID) == 0
        jws = ch.batch("cfg-B", [{"type": "gateway", "event": "start", "config_hash": "cfg-A"}, old,
                                 {"type": "gateway", "event": "stop"},
                                 {"type": "gateway", "event": "start", "config_hash": "cfg-B"}, new])
        assert post(c, jws).status_code == 200
        held = rx.receiver.store.basic_data(GID)
        assert (held["seq"], held["config_hash"], held["doc"]["ts"]) == (1, "cfg-B", new["ts"])


def test_the_enterprise_code_is_bound_by_the_first_record_that_has_one(tmp_path, keys, demo_doc):
    A = keys["A"]
    ch = Chain(A)
    bare = doc_for(demo_doc, "cfg-1", enterprise={"code": None, "name": None},
                   points=[p | {"code": None} for p in demo_doc["points"]])
    with receiver(tmp_path, keys) as (rx, c):
        for doc in (bare, doc_for(demo_doc, "cfg-1")):   # commissioned first, the regulator's code added later
            jws = ch.batch("cfg-1", [doc])
            assert post(c, jws).status_code == 200
            ch.accepted(jws)
        # two records in one batch: the second must keep the first's code
        r = post(c, ch.batch("cfg-1", [doc_for(demo_doc, "cfg-1"),
                                       with_enterprise(doc_for(demo_doc, "cfg-1"), "330100000009")]))
        assert r.status_code == 400 and "events[1]: enterprise code 330100000009 is not 330100000001" in r.text
        assert rx.receiver.store.basic_data(GID)["seq"] == 2


# ------------------------------------------------------------------------- a running gateway, reloaded

def gateway_config(plc_port: int, rx, people: int) -> str:
    return f"""gateway: {{id: bd-gw, enterprise_code: "330100000001", major_hazard_code: "H01", state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{path: store.sqlite, commit_interval_ms: 50, max_bytes: 1099511627776}}
uplink: {{url: '{rx.url}/v1/batches', ca_file: '{rx.cafile}', interval_ms: 100}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    poll_interval_ms: 200
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{HH: 11.0}},
         point: {{measure: level, vessel: T101, range: [0.0, 12.0]}}}}
      - {{name: T101.temperature, address: 30003, type: float32, unit: degC,
         point: {{measure: temperature, vessel: T101}}}}
""" + hazard_section(people)


async def test_a_reload_puts_a_second_basic_data_record_in_the_chain(tmp_path):
    from conftest import wait_for
    from gateway.runtime.gateway import Gateway
    from gateway.runtime.reload import reload_from_file
    from hil.tank_plc import TankPlc

    plc = TankPlc()
    await plc.start()
    kid = keygen(tmp_path / "keys")
    trust = tmp_path / "trust" / "bd-gw"
    trust.mkdir(parents=True)
    shutil.copy(tmp_path / "keys" / f"{kid}.jwk", trust)
    signer = Signer.from_file(tmp_path / "keys" / "private.pem")
    rx = BackgroundReceiver(tmp_path / "rx", tmp_path / "trust")
    rx.start()
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config(plc.port, rx, 120))
    gw = Gateway(load_config(path), signer)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(gw.run(stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        store = rx.receiver.store
        first_hash = gw.cfg.config_hash
        await wait_for(lambda: store.basic_data("bd-gw") is not None, 20, "the first basic data at the receiver")
        first = store.basic_data("bd-gw")
        assert first["config_hash"] == first_hash and first["doc"]["installations"][0]["alpha"] == 2.0
        path.write_text(gateway_config(plc.port, rx, 20))   # 20 people within 500 m: alpha 1.0
        assert await reload_from_file(gw) is True
        second_hash = gw.cfg.config_hash
        assert second_hash != first_hash
        await wait_for(lambda: (store.basic_data("bd-gw") or {}).get("config_hash") == second_hash, 20,
                       "the reload's basic data at the receiver")
        second = store.basic_data("bd-gw")
        assert second["seq"] > first["seq"] and second["doc"]["installations"][0]["alpha"] == 1.0
        assert second["doc"]["installations"][0]["R"] == pytest.approx(first["doc"]["installations"][0]["R"] / 2)
        # served to the gateway's own signed request, over HTTPS
        async with httpx.AsyncClient(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
            p = "/v1/gateways/bd-gw/basic-data"
            r = await c.get(p, headers=signed_request_headers(signer, "bd-gw", p))
        assert r.status_code == 200 and r.json()["doc"]["points"][0]["code"] == "330100000001H01T101.level"
        # the chain itself: two basic_data records, in order, each with its config's hash
        records = [(b.seq, e) for b in store.batches("bd-gw") for e in decode_unverified(b.jws)[1]["events"]
                   if e.get("type") == "basic_data"]
        assert [e["config_hash"] for _, e in records] == [first_hash, second_hash]
        assert [s for s, _ in records] == [first["seq"], second["seq"]]
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        rx.stop()
        await plc.stop()
