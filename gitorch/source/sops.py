"""SOPS-encrypted documents (getsops/sops file format) with age recipients: encrypt, decrypt, check.

The only module that imports `pyrage`; AES-GCM comes from `source/certificates.py`. Works on plain
loaded YAML values (dicts in file order, lists, scalars), so `manifests.py` stays the YAML owner.
Follows SOPS's sops.go and aes/cipher.go: each encrypted leaf is AES-256-GCM with a 32-byte IV and
the leaf's key path joined by ":" (plus a trailing ":") as additional data; the MAC is SHA-512 over
the plaintext leaves in tree order, upper-case hex, itself encrypted with `lastmodified` (RFC 3339)
as additional data. Error messages name paths and never a plaintext value.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyrage

from gitorch.source.certificates import AeadError, aes_gcm_open, aes_gcm_seal

SOPS_VERSION = "3.10.2"  # the format version we write; SOPS reads files of older and newer 3.x
DEFAULT_ENCRYPTED_REGEX = "^(data|stringData)$"  # what a Kubernetes Secret needs hidden
_MAC_ONLY_ENCRYPTED_INIT = bytes.fromhex(
    "8a3fd2ad54ce66527b1034f3d147be0b0b975b3bf44f72c6fdadec8176f27d69"
)
_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
_UNSUPPORTED = ("encrypted_comment_regex", "unencrypted_comment_regex", "shamir_threshold")
_SELECTORS = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")


class SopsError(ValueError):
    """A SOPS document cannot be read, checked or decrypted; the message names no secret value."""


def is_encrypted(doc: Any) -> bool:
    """True when `doc` carries SOPS metadata (a top-level `sops` mapping)."""
    return isinstance(doc, Mapping) and isinstance(doc.get("sops"), Mapping)


def _rules(meta: Mapping[str, Any]) -> Callable[[list[str]], bool]:
    for name in _UNSUPPORTED:
        if meta.get(name):
            raise SopsError(f"sops.{name}: not supported by gitorch; re-encrypt without it")
    chosen = [n for n in _SELECTORS if meta.get(n)]
    if len(chosen) > 1:  # SOPS itself refuses to combine them
        raise SopsError(f"sops: only one of {', '.join(chosen)} may be set")
    unenc_suffix = str(meta.get("unencrypted_suffix") or "")
    enc_suffix = str(meta.get("encrypted_suffix") or "")
    unenc_re = re.compile(str(meta["unencrypted_regex"])) if meta.get("unencrypted_regex") else None
    enc_re = re.compile(str(meta["encrypted_regex"])) if meta.get("encrypted_regex") else None

    def should_encrypt(path: list[str]) -> bool:
        # Same order as sops.go's shouldBeEncrypted; Go's regexp.Match is an unanchored search.
        encrypted = True
        if unenc_suffix and any(p.endswith(unenc_suffix) for p in path):
            encrypted = False
        if enc_suffix:
            encrypted = any(p.endswith(enc_suffix) for p in path)
        if unenc_re is not None and any(unenc_re.search(p) for p in path):
            encrypted = False
        if enc_re is not None:
            encrypted = any(enc_re.search(p) for p in path)
        return encrypted

    return should_encrypt


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else repr(value)).encode()
    if isinstance(value, str):
        return value.encode()
    raise SopsError(f"unsupported value type {type(value).__name__}")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    raise SopsError(f"unsupported value type {type(value).__name__}")


def _from_bytes(raw: bytes, kind: str, where: str) -> Any:
    text = raw.decode("utf-8", errors="strict")
    if kind in ("str", "comment", "bytes", "time"):
        return text
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
    raise SopsError(f"{where}: unknown or malformed value type {kind!r}")


def _b64(s: str, where: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except ValueError as exc:
        raise SopsError(f"{where}: not base64 in the ENC[...] value") from exc


def _parse_enc(value: str, where: str) -> tuple[bytes, bytes, bytes, str]:
    m = _ENC.match(value)
    if m is None:
        raise SopsError(f"{where}: expected an ENC[AES256_GCM,...] value, found plaintext")
    return _b64(m[1], where), _b64(m[2], where), _b64(m[3], where), m[4]


def _encrypt_value(value: Any, key: bytes, aad: str) -> str:
    if value == "":  # SOPS leaves empty strings empty
        return ""
    iv = os.urandom(32)
    data, tag = aes_gcm_seal(key, iv, _to_bytes(value), aad.encode())
    enc = base64.b64encode
    return (f"ENC[AES256_GCM,data:{enc(data).decode()},iv:{enc(iv).decode()},"
            f"tag:{enc(tag).decode()},type:{_type_name(value)}]")


def _decrypt_value(value: str, key: bytes, aad: str, where: str) -> Any:
    if value == "":
        return ""
    data, iv, tag, kind = _parse_enc(value, where)
    try:
        raw = aes_gcm_open(key, iv, data, tag, aad.encode())
    except AeadError as exc:
        raise SopsError(f"{where}: cannot decrypt (wrong key or the value was altered)") from exc
    return _from_bytes(raw, kind, where)


def _walk(node: Any, path: list[str], leaf: Callable[[Any, list[str]], Any]) -> Any:
    """Rebuild `node` with every scalar leaf replaced by `leaf(value, path)`, in file order."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not isinstance(k, str):
                raise SopsError(f"{'/'.join(path) or '/'}: only string keys are supported")
            out[k] = _walk(v, [*path, k], leaf)
        return out
    if isinstance(node, (list, tuple)):
        return [_walk(v, path, leaf) for v in node]
    if node is None:  # SOPS neither encrypts nor hashes nulls
        return None
    return leaf(node, path)


