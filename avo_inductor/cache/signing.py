"""Ed25519 signing of bundle manifests: key generation, signing, verification and the trusted-key set.

A bundle's ``manifest.sig`` holds the signer's public key and a signature over the canonical manifest bytes.
Trust is explicit: keys come from ``settings.trusted_keys`` (hex or .pub file paths) plus the ones added with
``trust()`` (stored under ``<cache_dir>/trusted_keys``), never from the bundle itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..parsing import load_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _crypto() -> Any:
    """The cryptography primitives, imported on first use: hosts that never sign or check signatures (e.g. a
    GPU box running only the search) need not have the package."""
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise RuntimeError(f"bundle signatures need the 'cryptography' package ({exc}); "
                           "pip install cryptography") from None
    return exceptions, serialization, ed25519

SIG_ALGORITHM = "ed25519"
PRIVATE_KEY_NAME = "avo_ed25519.key"
PUBLIC_KEY_NAME = "avo_ed25519.pub"
TRUSTED_DIR_NAME = "trusted_keys"


@dataclass(frozen=True)
class Signature:
    """Content of ``manifest.sig``: who signed (raw public key, hex) and the signature (hex)."""

    public_key: str
    signature: str
    algorithm: str = SIG_ALGORITHM

    def to_bytes(self) -> bytes:
        return json.dumps({"algorithm": self.algorithm, "public_key": self.public_key,
                           "signature": self.signature}, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Signature:
        """Parse ``manifest.sig``; ValueError with the reason on anything malformed."""
        try:
            data = load_json(raw, "manifest.sig")
            fields = [data["public_key"], data["signature"], data.get("algorithm", SIG_ALGORITHM)]
            if not all(isinstance(f, str) for f in fields):
                raise TypeError("public_key, signature and algorithm must be strings")
            sig = cls(public_key=fields[0], signature=fields[1], algorithm=fields[2])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"manifest.sig is malformed: {type(exc).__name__}: {str(exc)[:300]}") from None
        if sig.algorithm != SIG_ALGORITHM:
            raise ValueError(f"manifest.sig algorithm {sig.algorithm!r} not supported (only {SIG_ALGORITHM})")
        normalize_public_key(sig.public_key)
        return sig


def normalize_public_key(text: str) -> str:
    """A raw Ed25519 public key as 64 lowercase hex chars; ValueError otherwise."""
    value = text.strip().lower()
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"public key must be 64 hex characters; got {text[:80]!r}") from None
    if len(raw) != 32:
        raise ValueError(f"public key must be 32 bytes (64 hex chars); got {len(raw)} bytes")
    return value


def fingerprint(public_key_hex: str) -> str:
    """Short id of a public key for messages and file names."""
    return normalize_public_key(public_key_hex)[:16]


def keygen(directory: str | Path) -> tuple[Path, Path, str]:
    """Create a signing key pair in ``directory``: (private PEM path, public hex path, public hex).

    The private key file is created with mode 0600 and never overwritten (FileExistsError).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    if priv_path.exists() or pub_path.exists():
        raise FileExistsError(f"refusing to overwrite an existing key pair in {directory}")
    _, serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_hex = public_key_hex(key.public_key())
    pub_path.write_text(pub_hex + "\n")
    return priv_path, pub_path, pub_hex


def public_key_hex(key: Ed25519PublicKey) -> str:
    _, serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a PEM (PKCS8) Ed25519 private key written by :func:`keygen`."""
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot load Ed25519 private key from {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key ({type(key).__name__})")
    return key


def sign_bytes(payload: bytes, private_key: Ed25519PrivateKey) -> Signature:
    return Signature(public_key=public_key_hex(private_key.public_key()), signature=private_key.sign(payload).hex())


def verify_signature(payload: bytes, sig: Signature) -> bool:
    """True iff ``sig`` is a valid signature of ``payload`` by ``sig.public_key`` (trust is checked elsewhere)."""
    exceptions, _, ed25519 = _crypto()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig.public_key)).verify(
            bytes.fromhex(sig.signature), payload)
    except (exceptions.InvalidSignature, ValueError):
        return False
    return True


def read_public_key(value: str | Path) -> str:
    """A public key given as hex text or as a path to a file holding it (as written by keygen)."""
    text = str(value).strip()
    try:
        return normalize_public_key(text)
    except ValueError:
        pass
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"trusted key {text!r} is neither 64 hex characters nor a readable key file")
    return normalize_public_key(_key_file_text(path))


def _key_file_text(path: Path, cap: int = 4096) -> str:
    """A key file's text; a file over ``cap`` bytes or not UTF-8 raises ValueError (a key is 64 hex chars)."""
    with open(path, "rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"key file {path} is over {cap} bytes; a public key is 64 hex characters")
    return data.decode("utf-8").strip()


def trusted_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / TRUSTED_DIR_NAME


def trust(pubkey: str | Path, cache_dir: str | Path) -> Path:
    """Add a public key (hex or key file) to the persistent trusted set under ``cache_dir``; returns its file."""
    hex_key = read_public_key(pubkey)
    directory = trusted_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{fingerprint(hex_key)}.pub"
    path.write_text(hex_key + "\n")
    return path


def load_trusted_keys(configured: Iterable[str | Path] = (), cache_dir: str | Path | None = None) -> frozenset[str]:
    """Union of configured keys (hex or paths; a bad one raises ValueError naming it) and ``trust()``-ed keys."""
    keys = {read_public_key(k) for k in configured}
    if cache_dir is not None:
        directory = trusted_dir(cache_dir)
        if directory.is_dir():
            for path in sorted(directory.glob("*.pub")):
                try:
                    keys.add(normalize_public_key(_key_file_text(path)))
                except (OSError, ValueError):
                    continue  # a stray file in the trust dir never widens trust
    return frozenset(keys)
