"""SOPS-encrypted documents (getsops/sops file format) with age recipients: encrypt, decrypt, check.

The only module that imports `pyrage`; AES-GCM comes from `source/certificates.py`. Works on plain
loaded YAML values (dicts in file order, lists, scalars), so `manifests.py` stays the YAML owner.
Follows SOPS's sops.go and aes/cipher.go: each encrypted leaf is AES-256-GCM with a 32-byte IV and
the leaf's key path joined by ":" (plus a trailing ":") as additional data; the MAC is SHA-512 over
the plaintext leaves in tree order, upper-case hex, itself encrypted with `lastmodified` (RFC 3339)
as additional data. Which values are encrypted, and what the MAC covers, follow the file's rules
(`Rules`: SOPS's four selectors and mac_only_encrypted); several key groups share the data key by
Shamir's scheme (SOPS's shamir package). Error messages name paths and never a plaintext value.
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

SOPS_VERSION = "3.10.2"  # the format version we write; SOPS reads files of older and newer 3.x
DEFAULT_ENCRYPTED_REGEX = "^(data|stringData)$"  # what a Kubernetes Secret needs hidden
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"  # SOPS's rule when a file names none
SECRET_FIELDS = ("data", "stringData")
_MAC_ONLY_ENCRYPTED_INIT = bytes.fromhex(
    "8a3fd2ad54ce66527b1034f3d147be0b0b975b3bf44f72c6fdadec8176f27d69"
)
_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
_UNSUPPORTED = ("encrypted_comment_regex", "unencrypted_comment_regex")
SELECTORS = ("encrypted_regex", "unencrypted_regex", "encrypted_suffix", "unencrypted_suffix")


class SopsError(ValueError):
    """A SOPS document cannot be read, checked or decrypted; the message names no secret value."""


def is_encrypted(doc: Any) -> bool:
    """True when `doc` carries SOPS metadata (a top-level `sops` mapping)."""
    return isinstance(doc, Mapping) and isinstance(doc.get("sops"), Mapping)


def _flag(meta: Mapping[str, Any], name: str) -> bool:
    """A boolean metadata field as SOPS decodes it (mapstructure's weak typing: a string through
    Go's strconv.ParseBool, a number by being non-zero), so a quoted "false" is false."""
    value = meta.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("", "0", "f", "F", "FALSE", "false", "False"):
            return False
    raise SopsError(f"sops.{name}: expected true or false")


@dataclass(frozen=True)
class Rules:
    """Which values a file encrypts: one of SOPS's selectors (`SELECTORS`) with its suffix or regex,
    and whether the MAC covers only the encrypted values (`mac_only_encrypted`)."""

    selector: str = "encrypted_regex"
    pattern: str = DEFAULT_ENCRYPTED_REGEX
    mac_only_encrypted: bool = False

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> Rules:
        """A file's rules as SOPS reads them; none set means its default, unencrypted_suffix `_unencrypted`."""
        for name in _UNSUPPORTED:
            if meta.get(name):
                raise SopsError(f"sops.{name}: not supported by gitorch; re-encrypt without it")
        chosen = [n for n in SELECTORS if meta.get(n)]
        if len(chosen) > 1:  # SOPS itself refuses to combine them
            raise SopsError(f"sops: only one of {', '.join(chosen)} may be set")
        selector = chosen[0] if chosen else "unencrypted_suffix"
        pattern = str(meta[selector]) if chosen else DEFAULT_UNENCRYPTED_SUFFIX
        rules = cls(selector, pattern, _flag(meta, "mac_only_encrypted"))
        rules.matcher()  # a bad regex is the file's error, found before any value is read
        return rules

    def metadata(self) -> dict[str, Any]:
        """The fields SOPS writes for these rules (mac_only_encrypted only when set)."""
        return {self.selector: self.pattern, **({"mac_only_encrypted": True} if self.mac_only_encrypted else {})}

    def matcher(self) -> Callable[[Sequence[str]], bool]:
        """Whether a value at a key path is encrypted (sops.go's shouldBeEncrypted; Go's
        regexp.Match is an unanchored search, and any key of the path may match)."""
        if self.selector not in SELECTORS or not self.pattern:
            raise SopsError(f"sops: {self.selector!r} with {self.pattern!r} is not a rule "
                            f"(one of {', '.join(SELECTORS)}, with a suffix or regex)")
        wanted = not self.selector.startswith("unencrypted")
        if self.selector.endswith("suffix"):
            suffix = self.pattern

            def by_suffix(path: Sequence[str]) -> bool:
                return any(k.endswith(suffix) for k in path) == wanted
            return by_suffix
        try:
            found = re.compile(self.pattern)
        except re.error as exc:
            raise SopsError(f"sops.{self.selector}: bad regular expression: {exc}") from exc

        def by_regex(path: Sequence[str]) -> bool:
            return any(found.search(k) is not None for k in path) == wanted
        return by_regex


SECRET_RULES = Rules()
"""gitorch's default: a Kubernetes Secret's `data` and `stringData` values encrypted, the rest readable."""


def _rules(meta: Mapping[str, Any]) -> Callable[[Sequence[str]], bool]:
    return Rules.of(meta).matcher()


def left_plaintext(body: Mapping[str, Any], rules: Rules,
                   roots: Sequence[str] = SECRET_FIELDS) -> list[tuple[str | int, ...]]:
    """Where `rules` leave a non-empty value under the top-level `roots` unencrypted (a Secret's
    data and stringData by default), as paths of keys and list indexes; values themselves are not returned."""
    should = rules.matcher()
    out: list[tuple[str | int, ...]] = []

    def walk(node: Any, path: tuple[str | int, ...], keys: list[str]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, str(k)), [*keys, str(k)])
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, (*path, i), keys)
        elif node is not None and node != "" and not should(keys):
            out.append(path)

    for root in roots:
        if root in body:
            walk(body[root], (root,), [root])
    return out


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
    from gitorch.source.certificates import aes_gcm_seal  # cryptography: only for encrypted files

    iv = os.urandom(32)
    data, tag = aes_gcm_seal(key, iv, _to_bytes(value), aad.encode())
    enc = base64.b64encode
    return (f"ENC[AES256_GCM,data:{enc(data).decode()},iv:{enc(iv).decode()},"
            f"tag:{enc(tag).decode()},type:{_type_name(value)}]")