def _rfc3339(stamp: str) -> str:
    """Go's `time.Format(time.RFC3339)` of a parsed `lastmodified` (no fraction, Z for UTC)."""
    try:
        t = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise SopsError("sops.lastmodified: not an RFC 3339 time") from exc
    if t.tzinfo is None:
        raise SopsError("sops.lastmodified: needs a time zone")
    off = t.utcoffset()
    base = t.replace(microsecond=0, tzinfo=None).isoformat()
    if not off:
        return base + "Z"
    total = int(off.total_seconds()) // 60
    sign = "+" if total >= 0 else "-"
    return f"{base}{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def _age_stanzas(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    stanzas = [s for s in meta.get("age") or [] if isinstance(s, Mapping)]
    for group in meta.get("key_groups") or []:
        if isinstance(group, Mapping):
            stanzas += [s for s in group.get("age") or [] if isinstance(s, Mapping)]
    return stanzas


def parse_identities(text: str) -> list[Any]:
    """age identities from a key file (`AGE-SECRET-KEY-1...` lines; `#` comments ignored)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(pyrage.x25519.Identity.from_str(line))
        except Exception as exc:  # pyrage.IdentityError; never echo the line
            raise SopsError(f"age key file line {n}: not an age identity") from exc
    if not out:
        raise SopsError("age key file holds no identity")
    return out


def recipient_of(identity: Any) -> str:
    """The public `age1...` recipient of an identity."""
    return str(identity.to_public())


def _armor(binary: bytes) -> str:
    b = base64.b64encode(binary).decode()
    lines = [b[i:i + 64] for i in range(0, len(b), 64)]
    return "-----BEGIN AGE ENCRYPTED FILE-----\n" + "\n".join(lines) + "\n-----END AGE ENCRYPTED FILE-----\n"


def data_key(meta: Mapping[str, Any], identities: Sequence[Any]) -> bytes:
    """The file's 32-byte data key, from the first age stanza one of `identities` opens."""
    stanzas = _age_stanzas(meta)
    if not stanzas:
        raise SopsError("sops: no age recipients in the metadata (only age keys are supported)")
    for s in stanzas:
        try:
            key = bytes(pyrage.decrypt(str(s.get("enc", "")).encode(), list(identities)))
        except Exception:  # pyrage.DecryptError: not ours, try the next stanza
            continue
        if len(key) != 32:
            raise SopsError("sops: the data key is not 32 bytes")
        return key
    names = ", ".join(str(s.get("recipient", "?")) for s in stanzas)
    raise SopsError(f"sops: none of our age keys is a recipient (file is for {names})")


