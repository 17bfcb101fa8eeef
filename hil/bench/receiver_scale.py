"""The regulator's reference receiver at platform scale: 1,000 gateways into 1 and 2 receiver processes.

``run(...) -> dict`` (for :mod:`hil.bench.run`) or
``python -m hil.bench.receiver_scale [--json FILE] [--quick] [--gateways N] [--batches N] ...``.

Why: a provincial platform takes uploads from thousands of gateways at once (nationally about
800 million records a day from about 440,000 monitoring points in 2022, about 9,300 records per
second on average). The target (hil/bench/README.md, Targets) is that ONE receiver process holds
that national average with every check on: Ed25519 signature, key binding, hash chain, seq
continuity and dedup by (gateway_id, seq), each batch committed before its ack
(gateway.regulator.receiver, module docstring).

What is measured, in one run:

1. **Fleet** (before any timing): ``gateways`` simulated gateways, each with its own Ed25519 key
   (derived from ``seed``, so the fleet is reproducible and cacheable) bound to it in the trust
   directory (``trust/<gateway_id>/<kid>.jwk``, gateway.regulator.verify.load_trust), and a
   pre-signed chain of ``batches`` batches each (seq 1.., ``prev`` = chain_hash of the previous
   batch), payloads shaped as gateway.record.batches builds them (``clock``, ``readings`` of
   ``Reading.to_record()`` form, ``events``, ``gaps``), ``readings_min..readings_max`` readings
   per batch (uniform), 20-60 tags per gateway, about 1 % uncertain and 0.5 % bad readings, an
   alarm event in about 5 % of the batches. Signed in a process pool (one worker per CPU);
   with ``cache_dir`` the fleet is kept there and reused by later runs with the same sizes.
2. **Receivers**: for each count in ``processes`` (1, then 2) a fresh database and that many
   receiver processes (``python -m gateway.regulator.receiver``: run_receiver, as ``hazard-gateway
   receiver`` runs it; HTTPS, the same certificate, the same trust directory, the same database).
   The gateways are SPLIT between the processes (gateway i goes to process i mod N), as an L4
   load balancer does that pins each gateway's keep-alive connection to one backend. Chosen over
   a round-robin client because it is how a gateway's one connection meets a platform, and it
   keeps the accounting clean: each process has its own client and a known half of the load.
   Per batch the work is the same either way (a gateway sends n+1 only after n's ack, so even
   round-robin would never have two processes on one gateway's chain at once). Both processes
   write the one database and contend there (WAL, locks, the server's CPU) as a platform's do.
3. **Clients**: one client process per receiver process (its own CPU account, not the
   receiver's), ``connections`` HTTPS keep-alive connections each (http.client, one thread per
   connection). A gateway's batches go strictly in seq order (batch n+1 is sent only after n is
   acknowledged, as a gateway does); across gateways they interleave: one FIFO of ready
   gateways, a gateway re-queued at the tail after each ack. 503 answers are retried after
   Retry-After; a lost connection reconnects and resends the same bytes (answered "duplicate"
   if it had been stored). Timed from the clients' start signal to the last ack. Before that,
   ``keepalive_rtt_ms``: 10 sequential ``GET /v1/health`` on one idle keep-alive connection
   (what one gateway sees per request; it includes any Nagle / delayed-ACK stall, RFC 896,
   RFC 1122 s.4.2.3.2, of a server socket without TCP_NODELAY).
4. **Exactly once**: after the receivers stop, the database holds every batch once (row count,
   sum of n_readings, every gateway with seq 1..batches and nothing else), and for a sample of
   ``sample`` gateways the stored JWS are byte-identical to those sent and pass the offline
   verifier (gateway.regulator.verify.verify_files: signature, binding, seq continuity, chain).
5. **Bare insert** (the reference, same run, same database server; once before and once after
   the receiver runs, the mean reported, so load from others on a shared machine weighs on both
   sides alike; ``spread`` says how far the two differ): the same batches rows the
   receiver writes (the receiver's own ``batches`` table, made on a fresh database by
   gateway.regulator.storage.ReceiverStore's migrations as a receiver's start makes it; all nine
   columns with the values the receiver computes) inserted by one
   psycopg 3 connection (sqlite3 for SQLite), one INSERT and one COMMIT per batch, like the
   receiver's per-batch transaction: readings/s of that loop. Also, for scale, the same rows
   in one COPY and one commit (``bare_copy_readings_per_s``; PostgreSQL only).

CPU: utime + stime from /proc/PID/stat (proc(5), hil.bench.ProcStat) of each receiver process,
of the database server (PostgreSQL: the postmaster and its backends) and of each client
(os.times() in the client); ``machine_cpu_busy`` is the whole machine's (/proc/stat) and
``others_cpu_s`` what other processes used meanwhile (a shared machine).
``readings_per_receiver_cpu_s`` = readings / receiver CPU-seconds is the figure that scales
honestly on a 2-core machine: with 2 receivers, 2 clients and the database server sharing 2
cores, wall throughput cannot double, while readings per receiver CPU-second shows whether a
second process costs per-reading efficiency (it should stay flat).

Database: PostgreSQL (a throw-away hil.pgcluster.PgCluster, ``fsync`` on by default so an ack
is durable as in production; ``pg_fsync=False`` to measure without it) when the server binaries
and the receiver's PostgreSQL store are present; otherwise SQLite files (the receiver's own
store, WAL, synchronous=FULL), and ``backend`` / ``backend_note`` say so.

Errors: RuntimeError (one line) when a receiver or client does not start or a client fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import queue
import random
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from hil.bench import REPO, ProcStat, percentile, tree_cpu_s

#: the national average the target is held to: ~800 million records/day (2022) / 86,400 s
NATIONAL_AVG_READINGS_PER_S = 9300
FLEET_VERSION = 1        # bump when the generated payloads change (invalidates the cache)
BASE_TS = 1_767_225_600  # 2026-01-01T00:00:00Z: readings' time base (fixed, so the fleet is reproducible)
_COLS = ("gateway_id", "seq", "jws", "hash", "kid", "created_at", "received_at", "n_readings", "n_events")

# tag kinds of a tank farm: (prefix, suffix, unit, low, high)
_KINDS = (("LT", "level", "m", 0.2, 14.0), ("TT", "temperature", "degC", -5.0, 45.0),
          ("PT", "pressure", "kPa", 95.0, 420.0), ("GD", "gas", "%LEL", 0.0, 18.0),
          ("FT", "flow", "m3/h", 0.0, 85.0))


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has been busy since boot, all processes (/proc/stat ``cpu`` line: user, nice,
    system, irq, softirq, steal; proc(5)): what others on a shared machine used shows as busy minus ours."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _log(msg: str) -> None:
    print(f"receiver_scale: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ the fleet
def gateway_id(i: int) -> str:
    """The id of simulated gateway i (0-based): ``plant-00001`` ..."""
    return f"plant-{i + 1:05d}"


def _sign_gateways(job: tuple[int, list[int], int, int, int, str, str]) -> tuple[int, int, int]:
    """Pool worker: keys, trust files and the signed chains of some gateways, appended as JSON lines
    ``{"i", "gateway_id", "kid", "jws": [...], "readings": [...]}`` to ``out``. Returns
    (gateways, batches, readings)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.chain.signing import Signer, chain_hash
    from gateway.model import rfc3339

    seed, indices, n_batches, rmin, rmax, out, trust = job
    n_b = n_r = 0
    with open(out, "w", encoding="ascii") as fh:
        for i in indices:
            rnd = random.Random(f"receiver_scale:{seed}:{i}")
            key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"receiver_scale:{seed}:{i}".encode()).digest())
            signer = Signer(key)
            gid = gateway_id(i)
            gdir = Path(trust) / gid
            gdir.mkdir(parents=True, exist_ok=True)
            (gdir / f"{signer.kid}.jwk").write_text(json.dumps(signer.public_jwk, indent=2, sort_keys=True) + "\n")
            tags = []
            for k in range(rnd.randint(20, 60)):
                prefix, suffix, unit, lo, hi = _KINDS[k % len(_KINDS)]
                tags.append((f"{prefix}{101 + k}.{suffix}", unit, lo, hi))
            config_hash = hashlib.sha256(f"config:{gid}".encode()).hexdigest()[:16]
            t = BASE_TS + rnd.uniform(0, 60)
            cursor = 0
            prev = None
            chain: list[str] = []
            counts: list[int] = []
            for seq in range(1, n_batches + 1):
                readings = []
                for _ in range(rnd.randint(rmin, rmax)):
                    tag, unit, lo, hi = tags[cursor % len(tags)]
                    ts = t + (cursor // len(tags)) * 1.0 + (cursor % len(tags)) * 0.002
                    cursor += 1
                    u = rnd.random()
                    if u < 0.005:
                        rec = {"tag": tag, "value": None, "unit": unit, "quality": "bad", "reason": "timeout"}
                    elif u < 0.015:
                        rec = {"tag": tag, "value": round(rnd.uniform(lo, hi), 3), "unit": unit,
                               "quality": "uncertain", "reason": "stale"}
                    else:
                        rec = {"tag": tag, "value": round(rnd.uniform(lo, hi), 3), "unit": unit, "quality": "good",
                               "reason": None}
                    rec.update(ts=rfc3339(ts), ts_source="local")
                    readings.append(rec)
                now = t + (cursor // len(tags)) * 1.0 + 0.5
                events = []
                if rnd.random() < 0.05:
                    tag = tags[rnd.randrange(len(tags))][0]
                    events.append({"type": "alarm", "id": f"{tag}.HH", "tag": tag, "kind": "HH",
                                   "from_state": "normal", "to_state": "unack_active", "value": 13.2, "limit": 13.0,
                                   "priority": "high", "level": 1, "ts": rfc3339(now - 0.3), "user": None,
                                   "reason": None, "first_out": True, "action": None, "hidden": None})
                payload = {"gateway_id": gid, "seq": seq, "prev": prev, "created_at": rfc3339(now),
                           "config_hash": config_hash, "clock": {"synchronised": True, "last_step_s": None},
                           "readings": readings, "events": events, "gaps": []}
                jws = signer.sign(payload)
                chain.append(jws)
                counts.append(len(readings))
                prev = chain_hash(jws)
            line = {"i": i, "gateway_id": gid, "kid": signer.kid, "jws": chain, "readings": counts}
            fh.write(json.dumps(line) + "\n")
            n_b += len(chain)
            n_r += sum(counts)
    return len(indices), n_b, n_r


def make_fleet(directory: Path, gateways: int, batches: int, readings_min: int, readings_max: int, seed: int = 1,
               workers: int | None = None) -> dict[str, Any]:
    """Keys, trust directory and signed chains of the fleet in ``directory`` (``trust/``, ``batches-*.jsonl``,
    ``fleet.json``); reused when ``fleet.json`` there says the same sizes. Returns the fleet.json dict:
    {"gateways", "batches", "readings", "sign_s", "reused", ...}."""
    params = {"version": FLEET_VERSION, "gateways": gateways, "batches_per_gateway": batches,
              "readings_min": readings_min, "readings_max": readings_max, "seed": seed}
    meta = directory / "fleet.json"
    if meta.is_file():
        with contextlib.suppress(ValueError, OSError):
            doc = json.loads(meta.read_text())
            if doc.get("params") == params:
                return {**doc, "reused": True}
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "trust").mkdir(parents=True)
    n_workers = workers or os.cpu_count() or 1
    chunks = [list(range(k, gateways, n_workers * 4)) for k in range(min(gateways, n_workers * 4))]
    jobs = [(seed, c, batches, readings_min, readings_max, str(directory / f"batches-{k:03d}.jsonl"),
             str(directory / "trust")) for k, c in enumerate(chunks)]
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(n_workers) as pool:
        done = list(pool.map(_sign_gateways, jobs))
    doc = {"params": params, "gateways": sum(d[0] for d in done), "batches": sum(d[1] for d in done),
           "readings": sum(d[2] for d in done), "sign_s": round(time.perf_counter() - t0, 2),
           "sign_workers": n_workers}
    meta.write_text(json.dumps(doc) + "\n")
    return {**doc, "reused": False}


def load_fleet(directory: Path, part: int = 0, parts: int = 1) -> list[dict[str, Any]]:
    """The gateways (``{"i", "gateway_id", "kid", "jws", "readings"}``) with i % parts == part, by i."""
    out = []
    for f in sorted(directory.glob("batches-*.jsonl")):
        with open(f, encoding="ascii") as fh:
            for line in fh:
                g = json.loads(line)
                if g["i"] % parts == part:
                    out.append(g)
    out.sort(key=lambda g: g["i"])
    return out


# ------------------------------------------------------------------------------------------ the client
class _Connection(http.client.HTTPSConnection):
    """http.client's HTTPS connection with TCP_NODELAY (as urllib3 sets it by default): http.client
    writes the request head and the body separately, and Nagle's algorithm (RFC 896) would hold the body
    until the receiver's delayed ACK of the head (about 40 ms per batch), measuring TCP timers instead of
    the receiver."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client_main(url: str, cafile: str, fleet_dir: str, part: int, parts: int, connections: int) -> int:
    """Client process body: load this part of the fleet, print READY, wait for GO on stdin, deliver,
    print one JSON line with the outcome."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    gws = load_fleet(Path(fleet_dir), part, parts)
    chains = [[j.encode("ascii") for j in g["jws"]] for g in gws]
    total = sum(len(c) for c in chains)
    print(f"READY {len(gws)} {total}", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    ready: queue.Queue[tuple[int, int] | None] = queue.Queue()
    for g in range(len(chains)):
        ready.put((g, 0))
    lock = threading.Lock()
    state = {"done": 0, "accepted": 0, "duplicate": 0, "readings": 0, "retries": 0, "reconnects": 0,
             "failed_gateways": 0}
    errors: list[str] = []
    latencies: list[float] = []
    n_threads = max(1, min(connections, len(chains)))

    def finish_one(n: int = 1) -> None:
        state["done"] += n
        if state["done"] >= total:
            for _ in range(n_threads):
                ready.put(None)

    def worker() -> None:
        conn: _Connection | None = None
        lat: list[float] = []
        while True:
            item = ready.get()
            if item is None:
                break
            g, r = item
            body = chains[g][r]
            attempt = 0
            while True:
                attempt += 1
                if conn is None:
                    conn = _Connection(u.hostname, u.port, context=ctx, timeout=120)
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v1/batches", body=body, headers={"Content-Type": "application/jose"})
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    with lock:
                        state["reconnects"] += 1
                    if attempt >= 5:
                        status, data = 0, f"{type(exc).__name__}: {exc}".encode()
                    else:
                        time.sleep(0.2)
                        continue
                if status == 503 and attempt < 50:
                    with lock:
                        state["retries"] += 1
                    time.sleep(float(resp.getheader("Retry-After") or 1))
                    continue
                break
            lat.append(time.perf_counter() - t0)
            doc: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                doc = json.loads(data)
            with lock:
                if status == 200 and doc.get("status") in ("accepted", "duplicate"):
                    state[doc["status"]] += 1
                    state["readings"] += gws[g]["readings"][r]
                    if r + 1 < len(chains[g]):
                        ready.put((g, r + 1))
                    finish_one()
                else:
                    if len(errors) < 10:
                        errors.append(f"{gws[g]['gateway_id']} seq {r + 1}: {status} {data[:200]!r}")
                    state["failed_gateways"] += 1
                    finish_one(len(chains[g]) - r)   # the rest of this chain cannot go (seq order)
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(lat)

    cpu0 = os.times()
    t_start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_threads)]
    for t in threads:
        t.start()
    if total == 0:
        finish_one(0)
    for t in threads:
        t.join()
    t_end = time.monotonic()
    cpu1 = os.times()
    print(json.dumps({"part": part, "gateways": len(gws), "batches": total, "t_start": t_start, "t_end": t_end,
                      "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 3),
                      "threads": n_threads, **state, "errors": errors,
                      "latency_ms": {"p50": _ms(percentile(latencies, 50)), "p99": _ms(percentile(latencies, 99)),
                                     "max": _ms(max(latencies, default=None))}}), flush=True)
    return 0


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 2)