def _decrypt_value(value: str, key: bytes, aad: str, where: str) -> Any:
    if value == "":
        return ""
    from gitorch.source.certificates import AeadError, aes_gcm_open  # cryptography: only for encrypted files

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


_KEY_KINDS = ("age", "pgp", "kms", "gcp_kms", "hckms", "azure_kv", "hc_vault")


def key_groups(meta: Mapping[str, Any]) -> list[dict[str, list[Mapping[str, Any]]]]:
    """The file's key groups as SOPS reads them (stores.go, internalKeygroups): its top-level keys
    are the one group when it has any, and key_groups is then ignored; each group's keys by kind."""
    def group(m: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
        out: dict[str, list[Mapping[str, Any]]] = {}
        for kind in _KEY_KINDS:
            found = [s for s in m.get(kind) or [] if isinstance(s, Mapping)] if isinstance(m.get(kind), list) else []
            if found:
                out[kind] = found
        return out

    top = group(meta)
    if top:
        return [top]
    return [group(g) for g in meta.get("key_groups") or [] if isinstance(g, Mapping)]


def recipients(meta: Mapping[str, Any]) -> list[list[str]]:
    """The age recipients of each key group (what `secret edit` encrypts for again)."""
    return [[str(s.get("recipient", "")) for s in g.get("age", [])] for g in key_groups(meta)]


def other_keys(meta: Mapping[str, Any]) -> list[str]:
    """The kinds of non-age keys the file is also encrypted for (pgp, kms, ...), which gitorch cannot write."""
    return sorted({kind for g in key_groups(meta) for kind in g if kind != "age"})


def _age_stanzas(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for g in key_groups(meta) for s in g.get("age", [])]


# Shamir's secret sharing over GF(2^8) as SOPS's shamir package (from Vault) does it: the data key
# split into one part per key group, each part one byte longer (its x coordinate, 1 for the first group).

def _gf_mul(a: int, b: int) -> int:
    out = 0
    for _ in range(8):  # the AES field: x^8 + x^4 + x^3 + x + 1
        if b & 1:
            out ^= a
        a = ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1
        b >>= 1
    return out


def _gf_inverse(a: int) -> int:
    out = 1
    for _ in range(254):  # a^254 = a^-1
        out = _gf_mul(out, a)
    return out


def shamir_split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """`parts` shares of `secret`, any `threshold` of which give it back (shamir.Split)."""
    if not 2 <= threshold <= parts <= 255:
        raise SopsError(f"sops: shamir_threshold {threshold} with {parts} key groups (needs 2 <= threshold <= groups)")
    shares = [bytearray(len(secret) + 1) for _ in range(parts)]
    for i, share in enumerate(shares):
        share[-1] = i + 1
    for idx, byte in enumerate(secret):
        coefficients = [byte, *os.urandom(threshold - 1)]
        for share in shares:
            y = 0
            for c in reversed(coefficients):  # Horner's rule at x
                y = _gf_mul(y, share[-1]) ^ c
            share[idx] = y
    return [bytes(s) for s in shares]


def shamir_combine(parts: Sequence[bytes]) -> bytes:
    """The secret from shares of it (shamir.Combine: Lagrange interpolation at x = 0)."""
    if len(parts) < 2 or len({len(p) for p in parts}) != 1 or len(parts[0]) < 2:
        raise SopsError("sops: the key groups' parts of the data key do not combine (fewer than two, or unequal)")
    xs = [p[-1] for p in parts]
    if len(set(xs)) != len(xs):
        raise SopsError("sops: two key groups hold the same part of the data key")
    basis = []
    for i, xi in enumerate(xs):
        b = 1
        for j, xj in enumerate(xs):
            if i != j:
                b = _gf_mul(b, _gf_mul(xj, _gf_inverse(xi ^ xj)))
        basis.append(b)
    out = bytearray(len(parts[0]) - 1)
    for idx in range(len(out)):
        for p, b in zip(parts, basis, strict=True):
            out[idx] ^= _gf_mul(p[idx], b)
    return bytes(out)


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


def _open_group(stanzas: Sequence[Mapping[str, Any]], identities: Sequence[Any]) -> bytes | None:
    for s in stanzas:
        try:
            return bytes(pyrage.decrypt(str(s.get("enc", "")).encode(), list(identities)))
        except Exception:  # pyrage.DecryptError: not ours, try the next stanza
            continue
    return None


def _threshold(meta: Mapping[str, Any], groups: int) -> int:
    value = meta.get("shamir_threshold") or groups
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SopsError("sops.shamir_threshold: expected a number") from exc


def data_key(meta: Mapping[str, Any], identities: Sequence[Any]) -> bytes:
    """The file's 32-byte data key: from the first age stanza one of `identities` opens, or with
    several key groups, combined from the parts of the groups they open (SOPS's Shamir sharing)."""
    groups = key_groups(meta)
    if not _age_stanzas(meta):
        raise SopsError("sops: no age recipients in the metadata (only age keys are supported)")
    opened = [_open_group(g.get("age", []), identities) for g in groups]
    parts = [p for p in opened if p is not None]
    names = ", ".join(str(s.get("recipient", "?")) for s in _age_stanzas(meta))
    if len(groups) == 1:
        if not parts:
            raise SopsError(f"sops: none of our age keys is a recipient (file is for {names})")
        key = parts[0]
    else:
        needed = _threshold(meta, len(groups))
        if len(parts) < max(needed, 2):
            raise SopsError(f"sops: the data key is split among {len(groups)} key groups, {needed} of which "
                            f"are needed; our age keys open {len(parts)} (file is for {names})")
        key = shamir_combine(parts)
    if len(key) != 32:
        raise SopsError("sops: the data key is not 32 bytes")
    return key


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
        if len(key_groups(meta)) > 1:
            _threshold(meta, 0)
    except SopsError as exc:
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
    rules = Rules.of(meta)
    key = data_key(meta, identities)
    should, mac_only = rules.matcher(), rules.mac_only_encrypted
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
    rules: Rules = SECRET_RULES,
    groups: Sequence[Sequence[str]] = (),
    shamir_threshold: int = 0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A SOPS document readable by `sops -d` with any of the age `recipients`' identities; or, with
    several `groups` of recipients instead, by identities of `shamir_threshold` groups (default all)."""
    if recipients and groups:
        raise SopsError("encrypt: give recipients or key groups, not both")
    groups = [list(g) for g in groups] if groups else [list(recipients)]
    if not all(groups):
        raise SopsError("encrypt: each key group needs at least one age recipient")
    if not isinstance(doc, Mapping):
        raise SopsError("encrypt: expected one YAML mapping (a Kubernetes object)")
    if is_encrypted(doc):
        raise SopsError("encrypt: the document is already encrypted")
    should = rules.matcher()
    try:
        parsed = [[pyrage.x25519.Recipient.from_str(r) for r in g] for g in groups]
    except Exception as exc:
        raise SopsError("encrypt: a recipient is not an age1... public key") from exc
    key = os.urandom(32)
    threshold = shamir_threshold or len(groups)
    shares = [key] if len(groups) == 1 else shamir_split(key, len(groups), threshold)
    stanzas = [[{"recipient": r, "enc": _armor(bytes(pyrage.encrypt(share, [p])))} for r, p in zip(g, ps, strict=True)]
               for g, ps, share in zip(groups, parsed, shares, strict=True)]
    meta: dict[str, Any] = {}
    if len(groups) == 1:  # as SOPS writes one group: its keys at the top
        meta["age"] = stanzas[0]
    else:
        meta["shamir_threshold"] = threshold
        meta["key_groups"] = [{"age": s} for s in stanzas]
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    meta["lastmodified"] = stamp.isoformat().replace("+00:00", "Z")
    h = hashlib.sha512(_MAC_ONLY_ENCRYPTED_INIT if rules.mac_only_encrypted else b"")

    def leaf(value: Any, path: list[str]) -> Any:
        encrypted = should(path)
        if encrypted or not rules.mac_only_encrypted:
            h.update(_to_bytes(value))
        return _encrypt_value(value, key, ":".join(path) + ":") if encrypted else value

    out = _walk(doc, [], leaf)
    meta["mac"] = _encrypt_value(h.hexdigest().upper(), key, _rfc3339(meta["lastmodified"]))
    meta.update(rules.metadata())
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