def check_structure(doc: Mapping[str, Any]) -> list[str]:
    """Problems a reader without the key can see: metadata fields, and values that must be ENC[...]."""
    problems: list[str] = []
    meta = doc.get("sops")
    if not isinstance(meta, Mapping):
        return ["sops: missing metadata block"]
    for field in ("mac", "lastmodified", "version"):
        if not meta.get(field):
            problems.append(f"sops.{field}: missing")
    if meta.get("mac") and not _ENC.match(str(meta["mac"])):
        problems.append("sops.mac: expected an ENC[AES256_GCM,...] value")
    if not _age_stanzas(meta):
        problems.append("sops: no age recipients")
    for s in _age_stanzas(meta):
        if not str(s.get("recipient", "")).startswith("age1") or "AGE ENCRYPTED FILE" not in str(s.get("enc", "")):
            problems.append("sops.age: each entry needs recipient age1... and an armored enc")
    try:
        should = _rules(meta)
    except (SopsError, re.error) as exc:
        return [*problems, str(exc)]

    def look(value: Any, path: list[str]) -> Any:
        if should(path) and value != "" and not (isinstance(value, str) and _ENC.match(value)):
            problems.append(f"{'.'.join(path)}: should be encrypted but is plaintext")
        return value

    _walk({k: v for k, v in doc.items() if k != "sops"}, [], look)
    return problems


def decrypt_document(doc: Mapping[str, Any], identities: Sequence[Any]) -> dict[str, Any]:
    """The document without its `sops` block, values decrypted, after checking the MAC."""
    meta = doc.get("sops")
    if not isinstance(meta, Mapping):
        raise SopsError("sops: missing metadata block")
    key = data_key(meta, identities)
    try:
        should = _rules(meta)
    except re.error as exc:
        raise SopsError(f"sops: bad regular expression: {exc}") from exc
    mac_only = bool(meta.get("mac_only_encrypted"))
    h = hashlib.sha512(_MAC_ONLY_ENCRYPTED_INIT if mac_only else b"")

    def leaf(value: Any, path: list[str]) -> Any:
        encrypted = should(path)
        if encrypted:
            if not isinstance(value, str):
                raise SopsError(f"{'.'.join(path)}: expected an encrypted string")
            value = _decrypt_value(value, key, ":".join(path) + ":", ".".join(path))
        if encrypted or not mac_only:
            h.update(_to_bytes(value))
        return value

    out = _walk({k: v for k, v in doc.items() if k != "sops"}, [], leaf)
    stamp = _rfc3339(str(meta.get("lastmodified", "")))
    stored = _decrypt_value(str(meta.get("mac", "")), key, stamp, "sops.mac")
    if stored != h.hexdigest().upper():
        raise SopsError("sops.mac: MAC mismatch (the file was altered after encryption)")
    assert isinstance(out, dict)
    return out