class _Client:
    """One client process (``python -m hil.bench.receiver_scale --client ...``)."""

    def __init__(self, url: str, cafile: Path, fleet_dir: Path, part: int, parts: int, connections: int,
                 log: Path) -> None:
        self._err = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil.bench.receiver_scale", "--client", "--url", url, "--ca", str(cafile),
             "--fleet", str(fleet_dir), "--part", str(part), "--parts", str(parts),
             "--connections", str(connections)], cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err, text=True)

    def _line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline() if r else ""

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        line = self._line(timeout_s)
        if not line.startswith("READY"):
            self.close()
            raise RuntimeError(f"client did not load its part of the fleet: {line.strip() or 'no answer'} "
                               f"(see {self._err.name})")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def result(self, timeout_s: float) -> dict[str, Any]:
        line = self._line(timeout_s)
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError(f"client gave no result within {timeout_s:g} s (see {self._err.name})") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f:
                    f.close()
        self._err.close()


# ------------------------------------------------------------------------------------------ database backends
class _Backend:
    """Where the receivers store: fresh databases, the server's CPU, SQL for the checks."""

    name = "?"
    note = ""

    def fresh(self, name: str) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def connect(self, store: str) -> Iterator[Any]:
        raise NotImplementedError

    def ph(self) -> str:
        return "?"

    def server_cpu_s(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class _Sqlite(_Backend):
    name = "sqlite"

    def __init__(self, workdir: Path, note: str) -> None:
        self.dir = workdir / "sqlite"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.note = note

    def fresh(self, name: str) -> str:
        return str(self.dir / f"{name}.sqlite")

    @contextlib.contextmanager
    def connect(self, store: str) -> Iterator[Any]:
        c = sqlite3.connect(store, timeout=30, isolation_level=None)
        try:
            yield c
        finally:
            c.close()


class _Postgres(_Backend):
    name = "postgresql"

    def __init__(self, workdir: Path, fsync: bool) -> None:
        from hil.pgcluster import PgCluster

        self.cluster = PgCluster(workdir / "pg", fsync=fsync, max_connections=100)
        self.cluster.start()
        self.fsync = fsync
        self.note = f"PostgreSQL (hil.pgcluster, fsync {'on' if fsync else 'off'})"
        self._pid: int | None = None
        with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
            self._pid = int((Path(self.cluster.datadir) / "postmaster.pid").read_text().split()[0])

    def fresh(self, name: str) -> str:
        return self.cluster.createdb(name)

    @contextlib.contextmanager
    def connect(self, store: str) -> Iterator[Any]:
        import psycopg

        c = psycopg.connect(store)
        try:
            yield c
        finally:
            c.close()

    def ph(self) -> str:
        return "%s"

    def server_cpu_s(self) -> float:
        return tree_cpu_s(self._pid) if self._pid else 0.0

    def close(self) -> None:
        self.cluster.stop()


def postgres_unavailable() -> str | None:
    """None when the receiver can be benchmarked on PostgreSQL here; else why not (one line)."""
    try:
        from hil import pgcluster
    except ImportError:
        return "hil.pgcluster is not present"
    why = pgcluster.available()
    if why is not None:
        return why
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'hazard-gateway[receiver]')"
    try:
        from gateway.regulator.storage import is_url
    except ImportError:
        return "the receiver has no PostgreSQL store (gateway.regulator.storage)"
    if not is_url("postgresql://x@127.0.0.1/x"):
        return "the receiver's store does not take postgresql:// URLs"
    return None


