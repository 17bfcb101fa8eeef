"""OPC UA security over a real asyncua server: Basic256Sha256 SignAndEncrypt with certificates made
here with `cryptography`, username/password from a file, a pinned server certificate, and the
owner-only rule for the password file (OPC UA Part 2 4.3 / Part 4 5.6.3 / Part 7 6.6.161)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.model import Quality

pytestmark = pytest.mark.timeout(60)

SERVER_URI = "urn:hazard-gateway:test:secure-plant"
CLIENT_URI = "urn:hazard-gateway:test:gateway"
NS_URI = "urn:hazard-gateway:test:secure"
ROOT = Path(__file__).resolve().parents[1]


def make_cert(dirpath: Path, name: str, app_uri: str, server: bool) -> tuple[Path, Path]:
    """Self-signed RSA-2048 / SHA-256 certificate (DER) + key (PEM, 0600), application URI in the
    subjectAltName (Part 6 6.2.2: the ApplicationUri shall be in the certificate's URI SAN)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hazard-gateway tests")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(app_uri), x509.DNSName("localhost"),
                x509.DNSName(socket.gethostname()), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dirpath / f"{name}.der", dirpath / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Users:
    """asyncua user manager: one username/password; everything else (anonymous too) refused."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.logins: list[str | None] = []

    def get_user(self, iserver, username=None, password=None, certificate=None):
        self.logins.append(username)
        if username == self.username and password == self.password:
            return User(role=UserRole.User)
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def secure_server(tmp: Path, users: Users | None = None) -> tuple[Server, str, Path]:
    cert, key = make_cert(tmp, "server", SERVER_URI, server=True)
    server = Server(user_manager=users) if users else Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/secure/"
    server.set_endpoint(endpoint)
    await server.set_application_uri(SERVER_URI)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken] if users else [ua.AnonymousIdentityToken])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    ns = await server.register_namespace(NS_URI)
    obj = await server.nodes.objects.add_object(ua.NodeId("Det", ns), ua.QualifiedName("Det", ns))
    var = await obj.add_variable(ua.NodeId("Det.H2S", ns), ua.QualifiedName("H2S", ns),
                                 ua.Variant(7.5, ua.VariantType.Double))
    await var.write_value(ua.DataValue(ua.Variant(7.5, ua.VariantType.Double)))
    await server.start()
    return server, endpoint, cert


POINT = OpcUaPoint("H2S", f"nsu={NS_URI};s=Det.H2S", unit="mg/m3", subscribe=True)


async def first_read(dev: OpcUaDevice):
    """start() returns after the first connect attempt (never raises); then one read."""
    await dev.start()
    (r,) = await dev.read()
    return r


async def read_when_connected(dev: OpcUaDevice, wait_s: float = 6.0):
    await dev.start()
    deadline = asyncio.get_running_loop().time() + wait_s
    while not dev.connected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    (r,) = await dev.read()
    return r


async def test_basic256sha256_sign_and_encrypt_with_client_certificate(tmp_path):
    server, endpoint, server_cert = await secure_server(tmp_path)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    try:
        dev = OpcUaDevice("secure", endpoint, [POINT], timeout_s=2.0, security={
            "policy": "Basic256Sha256", "mode": "SignAndEncrypt", "cert": str(ccert), "key": str(ckey),
            "server_cert": str(server_cert)})
        try:
            r = await read_when_connected(dev)
            assert r.quality is Quality.GOOD and r.value == 7.5, (r.reason, dev.last_error)
            # the channel really is Basic256Sha256 SignAndEncrypt
            policy = dev._client.security_policy  # noqa: SLF001 - asserting the negotiated channel
            assert policy.URI.endswith("#Basic256Sha256") and policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        finally:
            await dev.close()
        # without security the server (SignAndEncrypt only) refuses: comm fault, never a value
        plain = OpcUaDevice("plain", endpoint, [POINT], timeout_s=0.5, backoff_initial_s=5)
        try:
            r = await first_read(plain)
            assert r.quality is Quality.BAD and r.value is None and r.reason.startswith("comm fault")
        finally:
            await plain.close()
    finally:
        await server.stop()


async def test_wrong_pinned_server_certificate_is_refused(tmp_path):
    server, endpoint, _ = await secure_server(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    impostor, _ = make_cert(other, "impostor", SERVER_URI, server=True)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    try:
        dev = OpcUaDevice("pinned", endpoint, [POINT], timeout_s=0.5, backoff_initial_s=5, security={
            "policy": "Basic256Sha256", "mode": "SignAndEncrypt", "cert": str(ccert), "key": str(ckey),
            "server_cert": str(impostor)})
        try:
            r = await first_read(dev)
            assert not dev.connected and r.quality is Quality.BAD and r.value is None
            assert dev.last_error and "connect failed" in dev.last_error
        finally:
            await dev.close()
    finally:
        await server.stop()


async def test_username_password_from_file_over_sign_and_encrypt(tmp_path):
    users = Users("gateway", "s3cret pass;word")
    server, endpoint, server_cert = await secure_server(tmp_path, users)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    pw = tmp_path / "ua-password"
    pw.write_text("s3cret pass;word\n")  # the newline is not part of the password
    pw.chmod(0o600)
    sec = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "cert": str(ccert), "key": str(ckey),
           "server_cert": str(server_cert), "username": "gateway", "password_file": str(pw)}
    try:
        dev = OpcUaDevice("user", endpoint, [POINT], timeout_s=2.0, security=sec)
        try:
            r = await read_when_connected(dev)
            assert r.quality is Quality.GOOD and r.value == 7.5, (r.reason, dev.last_error)
            assert "gateway" in users.logins
        finally:
            await dev.close()
        pw.write_text("wrong\n")
        bad = OpcUaDevice("user2", endpoint, [POINT], timeout_s=0.5, backoff_initial_s=5, security=sec)
        try:
            r = await first_read(bad)
            assert r.quality is Quality.BAD and r.value is None and not bad.connected
        finally:
            await bad.close()
    finally:
        await server.stop()


async def test_config_password_file_readable_by_others_is_refused(tmp_path):
    """Through the config (as `run` and `probe` load it): a password file with group/other bits is
    refused before any connection, FILE:LINE:COL, exit 2; chmod 600 and the same config reads."""
    users = Users("gateway", "pw-1")
    server, endpoint, server_cert = await secure_server(tmp_path, users)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    pw = tmp_path / "ua-password"
    pw.write_text("pw-1\n")
    pw.chmod(0o644)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""gateway: {{id: sec-test}}
keys: {{private_key: keys/private.pem}}
devices:
  - name: secure_ua
    protocol: opcua
    endpoint: {endpoint}
    timeout_ms: 2000
    security:
      policy: Basic256Sha256
      mode: SignAndEncrypt
      cert: {ccert.name}
      key: {ckey.name}
      server_cert: {server_cert.name}
      username: gateway
      password_file: ua-password
    tags:
      - {{name: H2S, node_id: "nsu={NS_URI};s=Det.H2S", unit: mg/m3}}
""")

    async def probe_cli() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "probe", "--config", str(cfg), cwd=str(ROOT),
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 40)
        return proc.returncode, out.decode(), err.decode()

    try:
        rc, out, err = await probe_cli()
        assert rc == 2 and out == "" and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert line.startswith(f"{cfg}:15:22: devices[0].security.password_file: secret file ua-password is "
                               "accessible by group/others (mode 0644)"), line
        assert users.logins == []  # refused before connecting
        pw.chmod(0o600)
        rc, out, err = await probe_cli()
        assert rc == 0, out + err
        assert "H2S" in out and "7.5" in out and users.logins == ["gateway"]
    finally:
        await server.stop()