def encrypt_document(
    doc: Mapping[str, Any],
    recipients: Sequence[str],
    *,
    encrypted_regex: str | None = DEFAULT_ENCRYPTED_REGEX,
    unencrypted_suffix: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A SOPS document readable by `sops -d` with any of the age `recipients`' identities."""
    if not recipients:
        raise SopsError("encrypt: at least one age recipient is needed")
    if is_encrypted(doc):
        raise SopsError("encrypt: the document is already encrypted")
    meta: dict[str, Any] = {}
    try:
        parsed = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except Exception as exc:
        raise SopsError("encrypt: a recipient is not an age1... public key") from exc
    key = os.urandom(32)
    meta["age"] = [{"recipient": r, "enc": _armor(bytes(pyrage.encrypt(key, [p])))}
                   for r, p in zip(recipients, parsed, strict=True)]
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    meta["lastmodified"] = stamp.isoformat().replace("+00:00", "Z")
    if encrypted_regex:
        meta["encrypted_regex"] = encrypted_regex
    elif unencrypted_suffix:
        meta["unencrypted_suffix"] = unencrypted_suffix
    should = _rules(meta)
    h = hashlib.sha512()

    def leaf(value: Any, path: list[str]) -> Any:
        h.update(_to_bytes(value))
        return _encrypt_value(value, key, ":".join(path) + ":") if should(path) else value

    out = _walk(doc, [], leaf)
    meta["mac"] = _encrypt_value(h.hexdigest().upper(), key, _rfc3339(meta["lastmodified"]))
    meta["version"] = SOPS_VERSION
    out["sops"] = meta
    assert isinstance(out, dict)
    return out


KEY_FILE_ENV = "GITORCH_AGE_KEY_FILE"


def key_file_path(state_dir: Path) -> Path:
    """The controller's age key: `$GITORCH_AGE_KEY_FILE`, else `age.key` in the state folder."""
    env = os.environ.get(KEY_FILE_ENV)
    return Path(env) if env else state_dir / "age.key"


def load_key_file(path: Path) -> list[Any]:
    """Identities from `path`, which only its owner may read (as ssh does with private keys)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise SopsError(f"{path}: cannot read the age key ({exc.strerror}); make one with "
                        f"`gitorch secret keygen` or set {KEY_FILE_ENV}") from exc
    if mode & 0o077:
        raise SopsError(f"{path}: the age key is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    try:
        return parse_identities(text)
    except SopsError as exc:
        raise SopsError(f"{path}: {exc}") from exc


def generate_key_file(path: Path) -> str:
    """Write a new age identity to `path` (mode 0600, never overwriting); return its recipient."""
    identity = pyrage.x25519.Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SopsError(f"{path}: already exists; gitorch never replaces a key") from exc
    recipient = recipient_of(identity)
    with os.fdopen(fd, "w") as f:
        f.write(f"# public key: {recipient}\n{identity}\n")
    return recipient


@dataclass(frozen=True)
class Keyring:
    """The age identities a load may decrypt with. `required`: an encrypted document that cannot
    be decrypted is an error (the controller) rather than checked for structure only (validate, plan)."""

    identities: tuple[Any, ...] = ()
    required: bool = False

    @property
    def digest(self) -> str:
        """Names the keyring in cache keys (its public recipients, never the identities)."""
        return ",".join(recipient_of(i) for i in self.identities) + ("!" if self.required else "")


NO_KEYS = Keyring()


def keyring_from_state(state_dir: Path, *, required: bool) -> Keyring:
    """The controller's keyring: its key file when there is one (a bad one is an error), else none."""
    path = key_file_path(state_dir)
    if not path.exists() and KEY_FILE_ENV not in os.environ:
        return Keyring((), required)
    return Keyring(tuple(load_key_file(path)), required)


def placeholder(value: str, base64_field: bool) -> str:
    """What a keyless load puts where an encrypted value is: a digest of its ciphertext, so a
    changed value still shows as changed and nothing of the plaintext is there."""
    tag = hashlib.sha256(value.encode()).hexdigest()[:16]
    text = f"sops-encrypted:{tag}"
    return base64.b64encode(text.encode()).decode() if base64_field else text


def keyless_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document without `sops`, each ENC[...] value replaced by its `placeholder`."""
    def leaf(value: Any, path: list[str]) -> Any:
        if isinstance(value, str) and _ENC.match(value):
            return placeholder(value, bool(path) and path[0] == "data")
        return value

    out = _walk({k: v for k, v in doc.items() if k != "sops"}, [], leaf)
    assert isinstance(out, dict)
    return out