# ------------------------------------------------------------------------------------------ receivers
class _Receivers:
    """N receiver processes (``python -m gateway.regulator.receiver``) on one store, trust directory and
    certificate."""

    def __init__(self, workdir: Path, n: int, store: str, trust: Path, cert: Path, key: Path) -> None:
        from hil.rig import free_port

        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.logs: list[Path] = []
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            for k in range(n):
                port = free_port()
                log = workdir / f"receiver-{k}.log"
                with open(log, "wb") as fh:
                    p = subprocess.Popen([sys.executable, "-m", "gateway.regulator.receiver", "--listen",
                                          f"127.0.0.1:{port}", "--store", store, "--trust", str(trust), "--cert",
                                          str(cert), "--key", str(key)], cwd=str(REPO), stdout=fh, stderr=fh)
                self.procs.append(p)
                self.logs.append(log)
                self.urls.append(f"https://127.0.0.1:{port}")
                self._wait_listening(p, log)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _wait_listening(p: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "receiver listening on" in log.read_text(errors="replace"):
                return
            if p.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"receiver exited with {p.returncode}: {tail[0]}")
            time.sleep(0.05)
        raise RuntimeError(f"receiver not listening after {timeout_s:g} s (see {log})")

    def cpu_s(self) -> list[float]:
        return [ProcStat(p.pid).cpu_s() for p in self.procs]

    def stop(self) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(20))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


