"""Temporary TLS credentials for one cluster: every connection to its scheduler and workers is
encrypted and needs them, so a cluster is never open to whoever can reach its port.

The credentials are made when the cluster is created, reach its machines through the provider's
secret channel, and are kept owner-only under ``$PREFECT_REMOTE_HOME/clusters`` so that another
process of the same user can attach to the cluster while it is warm.

>>> creds = ClusterCredentials.temporary()
>>> creds.security().require_encryption
True
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from distributed.security import Security

VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ClusterCredentials:
    """A self-signed certificate and its key (PEM), used by every role of one cluster."""

    cert: str
    key: str

    @classmethod
    def temporary(cls) -> ClusterCredentials:
        """A fresh P-256 key and certificate (fast to make, unlike RSA's)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        )

    def security(self) -> Security:
        """Dask security for any role (client, scheduler, worker), TLS required."""
        roles = {
            f"tls_{role}_{part}": value
            for role in ("client", "scheduler", "worker")
            for part, value in (("cert", self.cert), ("key", self.key))
        }
        return Security(tls_ca_file=self.cert, require_encryption=True, **roles)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClusterCredentials:
        return cls(**json.loads(text))

    def save(self, path: Path) -> None:
        """Writes the credentials owner-only (0600, in a 0700 folder)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(self.to_json())

    @classmethod
    def load(cls, path: Path) -> ClusterCredentials | None:
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            return None
