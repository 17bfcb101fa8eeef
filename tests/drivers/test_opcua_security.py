"""OPC UA security over a real asyncua server: every configured policy (Basic256Sha256,
Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss) in SignAndEncrypt with certificates made here with
`cryptography`, against a strict server that checks the client's ApplicationUri against its
certificate (Part 4 5.6.2, Part 6 6.2.2); the server certificate trust check (Part 4 6.1.3: a trusted
file or directory, else refused before any session); username/password from a file, and the
owner-only rule for the password file (OPC UA Part 2 4.3 / Part 4 5.6.3 / Part 7 6.6.161)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import logging

import pytest
from asyncua import Client, Server, ua
from asyncua.crypto import security_policies
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions as V
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.opcua import OpcUaDevice, OpcUaPoint, sha256_fingerprint
from opcua_certs import make_cert
from gateway.model import Quality
from conftest import free_port

pytestmark = pytest.mark.timeout(60)

SERVER_URI = "urn:hazard-gateway:test:secure-plant"
CLIENT_URI = "urn:hazard-gateway:test:gateway"
NS_URI = "urn:hazard-gateway:test:secure"
ROOT = Path(__file__).resolve().parents[2]


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


class StrictValidator:
    """A strict server's client-certificate check at CreateSession (asyncua CertificateValidator:
    validity, ApplicationUri = the certificate's URI SAN, key usage, client EKU; Part 4 5.6.2).
    Records the ApplicationUri of every CreateSession it saw."""

    def __init__(self) -> None:
        self.inner = CertificateValidator(V.TIME_RANGE | V.URI | V.KEY_USAGE | V.EXT_KEY_USAGE | V.PEER_CLIENT)
        self.seen: list[str] = []

    async def __call__(self, cert: x509.Certificate, description: ua.ApplicationDescription) -> None:
        self.seen.append(description.ApplicationUri)
        await self.inner(cert, description)


async def secure_server(tmp: Path, users: Users | None = None,
                        policy: ua.SecurityPolicyType = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                        validator: StrictValidator | None = None) -> tuple[Server, str, Path]:
    """An asyncua server offering ONLY ``policy`` (no None endpoint), certificate made here."""
    cert, key = make_cert(tmp, "server", SERVER_URI, server=True)
    server = Server(user_manager=users) if users else Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/secure/"
    server.set_endpoint(endpoint)
    await server.set_application_uri(SERVER_URI)
    server.set_security_policy([policy])
    if validator is not None:
        server.set_certificate_validator(validator)
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


@pytest.mark.e2e
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


def secure(ccert: Path, ckey: Path, server_cert: Path | None, policy: str = "Basic256Sha256") -> dict:
    sec = {"policy": policy, "mode": "SignAndEncrypt", "cert": str(ccert), "key": str(ckey)}
    if server_cert is not None:
        sec["server_cert"] = str(server_cert)
    return sec


def server_sessions(server: Server) -> int:
    return len(server.iserver._external_sessions)  # noqa: SLF001 - asyncua internals: sessions it holds


@pytest.mark.e2e
@pytest.mark.parametrize("policy, server_policy, uri_tail", [
    ("Basic256Sha256", ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, "#Basic256Sha256"),
    ("Aes128_Sha256_RsaOaep", ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt, "#Aes128_Sha256_RsaOaep"),
    ("Aes256_Sha256_RsaPss", ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt, "#Aes256_Sha256_RsaPss"),
])
async def test_each_policy_sign_and_encrypt_against_a_strict_server(tmp_path, policy, server_policy, uri_tail):
    """A strict server offering ONLY this policy in SignAndEncrypt: the session is accepted, a real
    variable reads GOOD 7.5, the channel is that policy and mode, and the ApplicationUri the server saw
    in CreateSession is the URI of the client certificate's subjectAltName (Part 4 5.6.2)."""
    strict = StrictValidator()
    server, endpoint, server_cert = await secure_server(tmp_path, policy=server_policy, validator=strict)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    try:
        offered = {(ep.SecurityPolicyUri, ep.SecurityMode) for ep in await server.get_endpoints()}
        assert offered == {(f"http://opcfoundation.org/UA/SecurityPolicy{uri_tail}",
                            ua.MessageSecurityMode.SignAndEncrypt)}
        dev = OpcUaDevice("secure", endpoint, [POINT], timeout_s=2.0, security=secure(ccert, ckey, server_cert, policy))
        try:
            r = await read_when_connected(dev)
            assert r.quality is Quality.GOOD and r.value == 7.5, (r.reason, dev.last_error)
            channel = dev._client.security_policy  # noqa: SLF001 - asserting the negotiated channel
            assert channel.URI.endswith(uri_tail) and channel.Mode == ua.MessageSecurityMode.SignAndEncrypt
            assert strict.seen == [CLIENT_URI] and dev.application_uri == CLIENT_URI
            assert dev.server_cert_sha256 == sha256_fingerprint(server_cert.read_bytes())
        finally:
            await dev.close()
    finally:
        await server.stop()


