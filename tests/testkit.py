"""Small pieces every test suite needs: a free loopback port and a throw-away TLS certificate.

Any suite imports it as ``tests.testkit``.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def self_signed_certificate(folder: Path, name: str, openssl: str = "openssl") -> tuple[Path, Path]:
    """(cert.pem, key.pem) in folder: ECDSA P-256, valid two days, for DNS name ``name`` only."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )
    return cert, key
