"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, with Ed25519 keys (pure; no I/O).

A checkpoint body is::

    <origin>\\n
    <tree size, decimal>\\n
    <root hash, base64>\\n
    time <signing time, UTC, microseconds, Z>\\n

and the signed note is the body, a blank line, and one signature line per
signer: ``— <key name> <base64(key id || signature)>``. The key id is the first
4 bytes of ``SHA-256(key name || 0x0A || 0x01 || public key)``; the signature
is Ed25519 over the body's bytes. Keys are written in the note verifier and
signer key formats of golang.org/x/mod/sumdb/note:
``<name>+<key id hex>+<base64(0x01 || public key)>`` and
``PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>``. See docs/hash-chain.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from graphledger.ledger.chain import format_ts

ED25519 = 0x01
DASH = "\u2014"  # the em dash that starts a signature line
DEFAULT_NAME = "graphledger"


class NoteError(ValueError):
    """A key, a note or a checkpoint that cannot be read, or a signature that does not verify."""


def _check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4]


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A public key by name: checks signatures on notes."""

    name: str
    key: Ed25519PublicKey = field(repr=False)

    @property
    def id(self) -> bytes:
        return key_id(self.name, _public_bytes(self.key))

    def encode(self) -> str:
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(bytes([ED25519]) + _public_bytes(self.key)).decode()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("not a verifier key (<name>+<id>+<key>)")
        name, hex_id, encoded = parts
        raw = _b64(encoded, "verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("not an Ed25519 verifier key")
        verifier = cls(_check_name(name), Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.id.hex() != hex_id:
            raise NoteError("the verifier key's id does not match its name and key")
        return verifier


@dataclass(frozen=True)
class Signer:
    """A private key by name: signs notes."""

    name: str
    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, name: str = DEFAULT_NAME) -> Signer:
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key.public_key())

    def encode(self) -> str:
        seed = self.key.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id.hex()}+{base64.b64encode(bytes([ED25519]) + seed).decode()}"

    @classmethod
    def parse(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("not a signer key (PRIVATE+KEY+<name>+<id>+<key>)")
        raw = _b64(parts[4], "signer key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("not an Ed25519 signer key")
        signer = cls(_check_name(parts[2]), Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.id.hex() != parts[3]:
            raise NoteError("the signer key's id does not match its name and key")
        return signer

    def sign(self, body: str) -> str:
        """The signed note of ``body`` (which ends with a newline)."""
        if not body.endswith("\n") or "\n\n" in body:
            raise NoteError("a note body ends with one newline and has no blank line")
        signature = self.key.sign(body.encode())
        return f"{body}\n{DASH} {self.name} {base64.b64encode(self.verifier.id + signature).decode()}\n"


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"the {what} is not base64") from None


def open_note(note: str, verifier: Verifier) -> str:
    """The body of ``note`` once ``verifier``'s signature on it checks; :class:`NoteError` otherwise."""
    body, sep, signatures = note.rpartition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise NoteError("not a signed note (no blank line before the signatures)")
    body += "\n"
    found = False
    for line in signatures[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise NoteError("a signature line is malformed")
        raw = _b64(parts[2], "signature")
        if parts[1] != verifier.name or raw[:4] != verifier.id:
            continue  # another signer's (a witness'): not ours to check
        try:
            verifier.key.verify(raw[4:], body.encode())
        except InvalidSignature:
            raise NoteError(f"the signature of {verifier.name} does not verify (the note was altered)") from None
        found = True
    if not found:
        raise NoteError(f"the note carries no signature of key {verifier.name}+{verifier.id.hex()}")
    return body


@dataclass(frozen=True)
class Checkpoint:
    """A tree size and root hash of a log, named by its origin, with the time it was signed."""

    origin: str
    size: int
    root: bytes
    time: str = ""
    extensions: tuple[str, ...] = ()

    @classmethod
    def of(cls, origin: str, size: int, root: bytes, at: datetime) -> Checkpoint:
        return cls(origin, size, root, format_ts(at))

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        if self.time:
            lines.append(f"time {self.time}")
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise NoteError("not a checkpoint body (origin, size, root hash, extension lines)")
        origin, size, root, *rest = lines[:-1]
        if not (size.isascii() and size.isdigit()) or size != str(int(size)):
            raise NoteError(f"the checkpoint's tree size {size!r} is not a decimal number")
        digest = _b64(root, "root hash")
        if len(digest) != 32:
            raise NoteError("the checkpoint's root hash is not 32 bytes")
        time = ""
        extensions = []
        for line in rest:
            if line.startswith("time ") and not time:
                time = line[5:]
            else:
                extensions.append(line)
        return cls(origin, int(size), digest, time, tuple(extensions))


def read_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint a signed note carries, checked: signature by ``verifier``, origin its name."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise NoteError(f"the checkpoint's origin {checkpoint.origin!r} is not the key's name {verifier.name!r}")
    return checkpoint


def unsigned_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a signed note carries, signature not checked (to report, never to trust)."""
    body, sep, _ = note.rpartition("\n\n")
    if not sep:
        raise NoteError("not a signed note (no blank line before the signatures)")
    return Checkpoint.parse(body + "\n")