@pytest.mark.e2e
async def test_strict_server_refuses_a_default_application_uri(tmp_path):
    """The strict server really is strict: asyncua's Client with the same certificate but its default
    ApplicationUri (what the driver sent before it read the URI from the certificate) is refused."""
    strict = StrictValidator()
    server, endpoint, server_cert = await secure_server(tmp_path, validator=strict)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    try:
        client = Client(endpoint, timeout=2)
        await client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(ccert), str(ckey),
                                  server_certificate=str(server_cert))
        with pytest.raises(Exception) as err:
            await asyncio.wait_for(client.connect(), 6)
        assert "BadCertificateUriInvalid" in repr(err.value) or "UriInvalid" in str(err.value), repr(err.value)
        assert strict.seen == [client.application_uri] and client.application_uri != CLIENT_URI
        client.disconnect_socket()
    finally:
        await server.stop()


def untrusted_message(device: str, server_cert: Path) -> str:
    cert = x509.load_der_x509_certificate(server_cert.read_bytes())
    return (f"device {device}: server certificate not trusted: subject {cert.subject.rfc4514_string()}, "
            f"sha256 fingerprint {sha256_fingerprint(server_cert.read_bytes())}")


@pytest.mark.e2e
@pytest.mark.parametrize("trust", ["none", "other-file", "other-dir"])
async def test_untrusted_server_certificate_is_refused(tmp_path, caplog, trust):
    """No server_cert, another certificate, or a directory without the server's: refused before any
    session (nothing read, the server saw no CreateSession), one-line fault naming the device with
    the server certificate's subject and SHA-256 fingerprint, logged once at ERROR, tags BAD."""
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    strict = StrictValidator()
    server, endpoint, server_cert = await secure_server(tmp_path, validator=strict)
    other = tmp_path / "other"
    other.mkdir()
    impostor, _ = make_cert(other, "impostor", SERVER_URI, server=True)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    trusted = {"none": None, "other-file": impostor, "other-dir": other}[trust]
    try:
        dev = OpcUaDevice("plant_ua", endpoint, [POINT], timeout_s=0.5, backoff_initial_s=0.2, backoff_max_s=0.3,
                          security=secure(ccert, ckey, trusted))
        try:
            r = await first_read(dev)
            await asyncio.sleep(1.0)  # a few retries: still refused, logged once
            (r,) = await dev.read()
            assert not dev.connected and dev.sessions == 0
            assert r.quality is Quality.BAD and r.value is None and r.reason == "comm fault"
            msg = dev.last_error
            assert msg.startswith(untrusted_message("plant_ua", server_cert)) and "\n" not in msg, msg
            assert msg.endswith("no server_cert configured" if trust == "none" else f"not in server_cert {trusted}")
            assert strict.seen == [] and server_sessions(server) == 0  # no session, nothing read
        finally:
            await dev.close()
    finally:
        await server.stop()
    logged = [rec for rec in caplog.records if rec.name == "drivers.opcua"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR, [x.getMessage() for x in logged]
    assert "plant_ua" in logged[0].getMessage() and "server certificate not trusted" in logged[0].getMessage()


@pytest.mark.e2e
async def test_trusted_server_certificate_in_a_trust_directory(tmp_path):
    """server_cert names a directory: every certificate file in it is trusted (here the impostor's DER
    and a PEM copy of the real server's); the session is accepted and reads GOOD."""
    server, endpoint, server_cert = await secure_server(tmp_path, validator=StrictValidator())
    trust = tmp_path / "trusted"
    trust.mkdir()
    make_cert(trust, "impostor", SERVER_URI, server=True)
    (trust / "impostor.key.pem").unlink()  # keys are not certificates; a README is ignored too
    (trust / "README").write_text("trusted OPC UA server certificates\n")
    pem = x509.load_der_x509_certificate(server_cert.read_bytes()).public_bytes(serialization.Encoding.PEM)
    (trust / "plant-server.pem").write_bytes(pem)
    ccert, ckey = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    try:
        dev = OpcUaDevice("dir_ua", endpoint, [POINT], timeout_s=2.0, security=secure(ccert, ckey, trust))
        try:
            r = await read_when_connected(dev)
            assert r.quality is Quality.GOOD and r.value == 7.5, (r.reason, dev.last_error)
            assert dev.server_cert_sha256 == sha256_fingerprint(server_cert.read_bytes())
        finally:
            await dev.close()
    finally:
        await server.stop()


def test_client_certificate_without_uri_san_is_a_device_error(tmp_path):
    """Part 6 6.2.2: the ApplicationUri comes from the certificate; a certificate without a URI in its
    subjectAltName is a one-line error naming the device and the file (before any connection)."""
    ccert, ckey = make_cert(tmp_path, "client-nouri", None, server=False, pem=True)
    with pytest.raises(ValueError) as err:
        OpcUaDevice("nouri_ua", "opc.tcp://127.0.0.1:4840/", [POINT], security=secure(ccert, ckey, None))
    msg = str(err.value)
    assert msg.startswith(f"device nouri_ua: client certificate {ccert} has no URI in its subjectAltName")
    assert "Part 6 6.2.2" in msg and "\n" not in msg
    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match=rf"device g_ua: certificate file {garbage}: not a DER or PEM"):
        OpcUaDevice("g_ua", "opc.tcp://127.0.0.1:4840/", [POINT], security=secure(garbage, ckey, None))


