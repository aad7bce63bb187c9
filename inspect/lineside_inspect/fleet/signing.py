"""Ed25519 signatures of model packages, through ``cryptography`` (no home-made crypto).

A publisher signs offline with its private key; the hub only stores the signature and
never holds a private key; each box verifies against its ``fleet.trusted_keys``. What is
signed is not the bare digest but a statement naming the package::

    lineside-package:1:<model>:<version>:<sha256 of package.tar.gz>

so a signature made for one model version cannot vouch for another one's bytes (a hub
serving an old archive under a new version's name is refused). A signature is the raw
64 bytes ``package.sig`` holds. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo
public); a trusted key may also be given as its 32 raw bytes in base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lineside_inspect.errors import ConfigError, SignatureError
from lineside_inspect.user_files import read_bytes

SIGNATURE_BYTES = 64
STATEMENT = "lineside-package:1:{model}:{version}:{sha256}"


@dataclass(frozen=True)
class TrustedKey:
    key: Ed25519PublicKey
    id: str  # first 16 hex digits of sha256(raw public key): names the key in logs

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> TrustedKey:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key, hashlib.sha256(raw).hexdigest()[:16])


def statement(model: str, version: str, sha256: str) -> bytes:
    return STATEMENT.format(model=model, version=version, sha256=sha256).encode()


def generate(private_path: Path, public_path: Path) -> TrustedKey:
    """A new key pair: the private key readable by its owner only (created 0600, never
    over an existing file), the public key beside it for boxes' ``trusted_keys``."""
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} exists: not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key()
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return TrustedKey.of(public)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = read_bytes(path, "the signing key")  # (a FIFO nobody writes to waited forever)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an ed25519 key ({type(key).__name__})")
    return key


def load_public_key(spec: str) -> TrustedKey:
    """A trusted key from ``fleet.trusted_keys``: a PEM file's path, or 32 raw bytes in
    base64 (as ``lineside fleet keygen`` prints)."""
    path = Path(spec)
    if spec.strip().endswith(".pem") or path.is_file():
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"trusted key {spec}: cannot read ({exc.strerror})") from None
        except (ValueError, TypeError):
            raise ConfigError(f"trusted key {spec}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"trusted key {spec}: not an ed25519 key")
        return TrustedKey.of(key)
    try:
        raw = base64.b64decode(spec.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError("a trusted key is a PEM file or 32 raw bytes in base64 (ed25519); "
                          f"{spec[:60]!r} is neither")
    return TrustedKey.of(Ed25519PublicKey.from_public_bytes(raw))


def raw_public(key: TrustedKey) -> str:
    """The key as base64 of its 32 raw bytes (fits in a YAML line)."""
    raw = key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, model: str, version: str, sha256: str) -> bytes:
    return key.sign(statement(model, version, sha256))


def verify(keys: list[TrustedKey], model: str, version: str, sha256: str,
           signature: bytes) -> TrustedKey:
    """The trusted key that signed this package, else :class:`SignatureError`."""
    if not keys:
        raise SignatureError("no trusted keys configured (fleet.trusted_keys): no package "
                             "can be accepted")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"{model} {version}: a signature is {SIGNATURE_BYTES} bytes, got "
                             f"{len(signature)}")
    message = statement(model, version, sha256)
    for k in keys:
        try:
            k.key.verify(signature, message)
        except InvalidSignature:
            continue
        return k
    raise SignatureError(f"{model} {version}: signature does not verify against any of the "
                         f"{len(keys)} trusted key(s) ({', '.join(k.id for k in keys)})")
