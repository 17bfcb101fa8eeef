"""OPC UA application certificates: loading, ApplicationUri, trusted server certificates (cryptography only).

OPC UA Part 6 6.2.2 (the ApplicationUri is in the certificate's subjectAltName) and Part 4 6.1.3 (a
client trusts a server certificate it was given, else it refuses the session). ``check`` uses these
without loading asyncua; the driver uses them at connect time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

#: the file names of a trust directory that are read as certificates
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


def sha256_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as colon-separated upper-case hex (``AB:CD:...``, 32 bytes)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def first_der(blob: bytes) -> bytes:
    """The leading certificate of a DER blob that may hold a chain (a ServerCertificate may be
    the application instance certificate followed by its issuers' certificates)."""
    if len(blob) < 2 or blob[0] != 0x30:
        return blob
    n = blob[1]
    if n < 0x80:
        return blob[:2 + n]
    width = n & 0x7F
    length = int.from_bytes(blob[2:2 + width], "big")
    return blob[:2 + width + length]


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every X.509 certificate in ``path``: one DER certificate, or PEM with one or more.

    Raises ValueError (one line naming the file) when the file cannot be read or holds no
    certificate.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"certificate file {path}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(first_der(data))]
    except ValueError as exc:
        raise ValueError(f"certificate file {path}: not a DER or PEM X.509 certificate "
                         f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    return certs


def certificate_application_uri(path: str | Path) -> str:
    """The ApplicationUri of a client certificate: the first URI in its subjectAltName.

    OPC UA Part 6 6.2.2 puts the application instance's ApplicationUri in the certificate's
    subjectAltName as a uniformResourceIdentifier, and Part 4 5.6.2 makes a server reject a
    CreateSession whose ClientDescription.ApplicationUri differs from it. path: the client
    certificate file (DER or PEM; the first certificate of a PEM file). Raises ValueError (one
    line naming the file) when the file is no certificate or it has no URI in its
    subjectAltName.
    """
    cert = load_certificates(path)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise ValueError(f"client certificate {path} has no URI in its subjectAltName; the OPC UA "
                         f"ApplicationUri must be there (Part 6 6.2.2)")
    return uris[0]


def trusted_server_certificates(path: str | Path) -> dict[str, bytes]:
    """SHA-256 fingerprint -> DER of every trusted server certificate.

    path: one certificate file (DER, or PEM with one or more certificates) or a directory whose
    ``*.der``, ``*.pem``, ``*.crt`` and ``*.cer`` files are all trusted (other files, and PEM
    files holding no certificate such as a key, are ignored). Raises ValueError (one line naming
    the file) for a certificate file that does not parse, or a directory without any certificate.
    """
    p = Path(path)
    files = [p]
    if p.is_dir():
        files = []
        for f in sorted(p.iterdir()):
            if not (f.is_file() and f.suffix.lower() in _CERT_SUFFIXES):
                continue
            head = f.read_bytes()
            if b"-----BEGIN" in head and b"-----BEGIN CERTIFICATE-----" not in head:
                continue  # a PEM key or CSR next to the certificates
            files.append(f)
    out: dict[str, bytes] = {}
    for f in files:
        for cert in load_certificates(f):
            der = cert.public_bytes(Encoding.DER)
            out[sha256_fingerprint(der)] = der
    if not out:
        raise ValueError(f"server_cert directory {path} holds no certificate "
                         f"({', '.join('*' + s for s in _CERT_SUFFIXES)})")
    return out