@pytest.mark.e2e
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


@pytest.mark.e2e
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


def test_check_refuses_a_client_certificate_without_uri_and_takes_a_trust_directory(tmp_path, capsys):
    """`hazard-gateway check` (as `run` and `probe`, check_secrets): a client certificate without a URI
    SAN is an error at its FILE:LINE:COL naming the file, exit 2; with a certificate that has one, a
    server_cert directory (a trust directory) is accepted and the config is ok."""
    from gateway.cli import main

    nouri, key = make_cert(tmp_path, "client-nouri", None, server=False)
    good, _ = make_cert(tmp_path, "client", CLIENT_URI, server=False)
    trust = tmp_path / "trusted-servers"
    trust.mkdir()
    make_cert(trust, "plant-server", SERVER_URI, server=True)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "private.pem").write_text("not used by check\n")
    (tmp_path / "keys" / "private.pem").chmod(0o600)

    def config(cert: Path) -> Path:
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(f"""gateway: {{id: sec-test}}
keys: {{private_key: keys/private.pem}}
devices:
  - name: secure_ua
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840/
    security:
      policy: Aes256_Sha256_RsaPss
      mode: SignAndEncrypt
      cert: {cert.name}
      key: {key.name}
      server_cert: trusted-servers
    tags:
      - {{name: H2S, node_id: "nsu={NS_URI};s=Det.H2S", unit: mg/m3}}
""")
        return cfg

    cfg = config(nouri)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{cfg}:10:13: devices[0].security.cert: client certificate "), err
    assert f"{nouri.name} has no URI in its subjectAltName" in err[0]
    assert main(["check", str(config(good))]) == 0, capsys.readouterr().err