# ------------------------------------------------------------------------------------------ one delivery
def keepalive_rtt_ms(url: str, cafile: Path, n: int = 10) -> dict[str, float | None]:
    """p50 / max ms of ``n`` sequential GET /v1/health on one keep-alive HTTPS connection (client TCP_NODELAY),
    after one warm-up request."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = _Connection(u.hostname, u.port, context=ssl.create_default_context(cafile=str(cafile)), timeout=30)
    times = []
    try:
        for k in range(n + 1):
            t0 = time.perf_counter()
            conn.request("GET", "/v1/health")
            conn.getresponse().read()
            if k:
                times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return {"p50": _ms(percentile(times, 50)), "max": _ms(max(times, default=None))}


def _deliver(workdir: Path, backend: _Backend, fleet_dir: Path, fleet: dict[str, Any], n: int, connections: int,
             cert: Path, key: Path, timeout_s: float, sample: int) -> dict[str, Any]:
    store = backend.fresh(f"rx{n}")
    rx = _Receivers(workdir / f"rx{n}", n, store, fleet_dir / "trust", cert, key)
    clients: list[_Client] = []
    try:
        clients = [_Client(rx.urls[k], cert, fleet_dir, k, n, connections, workdir / f"rx{n}" / f"client-{k}.log")
                   for k in range(n)]
        rtt = keepalive_rtt_ms(rx.urls[0], cert)
        for c in clients:
            c.wait_ready()
        rx_cpu0, db_cpu0, all0 = rx.cpu_s(), backend.server_cpu_s(), machine_busy_s()
        for c in clients:
            c.go()
        results = [c.result(timeout_s) for c in clients]
        rx_cpu1, db_cpu1, all1 = rx.cpu_s(), backend.server_cpu_s(), machine_busy_s()
    finally:
        for c in clients:
            c.close()
        codes = rx.stop()
    wall = max(r["t_end"] for r in results) - min(r["t_start"] for r in results)
    rx_cpu = [round(b - a, 2) for a, b in zip(rx_cpu0, rx_cpu1)]
    check = exactly_once(backend, store, fleet_dir, fleet, sample)
    readings = sum(r["readings"] for r in results)   # acknowledged (accepted or duplicate)
    client_cpu = sum(r["cpu_s"] for r in results)
    db_cpu = round(db_cpu1 - db_cpu0, 2)
    return {
        "processes": n, "store": backend.name, "batches": sum(r["accepted"] for r in results),
        "readings": readings, "wall_s": round(wall, 2),
        "readings_per_s": round(readings / wall) if wall else None,
        "readings_per_s_per_process": round(readings / wall / n) if wall else None,
        "batches_per_s": round(sum(r["accepted"] for r in results) / wall, 1) if wall else None,
        "receiver_cpu_s": rx_cpu,
        "receiver_cpu_util": [round(c / wall, 2) for c in rx_cpu] if wall else None,
        "readings_per_receiver_cpu_s": round(readings / sum(rx_cpu)) if sum(rx_cpu) else None,
        "client_cpu_s": round(client_cpu, 2), "db_server_cpu_s": db_cpu,
        "ours_cpu_busy": round((sum(rx_cpu) + client_cpu + db_cpu) / wall / (os.cpu_count() or 1), 2)
        if wall else None,
        "machine_cpu_busy": round((all1 - all0) / wall / (os.cpu_count() or 1), 2) if wall else None,
        "others_cpu_s": round(max(0.0, (all1 - all0) - sum(rx_cpu) - client_cpu - db_cpu), 2),
        "connections_per_receiver": connections,
        "latency_ms": [r["latency_ms"] for r in results], "keepalive_rtt_ms": rtt,
        "answers": {k: sum(r[k] for r in results) for k in ("accepted", "duplicate", "retries", "reconnects",
                                                             "failed_gateways")},
        "client_errors": [e for r in results for e in r["errors"]][:10],
        "receiver_exit_codes": codes,
        "exactly_once": check,
    }


def exactly_once(backend: _Backend, store: str, fleet_dir: Path, fleet: dict[str, Any],
                 sample: int) -> dict[str, Any]:
    """Every batch of the fleet stored exactly once, and a sample of chains byte-identical and verified
    offline (module docstring, step 4)."""
    from gateway.chain.signing import chain_hash
    from gateway.regulator.verify import verify_files

    per_gw = fleet["params"]["batches_per_gateway"]
    with backend.connect(store) as c:
        rows, readings = c.execute("SELECT count(*), coalesce(sum(n_readings), 0) FROM batches").fetchone()
        bad_gws = c.execute("SELECT count(*) FROM (SELECT gateway_id FROM batches GROUP BY gateway_id "
                            f"HAVING count(*) <> {per_gw} OR min(seq) <> 1 OR max(seq) <> {per_gw}) AS x"
                            ).fetchone()[0]
        n_gws = c.execute("SELECT count(DISTINCT gateway_id) FROM batches").fetchone()[0]
        gws = load_fleet(fleet_dir)
        step = max(1, len(gws) // max(1, sample))
        picked = gws[::step][:sample]
        mismatched = 0
        hash_wrong = 0
        with tempfile.TemporaryDirectory(prefix="rx-sample-") as tmp:
            for g in picked:
                got = c.execute(f"SELECT seq, jws, hash FROM batches WHERE gateway_id = {backend.ph()} ORDER BY seq",
                                (g["gateway_id"],)).fetchall()
                if [j for _, j, _ in got] != g["jws"]:
                    mismatched += 1
                for seq, jws, h in got:
                    hash_wrong += h != chain_hash(jws)
                    (Path(tmp) / f"{g['gateway_id']}-{seq}.jws").write_text(jws)
            report = verify_files(fleet_dir / "trust", [tmp]) if picked else None
    want_readings = sum(sum(g["readings"]) for g in gws)
    ok = (rows == fleet["batches"] and readings == want_readings and n_gws == fleet["gateways"] and bad_gws == 0
          and mismatched == 0 and hash_wrong == 0 and report is not None and report.ok)
    return {"ok": ok, "stored_batches": rows, "expected_batches": fleet["batches"], "stored_readings": int(readings),
            "expected_readings": want_readings, "gateways": n_gws, "gateways_not_1_to_n": bad_gws,
            "sample_gateways": len(picked), "sample_not_byte_identical": mismatched, "sample_hash_wrong": hash_wrong,
            "sample_verified": None if report is None else report.ok,
            "sample_faults": [] if report is None else report.lines()[:3] if not report.ok else []}


# ------------------------------------------------------------------------------------------ the bare reference
def bare_insert(backend: _Backend, fleet_dir: Path, name: str = "bare") -> dict[str, Any]:
    """The receiver's batches rows inserted bare: one connection, one INSERT + COMMIT per batch (and, on
    PostgreSQL, one COPY of all rows for scale). The table is the receiver's own: the fresh database gets its
    schema from gateway.regulator.storage.ReceiverStore (its migrations), as a receiver's start does."""
    from gateway.chain.signing import batch_kid, chain_hash, decode_unverified
    from gateway.model import rfc3339
    from gateway.regulator.storage import ReceiverStore

    store = backend.fresh(name)
    ReceiverStore(store).close()
    rows = []
    now = time.time()
    for g in load_fleet(fleet_dir):
        for jws, n in zip(g["jws"], g["readings"]):
            payload = decode_unverified(jws)[1]
            rows.append((payload["gateway_id"], payload["seq"], jws, chain_hash(jws), batch_kid(jws),
                         payload["created_at"], rfc3339(now), n, len(payload["events"])))
    readings = sum(r[7] for r in rows)
    cols = ", ".join(_COLS)
    ph = ", ".join([backend.ph()] * len(_COLS))
    out: dict[str, Any] = {"batches": len(rows), "readings": readings, "store": backend.name,
                           "method": "one connection; per batch: INSERT (all 9 columns of the receiver's batches "
                                     "table) then COMMIT"}
    with backend.connect(store) as c:
        if backend.name == "sqlite":
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")   # as ReceiverStore
        cpu0, db0, t0 = time.process_time(), backend.server_cpu_s(), time.perf_counter()
        for r in rows:
            if backend.name == "sqlite":
                c.execute("BEGIN IMMEDIATE")
                c.execute(f"INSERT INTO batches ({cols}) VALUES ({ph})", r)
                c.execute("COMMIT")
            else:
                c.execute(f"INSERT INTO batches ({cols}) VALUES ({ph})", r)
                c.commit()
        secs = time.perf_counter() - t0
        out.update(seconds=round(secs, 2), bare_insert_readings_per_s=round(readings / secs),
                   batches_per_s=round(len(rows) / secs, 1), client_cpu_s=round(time.process_time() - cpu0, 2),
                   db_server_cpu_s=round(backend.server_cpu_s() - db0, 2))
        stored = c.execute("SELECT count(*) FROM batches").fetchone()[0]
        out["stored"] = stored
        if backend.name == "postgresql":
            c.execute("TRUNCATE batches")
            c.commit()
            t0 = time.perf_counter()
            with c.cursor() as cur, cur.copy(f"COPY batches ({cols}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            c.commit()
            secs = time.perf_counter() - t0
            out["copy"] = {"seconds": round(secs, 2), "method": "one COPY of all rows, one COMMIT"}
            out["bare_copy_readings_per_s"] = round(readings / secs)
    return out


# ------------------------------------------------------------------------------------------ entry point
def run(gateways: int | None = None, batches: int | None = None, readings_min: int = 50, readings_max: int = 200,
        processes: tuple[int, ...] | list[int] = (1, 2), connections: int = 64, quick: bool = False,
        backend: str = "auto", pg_fsync: bool = True, seed: int = 1, sample: int = 20, cache_dir: str | None = None,
        workdir: str | None = None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """All figures as a JSON-able dict (module docstring). ``gateways`` (default 1000; quick 12), ``batches``
    per gateway (default 8; quick 3), readings per batch uniform in ``readings_min..readings_max``;
    ``processes``: receiver counts to measure; ``connections``: keep-alive connections per receiver;
    ``backend``: "auto" (PostgreSQL when available, else SQLite), "postgresql" or "sqlite";
    ``cache_dir``: keep the signed fleet there for later runs. Raises ValueError for bad sizes and
    RuntimeError when ``backend="postgresql"`` cannot be had."""
    n_gw = gateways if gateways is not None else (12 if quick else 1000)
    n_b = batches if batches is not None else (3 if quick else 8)
    if quick and gateways is None:
        readings_min, readings_max = min(readings_min, 20), min(readings_max, 60)
    if (n_gw < 1 or n_b < 1 or not 0 <= readings_min <= readings_max or connections < 1 or not processes
            or any(not 1 <= n <= 16 for n in processes) or sample < 0):
        raise ValueError("gateways, batches and connections must be >= 1, 0 <= readings_min <= readings_max, "
                         "processes 1..16 each, sample >= 0")
    with contextlib.ExitStack() as stack:
        wd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="receiver-scale-", dir=workdir)))
        why_not_pg = postgres_unavailable() if backend in ("auto", "postgresql") else "SQLite asked for"
        if backend == "postgresql" and why_not_pg:
            raise RuntimeError(f"receiver_scale: PostgreSQL not available: {why_not_pg}")
        be: _Backend = _Postgres(wd, pg_fsync) if why_not_pg is None else \
            _Sqlite(wd, f"SQLite receiver store (WAL, synchronous=FULL): {why_not_pg}")
        stack.callback(be.close)
        fleet_dir = (Path(cache_dir) / f"receiver_scale-{n_gw}x{n_b}-{readings_min}-{readings_max}-s{seed}"
                     if cache_dir else wd / "fleet")
        _log(f"fleet: {n_gw} gateways x {n_b} batches ({readings_min}-{readings_max} readings) in {fleet_dir}")
        fleet = make_fleet(fleet_dir, n_gw, n_b, readings_min, readings_max, seed)
        from gateway.tlsutil import make_self_signed

        cert, key = make_self_signed(wd / "tls", ["127.0.0.1", "localhost"])
        _log("bare insert (before) ...")
        bare_runs = [bare_insert(be, fleet_dir, "bare_before")]
        by_n: dict[str, Any] = {}
        for n in processes:
            _log(f"{n} receiver process(es) on {be.note or be.name} ...")
            by_n[str(n)] = _deliver(wd, be, fleet_dir, fleet, n, connections, cert, key, timeout_s, sample)
            r = by_n[str(n)]
            _log(f"{n}: {r['readings_per_s']} readings/s, {r['readings_per_receiver_cpu_s']} per receiver CPU-s, "
                 f"exactly once {r['exactly_once']['ok']}")
        _log("bare insert (after) ...")
        bare_runs.append(bare_insert(be, fleet_dir, "bare_after"))
    rates = [b["bare_insert_readings_per_s"] for b in bare_runs]
    bare = {**{k: v for k, v in bare_runs[0].items() if k in ("batches", "readings", "store", "method")},
            "bare_insert_readings_per_s": round(sum(rates) / len(rates)), "before_and_after": bare_runs,
            "spread": round((max(rates) - min(rates)) / max(rates), 2) if max(rates) else None,
            "note": "measured before and after the receiver runs (bracketing them on a shared machine); the "
                    "figure is the mean, spread = (max - min) / max"}
    copies = [b["bare_copy_readings_per_s"] for b in bare_runs if "bare_copy_readings_per_s" in b]
    if copies:
        bare["bare_copy_readings_per_s"] = round(sum(copies) / len(copies))
    per_proc = {k: v["readings_per_s_per_process"] for k, v in by_n.items()}
    total = {k: v["readings_per_s"] for k, v in by_n.items()}
    one = by_n.get("1") or next(iter(by_n.values()))
    bare_rate = bare.get("bare_insert_readings_per_s")
    scaling = round(total["2"] / total["1"], 2) if total.get("1") and total.get("2") else None
    cpu = {k: v["readings_per_receiver_cpu_s"] for k, v in by_n.items()}
    return {
        "backend": be.name, "backend_note": be.note,
        "fleet": {k: fleet[k] for k in ("gateways", "batches", "readings", "sign_s", "reused")}
        | {"params": fleet["params"]},
        "split": "gateway i -> receiver process i mod N (an L4 balancer keeping each gateway's connection on one "
                 "backend); one client process per receiver process; all receivers on one database",
        "receiver_readings_per_s": per_proc,
        "receiver_total_readings_per_s": total,
        "receiver_per_cpu_s": cpu,
        "receiver_scaling_1_to_2": scaling,
        "receiver_cpu_efficiency_1_to_2": round(cpu["2"] / cpu["1"], 2) if cpu.get("1") and cpu.get("2") else None,
        "receiver_ratio_to_bare_insert": round(one["readings_per_s_per_process"] / bare_rate, 3)
        if bare_rate and one["readings_per_s_per_process"] else None,
        "bare_insert_readings_per_s": bare_rate,
        "receiver_exactly_once": all(v["exactly_once"]["ok"] for v in by_n.values()),
        "target_readings_per_s": NATIONAL_AVG_READINGS_PER_S,
        "by_processes": by_n,
        "bare_insert": bare,
        "note": "receiver_readings_per_s: readings verified and committed per second per receiver process (total / "
                "N); readings_per_receiver_cpu_s: per CPU-second of the receiver processes (utime+stime, /proc), "
                "the fair 1->2 comparison on 2 cores shared with the clients and the database server",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.receiver_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE", help="write the result here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--gateways", type=int, help="simulated gateways (default 1000)")
    ap.add_argument("--batches", type=int, help="batches per gateway (default 8)")
    ap.add_argument("--readings", type=int, nargs=2, metavar=("MIN", "MAX"), default=(50, 200),
                    help="readings per batch, uniform (default 50 200)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="receiver process counts (default 1 2)")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections per receiver (default 64)")
    ap.add_argument("--backend", choices=("auto", "postgresql", "sqlite"), default="auto")
    ap.add_argument("--no-fsync", action="store_true", help="PostgreSQL with fsync off")
    ap.add_argument("--cache", metavar="DIR", help="keep the signed fleet in DIR for later runs")
    # the client process (internal)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    ap.add_argument("--fleet", help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return _client_main(args.url, args.ca, args.fleet, args.part, args.parts, args.connections)
    try:
        res = run(gateways=args.gateways, batches=args.batches, readings_min=args.readings[0],
                  readings_max=args.readings[1], processes=args.processes, connections=args.connections,
                  quick=args.quick, backend=args.backend, pg_fsync=not args.no_fsync, cache_dir=args.cache)
    except (ValueError, RuntimeError) as exc:
        print(f"receiver_scale: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
