"""The read-only status page (gateway.ops.web) against real peers: the daemon as a child process (``hazard-gateway
run``) polling the HIL simulators, a real headless chromium driven by chromedriver, real TCP and TLS clients.
Nothing is mocked.

1. the browser (zh-CN) shows the alarm the simulator raises, the interlock trip, a trend chart with points and the
   alarm limits, and Chinese labels; the test writes docs/images/status-page.png (README, "Status page");
2. 50 slow connections during a trip cost the safety path nothing: the trip is confirmed within the bound of
   tests/safety/test_interlocks_e2e.py, a normal client is answered (200, or 503 at the cap), the connections over
   the cap get 503 at once and the others are cut at the request deadline;
3. ``check`` refuses a non-loopback ``web.listen`` without TLS and credentials at FILE:LINE:COL and accepts it with
   them; over TLS a wrong password gets 401, the right one 200, and a POST 405.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import shutil
import ssl
import threading
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import run_cli as cli, tank_overfill_config, wait_for
from gateway.yamlload import load_yaml
from hil.rig import GatewayProc, free_port, make_keys

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "status-page.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def get(port: int, path: str, *, headers: dict[str, str] | None = None, timeout_s: float = 3.0,
        tls: ssl.SSLContext | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:port: (status, headers, body)."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout_s, context=tls) if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s))
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def api_status(port: int) -> dict | None:
    try:
        code, _, body = get(port, "/api/status")
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


# ------------------------------------------------------------------------------- a daemon on the tank PLC

@contextlib.asynccontextmanager
async def plc_daemon(tmp_path: Path, web: str):
    """The tank PLC simulator in this process and ``hazard-gateway run`` on it, with ``web`` as its web: line;
    yields (plc, web port, daemon)."""
    from hil.tank_plc import TankPlc

    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    plc.set_level("T101", 9.0)
    port = free_port()
    (tmp_path / "gw.yaml").write_text(tank_overfill_config(
        plc.port, gateway_id="web-test", store="{commit_interval_ms: 50, max_bytes: 1099511627776}",
        extra=web.format(port=port), heartbeat="heartbeat: {address: 40101, interval_ms: 200}",
        alarms="{H: 10.5, HH: {setpoint: 11.0, deadband: 0.1, latching: true}}"))
    gw = GatewayProc(tmp_path / "gw.yaml", tmp_path / "gateway.log").start()
    try:
        await wait_for(lambda: ((api_status(port) or {}).get("status") or {}).get("tags", {}).get("T101.level"), 20,
                       "the page serving a snapshot with T101.level", step_s=0.2, proc=gw.proc,
                       log=tmp_path / "gateway.log", in_thread=True)
        yield plc, port, gw
    finally:
        if gw.alive():
            assert gw.term(30) == 0, (tmp_path / "gateway.log").read_text()[-3000:]
        await plc.stop()


# ------------------------------------------------------------------------------- 1. the browser

def chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--lang=zh-CN", "--window-size=1280,900", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log")))


def demo_config(tmp_path: Path, eps: dict, web_port: int) -> Path:
    """config/demo.yaml pointed at the farm's endpoints, without the uplink, with the page on web_port."""
    doc, _ = load_yaml(ROOT / "config" / "demo.yaml")
    doc["gateway"]["state_dir"] = str(tmp_path / "state")
    doc["keys"]["private_key"] = str(tmp_path / "keys" / "private.pem")
    del doc["uplink"]
    for dev in doc["devices"]:
        if dev["protocol"] == "modbus_tcp":
            dev["host"], dev["port"] = "127.0.0.1", eps["modbus_tcp"][1]
        elif dev["protocol"] == "modbus_rtu":
            dev["port"] = eps["serial_link"]
        elif dev["protocol"] == "opcua":
            dev["endpoint"] = eps["opcua"]
    doc["web"] = {"listen": f"127.0.0.1:{web_port}"}
    path = tmp_path / "gateway.yaml"
    with path.open("w", encoding="utf-8") as f:
        YAML(typ="rt").dump(doc, f)
    return path


@pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                    reason="chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                           ".ci/run does)")
async def test_browser_shows_the_alarm_the_trip_a_trend_and_chinese_labels(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hil.farm import TankFarm

    farm = TankFarm()
    eps = await farm.start(tmp_path / "farm")
    farm.set_inflow("T101", 0.0)
    port = free_port()
    make_keys(tmp_path)
    gw = GatewayProc(demo_config(tmp_path, eps, port), tmp_path / "gateway.log").start()
    driver = None
    try:
        await wait_for(lambda: len(((api_status(port) or {}).get("status") or {}).get("tags", {})) >= 10, 30,
                       "the page serving the farm's tags", step_s=0.2, proc=gw.proc, log=tmp_path / "gateway.log",
                       in_thread=True)
        await asyncio.sleep(2.0)   # a few seconds of stored readings for the trend
        driver = await asyncio.to_thread(chromium, tmp_path)
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{port}/")

        def until(script: str, what: str, timeout_s: float = 20.0):
            return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
                lambda d: d.execute_script(script), message=what)

        await asyncio.to_thread(until, "return document.getElementById('no-alarms')", "the empty alarm list")
        # the simulator raises the alarms: T101 over its HH level (overfill trip), GD1 at gas level 1
        farm.set_level("T101", 11.3)
        farm.set_lel(1, 30.0)
        row = await asyncio.to_thread(until, "return document.querySelector('tr[data-alarm=\"T101.level.HH\"]')",
                                      "the T101.level.HH alarm row")
        text = await asyncio.to_thread(lambda: row.text)
        assert "未确认" in text and "P1" in text, text                  # unacknowledged, in Chinese
        assert "锁存" in text, text                                      # a latching alarm
        await asyncio.to_thread(until, "return document.querySelector('tr[data-alarm=\"GD1.gas.H\"]')",
                                "the gas level 1 alarm row")
        gas = await asyncio.to_thread(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-alarm="GD1.gas.H"]').text)
        assert "一级报警" in gas, gas
        il = await asyncio.to_thread(until, """
            var r = document.querySelector('tr[data-interlock="T101_overfill"]');
            return r && r.textContent.indexOf('联锁动作') >= 0 && r.textContent""", "T101_overfill tripped")
        assert "1oo1" in il
        await asyncio.to_thread(until, """
            var r = document.querySelector('tr[data-output="XV101"]'); return r && r.textContent.indexOf('是') >= 0""",
                                "XV101 confirmed by read-back")
        # labels: the page is in Chinese (Accept-Language zh-CN), with the standards' terms
        heads = await asyncio.to_thread(driver.execute_script,
                                        "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        assert any(h.startswith("活动报警") for h in heads) and "联锁" in heads, heads
        assert any("重大危险源" in h for h in heads), heads
        hazard = await asyncio.to_thread(lambda: driver.find_element(By.ID, "hazard").text)
        assert "设计分级" in hazard and "当前存量" in hazard and "二级" in hazard, hazard
        # the trend of T101.level (picked in the tag list): points from the store, and its H and HH limits
        await asyncio.to_thread(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-tag="T101.level"]').click())
        n = await asyncio.to_thread(until, """
            var c = document.getElementById('trend-chart');
            return c.dataset.tag === 'T101.level' && window.statusPage.chart && window.statusPage.chart.data[0].length""",
                                    "a trend chart with points")
        assert n > 0
        limits = await asyncio.to_thread(driver.execute_script,
                                         "return document.getElementById('trend-chart').dataset.limits")
        configured = (await asyncio.to_thread(api_status, port))["limits"]["T101.level"]
        assert {x["kind"] for x in configured} >= {"H", "HH"} and limits == str(len(configured))
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        await asyncio.to_thread(driver.execute_script, "window.scrollTo(0, 0)")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(driver.save_screenshot, str(SCREENSHOT))
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        if gw.alive():
            gw.term(30)
        await farm.stop()


# ------------------------------------------------------------------------------- 2. slow connections, a trip

async def test_fifty_slow_connections_during_a_trip_cost_the_safety_path_nothing(tmp_path):
    from gateway.ops.web.server import REQUEST_DEADLINE_S

    cap = 16
    async with plc_daemon(tmp_path, "web: {{listen: 127.0.0.1:{port}, max_connections: %d}}" % cap) as (plc, port, _):
        slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _i in range(50):
            slow.append(await asyncio.open_connection("127.0.0.1", port))
        opened = time.monotonic()
        stop = asyncio.Event()

        async def first_bytes(r: asyncio.StreamReader) -> bytes:
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                return await asyncio.wait_for(r.read(12), 1.0)
            return b""

        # the connections over the cap are refused with 503 at once
        heads = await asyncio.gather(*(first_bytes(r) for r, _ in slow))
        refused = sum(h.startswith(b"HTTP/1.1 503") for h in heads)
        assert refused == 50 - cap, heads
        slow = [c for c, h in zip(slow, heads) if not h]

        async def dribble(w: asyncio.StreamWriter) -> None:   # one byte a second, never a whole request line
            for b in b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60:
                with contextlib.suppress(OSError):
                    w.write(bytes([b]))
                    await w.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                if stop.is_set() or w.is_closing():
                    return

        drips = [asyncio.create_task(dribble(w)) for _, w in slow]
        try:
            # the trip: T101 rises through HH 11.0
            plc.watch("T101.level", 11.0)
            plc.set_level("T101", 10.9)
            plc.set_inflow("T101", 6.0)
            await wait_for(lambda: not plc.coil("XV101"), 10, "XV101 closed at the PLC")
            plc.set_inflow("T101", 0.0)
            crossed = plc.first_crossing("T101.level", 11.0)
            write = next(e for e in plc.events if e["kind"] == "coil_write" and e["coil"] == "XV101" and e["value"] == 0)
            assert write["t"] - crossed < 2.0, write["t"] - crossed    # the bound of the e2e overfill test

            # a normal client is answered at once: 200, or 503 while the slow ones hold the cap
            def answer() -> tuple[int, float]:
                t0 = time.monotonic()
                code, _, _ = get(port, "/api/status", timeout_s=2.0)
                return code, time.monotonic() - t0

            code, took = await asyncio.to_thread(answer)
            assert code in (200, 503) and took < 1.0, (code, took)

            # the gateway confirmed the trip by read-back, as it does without the slow clients (a few ms)
            def confirmed() -> dict | None:
                st = api_status(port)
                trips = ((st or {}).get("status") or {}).get("trips") or []
                return next((t for t in trips if t["tag"] == "XV101" and t["confirmed"]), None)

            trip = await wait_for(confirmed, 15, "the trip confirmed on /api/status", step_s=0.3, in_thread=True)
            assert trip["latency_confirm_ms"] < 1000, trip

            # the slow ones holding a slot are cut at the request deadline: no slot is held for ever
            async def closed(r: asyncio.StreamReader) -> bool:
                try:
                    while True:
                        left = REQUEST_DEADLINE_S + 3.0 - (time.monotonic() - opened)
                        if left <= 0:
                            return False
                        data = await asyncio.wait_for(r.read(4096), left)
                        if not data:
                            return True
                except (asyncio.TimeoutError, TimeoutError):
                    return False
                except OSError:
                    return True

            results = await asyncio.gather(*(closed(r) for r, _ in slow))
            assert all(results), f"{results.count(False)} slow connections still open after the deadline"
            code, _, body = await asyncio.to_thread(get, port, "/api/status")
            assert code == 200 and json.loads(body)["status"]["gateway_id"] == "web-test"
        finally:
            stop.set()
            await asyncio.gather(*drips, return_exceptions=True)
            for _, w in slow:
                w.close()


async def test_the_page_is_read_only_and_bounded(tmp_path):
    async with plc_daemon(tmp_path, "web: {{listen: 127.0.0.1:{port}}}") as (_, port, _gw):
        code, headers, body = await asyncio.to_thread(get, port, "/", headers={"Accept-Language": "en-GB,en"})
        assert code == 200 and b"<title>Status page</title>" in body and "script-src 'self'" in headers[
            "content-security-policy"]
        code, _, body = await asyncio.to_thread(get, port, "/", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
        assert "<title>状态页</title>" in body.decode()
        for method in ("POST", "PUT", "DELETE"):
            code, headers, _ = await asyncio.to_thread(get, port, "/api/status", method=method)
            assert code == 405 and headers["allow"] == "GET, HEAD"
        code, _, _ = await asyncio.to_thread(get, port, "/", headers={"Host": "plant.example.com"})
        assert code == 421                           # a rebound DNS name cannot read the page
        code, _, _ = await asyncio.to_thread(get, port, "/", headers={"X-Big": "a" * 9000})
        assert code in (400, 431)
        code, _, _ = await asyncio.to_thread(get, port, "/static/..%2fserver.py")
        assert code == 404
        code, _, body = await asyncio.to_thread(get, port, "/api/trend?tag=T101.level&hours=1")
        trend = json.loads(body)
        assert code == 200 and trend["unit"] == "m" and trend["points"] and len(trend["points"]) <= 1000
        assert [(x["kind"], x["setpoint"]) for x in trend["limits"]] == [("HH", 11.0), ("H", 10.5)]
        code, _, _ = await asyncio.to_thread(get, port, "/api/trend?tag=T101.level&hours=1000")
        assert code == 400
        code, _, _ = await asyncio.to_thread(get, port, "/api/trend?tag=nope&hours=1")
        assert code == 404


# ------------------------------------------------------------------------------- 3. check, TLS and credentials

def web_config(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(tank_overfill_config(1502, gateway_id="web-check", store="{max_bytes: 1099511627776}",
                                         extra=web))
    return path


async def test_check_refuses_a_remote_page_without_tls_and_credentials(tmp_path):
    make_keys(tmp_path)
    path = web_config(tmp_path, "web: {listen: 0.0.0.0:18443}")
    rc, out, err = await cli("check", str(path))
    assert rc == 2, (out, err)
    assert f"{path}:4:" in err and "web.listen" in err and "tls" in err and "credentials_file" in err, err
    line = next(x for x in err.splitlines() if "web.listen" in x)
    assert line.split(":")[1:3] == ["4", str(len("web: {listen: ") + 1)], line   # FILE:LINE:COL at the value

    path = web_config(tmp_path, "web: {listen: 0.0.0.0:18443, tls: {cert_file: tls/server.crt, key_file: "
                                "tls/server.key}}")
    rc, out, err = await cli("check", str(path))
    assert rc == 2 and "web.listen" in err and "credentials_file" in err, (out, err)


async def test_remote_page_over_tls_wants_the_right_password(tmp_path):
    from gateway.config import load_config
    from gateway.ops.web.auth import make_hash
    from gateway.ops.web.serve import build_server
    from gateway.ops.web.snapshot import PageData
    from gateway.tlsutil import make_self_signed

    make_keys(tmp_path)
    cert, _key = make_self_signed(tmp_path / "tls")
    creds = tmp_path / "web-users"
    creds.write_text("# operators of the status page\noperator:" + make_hash("s3cret pass", iterations=100_000) + "\n")
    creds.chmod(0o644)
    port = free_port("0.0.0.0")
    path = web_config(tmp_path, f"web: {{listen: 0.0.0.0:{port}, tls: {{cert_file: tls/server.crt, key_file: "
                                f"tls/server.key}}, credentials_file: web-users}}")
    rc, out, err = await cli("check", str(path))
    assert rc == 2 and "web.credentials_file" in err and "chmod 600" in err, (out, err)   # a secret file
    creds.chmod(0o600)
    rc, out, err = await cli("check", str(path))
    assert rc == 0, (out, err)

    data = PageData()
    data.publish({"gateway_id": "web-check", "time": "2026-01-01T00:00:00.000Z", "tags": {}})
    server = build_server(load_config(path), data)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tls = ssl.create_default_context(cafile=str(cert))

        def basic(user: str, pw: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

        code, headers, _ = await asyncio.to_thread(get, port, "/api/status", tls=tls)
        assert code == 401 and headers["www-authenticate"].startswith("Basic ")
        code, _, _ = await asyncio.to_thread(get, port, "/api/status", tls=tls, headers=basic("operator", "wrong"))
        assert code == 401
        code, _, _ = await asyncio.to_thread(get, port, "/api/status", tls=tls, headers=basic("nobody", "s3cret pass"))
        assert code == 401
        code, headers, body = await asyncio.to_thread(get, port, "/api/status", tls=tls,
                                                      headers=basic("operator", "s3cret pass"))
        assert code == 200 and json.loads(body)["status"]["gateway_id"] == "web-check"
        assert "strict-transport-security" in headers
        code, _, _ = await asyncio.to_thread(get, port, "/api/status", tls=tls, method="POST",
                                             headers=basic("operator", "s3cret pass"))
        assert code == 405
        # plain HTTP to the TLS port gets no page
        try:
            code, _, _ = await asyncio.to_thread(get, port, "/api/status")
        except (http.client.HTTPException, OSError):
            code = None
        assert code != 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_language_for_accept():
    from gateway.i18n import language_for_accept

    assert language_for_accept("zh-CN,zh;q=0.9,en;q=0.8") == "zh_CN"
    assert language_for_accept("en-US,en;q=0.9,zh-CN;q=0.8") == "en"
    assert language_for_accept("fr-FR,fr;q=0.9,zh;q=0.5") == "zh_CN"
    assert language_for_accept("zh;q=0, en") == "en"
    assert language_for_accept(None) == "en" and language_for_accept("*") == "en" and language_for_accept(";;") == "en"


def test_credentials_file_errors_name_the_line(tmp_path):
    from gateway.ops.web.auth import load_credentials, make_hash

    f = tmp_path / "users"
    f.write_text("a:" + make_hash("x", iterations=100_000) + "\nb:md5$abc\n")
    with pytest.raises(ValueError, match=r"line 2: hash is not"):
        load_credentials(f)
    f.write_text("a:pbkdf2_sha256$1000$c2FsdA$ZGln\n")
    with pytest.raises(ValueError, match=r"line 1: pbkdf2_sha256 needs at least 100000 iterations"):
        load_credentials(f)
    f.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no user:HASH line"):
        load_credentials(f)

