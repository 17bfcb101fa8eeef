"""The record files the gateway creates are mode 0640 whatever the umask (gateway.filemode).

The store database and its -wal / -shm, status.json and the safety state (also the chain position
file, written the same way) hold plant records: the gateway user reads and writes them, its group
reads them, others nothing. SQLite alone creates a database 0644 under any umask, and a plain
write_text gives 0644 under umask 0022 and 0666 under 0000.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading
from gateway.safety.safety_state import write_atomic
from gateway.record.store import Store

pytestmark = pytest.mark.timeout(60)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=lambda u: f"umask{u:03o}")
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_the_store_database_and_its_wal_and_shm_are_0640(tmp_path: Path, umask: int):
    db = tmp_path / "state" / "store.sqlite"
    st = Store(db, commit_interval_s=0.05).open()
    try:
        assert st.put_reading(Reading(tag="LT-1", value=1.5, unit="m", quality=Quality.GOOD, ts=time.time()))
        assert st.flush(10)
        files = {p.name: mode(p) for p in db.parent.iterdir() if p.name.startswith("store.sqlite")}
        assert {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm"} <= set(files), files
        assert files == {name: 0o640 for name in files}, {n: oct(m) for n, m in files.items()}
    finally:
        st.close()


async def test_status_json_is_0640(tmp_path: Path, umask: int):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway: {id: modes, state_dir: state}\nkeys: {private_key: keys/private.pem}\n"
                   "devices:\n  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, "
                   "tags: [{name: T1.level, address: 30001, type: float32, unit: m}]}\n")
    (tmp_path / "state").mkdir()
    gw = Gateway(load_config(cfg))
    await gw.write_status()   # the store is not open: the status is written without its counters
    assert mode(tmp_path / "state" / "status.json") == 0o640
    assert not (tmp_path / "state" / "status.tmp").exists()


def test_the_safety_state_file_is_0640(tmp_path: Path, umask: int):
    write_atomic(tmp_path / "safety-state.json", {"format": 1})
    assert mode(tmp_path / "safety-state.json") == 0o640
