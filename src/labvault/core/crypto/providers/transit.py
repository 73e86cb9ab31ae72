"""Root keys in an OpenBao/Vault Transit engine: every unwrap is a call the KMS sees and limits.

Wrapped blobs are Transit's own ``vault:v<n>:...`` ciphertexts, stored as ASCII bytes. The
wrapping key is created with ``derived=true``: Transit's ``rewrap`` takes no associated data,
so the context is bound through key derivation instead (a blob decrypts only with the
context it was wrapped under). Keys that must never be stored (audit seal, checkpoint
signing) are HMACs under a second Transit key that labvault never rotates, so retiring old
wrapping key versions leaves them intact.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx

from labvault.core.crypto.errors import DecryptionError, KeyProviderError
from labvault.core.crypto.providers.base import ActiveVersionChangedError, KeyVersion
from labvault.core.crypto.secret import Secret

_T = TypeVar("_T")

# OpenBao refuses request bodies of more than 1,000 JSON strings (listener default
# ``max_request_json_strings``); each batch item takes four (two keys, two values).
BATCH_SIZE = 200
ONLINE_UNWRAP_BATCH = 20
"""Keys per decrypt request by default (LABVAULT_TRANSIT_UNWRAP_BATCH): OpenBao's rate-limit
quota counts requests, so this cap turns it into a ceiling on keys (docs/keys.md). Encrypt
and rewrap (no plaintext key comes back) keep ``BATCH_SIZE``."""
_PREFIX = b"vault:v"
_VERSION = re.compile(rb"^vault:v([1-9][0-9]{0,9}):")
_METADATA_TTL_SECONDS = 2.0
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_BACKOFF_SECONDS = 0.1
_BACKOFF_CAP_SECONDS = 2.0
_DERIVED_KEY_BYTES = 32


class KeyProviderThrottledError(KeyProviderError):
    """OpenBao answered 429: its rate-limit quota, the second ceiling on unwraps, refused.

    A refusal of the read for now, not a fault: the caller answers 503 with ``Retry-After``
    (``retry_after``: the server's header, if it sent one), never a 500.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class TransitOptions:
    """Where the Transit key is and how to reach it: addresses, names and file paths only.

    Picklable on purpose (worker processes rebuild the provider from it); an inline token is
    never part of it (see ``TransitKeyProvider``'s ``token`` argument).
    """

    address: str
    mount: str
    key: str
    derivation_key: str | None = None
    token_file: str | None = None
    role_id: str | None = None
    secret_id_file: str | None = None
    approle_mount: str = "approle"
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    namespace: str | None = None
    timeout_seconds: float = 5.0
    retries: int = 3
    unwrap_batch: int = ONLINE_UNWRAP_BATCH
    """At most this many keys per decrypt request (1 to ``BATCH_SIZE``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.unwrap_batch <= BATCH_SIZE:
            raise ValueError(f"unwrap_batch must be between 1 and {BATCH_SIZE}")

    @property
    def derivation_key_name(self) -> str:
        return self.derivation_key or f"{self.key}-derivation"


@dataclass(frozen=True, slots=True)
class _KeyInfo:
    latest: int
    min_decryption: int
    created: dict[int, dt.datetime | None]
    min_encryption: int = 0
    """0: not set (encryption uses the latest version)."""


class TransitKeyProvider:
    """The ``KeyProvider`` over OpenBao/Vault Transit (the same HTTP API in both).

    Authenticates with ``token`` (given inline), else the token in ``options.token_file``,
    else an AppRole login (``role_id`` and the secret id read from ``secret_id_file``), which
    is repeated when the token it got expires.
    """

    def __init__(
        self,
        options: TransitOptions,
        *,
        token: Secret[str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = options
        self._where = f"OpenBao/Vault Transit at {options.address}, key {options.key!r}"
        if token is None and options.token_file is None and not _has_approle(options):
            raise KeyProviderError(
                f"{self._where}: no credentials; set LABVAULT_TRANSIT_TOKEN, "
                "LABVAULT_TRANSIT_TOKEN_FILE, or LABVAULT_TRANSIT_ROLE_ID with "
                "LABVAULT_TRANSIT_SECRET_ID_FILE"
            )
        self._inline_token = token
        self._token: Secret[str] | None = token
        self._login_lock = threading.Lock()  # one login at a time, not one per thread
        self._client = httpx.Client(
            base_url=options.address.rstrip("/") + "/v1/",
            timeout=httpx.Timeout(options.timeout_seconds),
            verify=self._tls_context(),
            transport=transport,
            headers=_base_headers(options),
            # Never through a proxy from HTTP(S)_PROXY/ALL_PROXY: the token and every
            # wrapped key would pass through it.
            trust_env=False,
        )
        self._key_info: _KeyInfo | None = None
        self._key_info_at = 0.0

    # --- identity ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "transit"

    @property
    def blobs_name_their_key(self) -> bool:
        """``vault:v<n>:...`` names a version number, not the key: two Transit keys' blobs
        look alike."""
        return False

    def __repr__(self) -> str:
        o = self.options
        return f"{type(self).__name__}(address={o.address!r}, mount={o.mount!r}, key={o.key!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a Transit key provider holds a token: it cannot be pickled; send the "
            "KeyProviderConfig and build the provider in the other process"
        )

    def close(self) -> None:
        self._client.close()

    # --- wrapping ----------------------------------------------------------------------------

    def wrap(self, material: Secret[bytes], context: str) -> bytes:
        return self.wrap_many([(material, context)])[0]

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        return self.unwrap_many([(wrapped, context)])[0]

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in _chunks(items):
            batch = [
                {"plaintext": _b64(material.reveal()), "context": _b64(context.encode())}
                for material, context in chunk
            ]
            results = self._batch("encrypt", batch)
            out.extend(str(result["ciphertext"]).encode("ascii") for result in results)
        return out

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        out: list[Secret[bytes]] = []
        for chunk in _chunks(items, self.options.unwrap_batch):
            results = self._batch("decrypt", self._ciphertext_batch(chunk))
            for result in results:
                try:
                    out.append(Secret(base64.b64decode(result["plaintext"], validate=True)))
                except (binascii.Error, KeyError, TypeError):
                    raise KeyProviderError(f"{self._where}: malformed decrypt answer") from None
        return out

    def rewrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in _chunks(items):
            results = self._batch("rewrap", self._ciphertext_batch(chunk))
            out.extend(str(result["ciphertext"]).encode("ascii") for result in results)
        return out

    def _ciphertext_batch(self, chunk: Sequence[tuple[bytes, str]]) -> list[dict[str, str]]:
        batch = []
        for wrapped, context in chunk:
            if not self.owns(wrapped):
                raise DecryptionError("not a wrapped key of the Transit provider")
            batch.append(
                {"ciphertext": bytes(wrapped).decode("ascii"), "context": _b64(context.encode())}
            )
        return batch

    # --- derivations -------------------------------------------------------------------------

    def derive_key(self, label: str) -> Secret[bytes]:
        if not label:
            raise ValueError("a derived key needs a label")
        return self._hmac(label, version=None)

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        if not label:
            raise ValueError("a derived key needs a label")
        info = self._read_key(self.options.derivation_key_name)
        first = max(info.min_decryption, 1)
        return [self._hmac(label, version=v) for v in range(info.latest, first - 1, -1)]

    def _hmac(self, label: str, *, version: int | None) -> Secret[bytes]:
        body: dict[str, Any] = {"input": _b64(label.encode())}
        if version is not None:
            body["key_version"] = version
        name = self.options.derivation_key_name
        data = self._call("POST", f"hmac/{name}/sha2-256", body, key=name)
        try:
            _, _, encoded = str(data["hmac"]).rpartition(":")
            digest = base64.b64decode(encoded, validate=True)
        except (binascii.Error, KeyError, TypeError):
            raise KeyProviderError(f"{self._where}: malformed hmac answer") from None
        if len(digest) != _DERIVED_KEY_BYTES:
            raise KeyProviderError(f"{self._where}: the derivation key gave a short hmac")
        return Secret(digest)

    # --- versions, rotation, retirement ------------------------------------------------------

    def owns(self, wrapped: bytes) -> bool:
        return bytes(wrapped).startswith(_PREFIX)

    def version_of(self, wrapped: bytes) -> str:
        return self._label(self._version_number(wrapped))

    def is_current(self, wrapped: bytes) -> bool:
        """False for a blob of another provider: a rewrap would move it here."""
        if not self.owns(wrapped):
            return False
        return self._version_number(wrapped) == self._wrapping_key_info().latest

    def versions(self) -> list[KeyVersion]:
        info = self._wrapping_key_info(fresh=True)
        return [self._key_version(info, n) for n in sorted(info.created)]

    def rotate(self) -> KeyVersion:
        self._call("POST", f"keys/{self.options.key}/rotate", {}, idempotent=False)
        info = self._wrapping_key_info(fresh=True)
        return self._key_version(info, info.latest)

    def retire(self, preserved_labels: Sequence[str], expected_active: str) -> list[KeyVersion]:
        """Raise ``min_decryption_version`` to ``expected_active``'s version, never further.

        Refused (``ActiveVersionChangedError``, nothing changed) unless that version is still the
        latest; if a rotation lands between this check and the update, the newer version
        stays usable since only versions below ``expected_active`` are disallowed.
        ``preserved_labels`` need nothing here: derivations come from a separate key that is
        never rotated nor retired. Needs a token allowed to update ``keys/<key>/config``,
        which the application's own token should not have.
        """
        del preserved_labels
        keep = self._own_version(expected_active)
        info = self._wrapping_key_info(fresh=True)
        if info.latest != keep:
            raise ActiveVersionChangedError(
                f"{self._where}: the active version is v{info.latest}, not v{keep}: a rotation "
                "happened since the check; nothing was retired"
            )
        retiring = [n for n in sorted(info.created) if info.min_decryption <= n < keep]
        if not retiring:
            return []
        config = {"min_decryption_version": keep}
        if 0 < info.min_encryption < keep:
            # Set by an earlier ``destroy_retired``; the server wants it >= the other.
            config["min_encryption_version"] = keep
        self._configure(config)
        after = self._wrapping_key_info(fresh=True)
        return [self._key_version(after, n) for n in retiring]

    def destroy_retired(self, expected_active: str) -> list[KeyVersion]:
        """Delete from OpenBao/Vault every version older than ``expected_active`` (``trim``).

        Retiring only raises ``min_decryption_version``, which an operator can lower again:
        with a database backup, the erased patients' keys would open again. Trimmed versions
        are gone from Transit's storage for good. Only retired versions are trimmed (the
        server refuses to trim above ``min_decryption_version``).
        """
        keep = self._own_version(expected_active)
        info = self._wrapping_key_info(fresh=True)
        if info.min_decryption < keep:
            raise KeyProviderError(
                f"{self._where}: versions below v{keep} are not all retired "
                f"(min_decryption_version is v{info.min_decryption}); retire them first"
            )
        doomed = [n for n in sorted(info.created) if n < keep]
        if not doomed:
            return []
        if info.min_encryption < keep:
            # The server trims no further than min_encryption_version, which must be set;
            # new wraps use the latest version (>= keep) anyway.
            self._configure({"min_encryption_version": keep})
        self._call(
            "POST",
            f"keys/{self.options.key}/trim",
            {"min_available_version": keep},
            forbidden_hint="destroying retired key versions needs an operator token allowed "
            f"to update {self.options.mount}/keys/{self.options.key}/trim",
        )
        self._key_info = None
        return [
            KeyVersion(self._label(n), active=False, can_unwrap=False, created=info.created[n])
            for n in doomed
        ]

    def _configure(self, config: dict[str, int]) -> None:
        self._call(
            "POST",
            f"keys/{self.options.key}/config",
            config,
            forbidden_hint="retiring key versions needs an operator token allowed to update "
            f"{self.options.mount}/keys/{self.options.key}/config (the application's token "
            "should not have that right)",
        )

    def _own_version(self, label: str) -> int:
        """The version number in a label of this key (``transit:<key>:v<n>``)."""
        prefix = f"transit:{self.options.key}:v"
        number = label.removeprefix(prefix)
        if number == label or not number.isdigit() or int(number) < 1:
            raise KeyProviderError(f"{self._where}: {label!r} is not a version of this key")
        return int(number)

    def ensure_keys(self) -> None:
        """Create the wrapping key (``derived=true``) and the derivation key if missing.

        An existing wrapping key created without key derivation cannot bind contexts through
        ``rewrap``: it is refused rather than used.
        """
        key = self.options.key
        existing = self._call("GET", f"keys/{key}", None, missing_ok=True)
        if existing is None:
            self._call("POST", f"keys/{key}", {"type": "aes256-gcm96", "derived": True})
        elif not existing.get("derived") or not existing.get("supports_encryption"):
            raise KeyProviderError(
                f"{self._where}: the key exists but was not created with derived=true "
                "(type aes256-gcm96); labvault binds each wrapped key to its tenant and key id "
                "through Transit key derivation: create a new key with derived=true and point "
                "LABVAULT_KEY_PROVIDER at it"
            )
        else:
            _refuse_extractable(existing, self._where)
        name = self.options.derivation_key_name
        if self._call("GET", f"keys/{name}", None, missing_ok=True, key=name) is None:
            self._call("POST", f"keys/{name}", {"type": "hmac", "key_size": 32}, key=name)
        self._key_info = None

    # --- key metadata ------------------------------------------------------------------------

    def _version_number(self, wrapped: bytes) -> int:
        match = _VERSION.match(bytes(wrapped))
        if match is None:
            raise KeyProviderError("not a wrapped key of the Transit provider")
        return int(match.group(1))

    def _label(self, n: int) -> str:
        return f"transit:{self.options.key}:v{n}"

    def _key_version(self, info: _KeyInfo, n: int) -> KeyVersion:
        return KeyVersion(
            label=self._label(n),
            active=n == info.latest,
            can_unwrap=n >= info.min_decryption,
            created=info.created.get(n),
        )

    def _wrapping_key_info(self, *, fresh: bool = False) -> _KeyInfo:
        now = time.monotonic()
        if fresh or self._key_info is None or now - self._key_info_at > _METADATA_TTL_SECONDS:
            self._key_info = self._read_key(self.options.key)
            self._key_info_at = now
        return self._key_info

    def _read_key(self, name: str) -> _KeyInfo:
        data = self._call("GET", f"keys/{name}", None, key=name)
        try:
            latest = int(data["latest_version"])
            min_decryption = int(data.get("min_decryption_version") or 1)
            min_encryption = int(data.get("min_encryption_version") or 0)
            # ``keys`` lists only the versions that still decrypt (none for hmac keys): the
            # retired ones below min_decryption_version are still held, so listed too.
            first = max(int(data.get("min_available_version") or 0), 1)
            created: dict[int, dt.datetime | None] = dict.fromkeys(range(first, latest + 1))
            for n, when in (data.get("keys") or {}).items():
                created[int(n)] = _timestamp(when)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyProviderError(f"{self._where}: malformed key metadata for {name!r}") from None
        return _KeyInfo(latest, min_decryption, created, min_encryption)

    # --- HTTP --------------------------------------------------------------------------------

    def _batch(self, operation: str, batch: list[dict[str, str]]) -> list[dict[str, Any]]:
        """One batch call; raises for the first failed item, naming its position only."""
        key = self.options.key
        data = self._call("POST", f"{operation}/{key}", {"batch_input": batch}, batch=True)
        results = data.get("batch_results")
        if not isinstance(results, list) or len(results) != len(batch):
            raise KeyProviderError(f"{self._where}: malformed {operation} answer")
        for position, result in enumerate(results):
            error = result.get("error") if isinstance(result, dict) else "malformed item"
            if error:
                raise self._item_error(operation, position, str(error))
        return results

    def _item_error(self, operation: str, position: int, error: str) -> Exception:
        lowered = error.lower()
        if "too old" in lowered or "no such key version" in lowered:
            return KeyProviderError(
                f"{self._where}: item {position} of the {operation} batch is wrapped under a "
                "retired key version (below min_decryption_version)"
            )
        if operation != "encrypt" and (
            "authentication failed" in lowered
            or "invalid ciphertext" in lowered
            or "decode" in lowered
            or "invalid version" in lowered
        ):
            return DecryptionError(
                f"wrapped key (item {position} of the {operation} batch) does not authenticate "
                "for this context (moved or altered)"
            )
        return KeyProviderError(f"{self._where}: item {position} of the {operation} batch: {error}")

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        key: str | None = None,
        idempotent: bool = True,
        batch: bool = False,
        missing_ok: bool = False,
        forbidden_hint: str | None = None,
    ) -> Any:
        """A Transit call with authentication, retries and one clear error per failure."""
        name = key or self.options.key
        where = f"OpenBao/Vault Transit at {self.options.address}, key {name!r}"
        reauthenticated = False
        while True:
            sent_with = self._current_token(where)
            response = self._send(
                method, f"{self.options.mount}/{path}", body, where, idempotent, sent_with
            )
            status = response.status_code
            if status == 403 and not reauthenticated and self._can_reauthenticate():
                self._forget_token(sent_with)
                reauthenticated = True
                continue
            if status == 404 and missing_ok:
                return None
            if status == 204:
                return {}
            document = _json(response)
            data = document.get("data") if isinstance(document, dict) else None
            if status < 300:
                return data if data is not None else {}
            if batch and status == 400 and isinstance(data, dict) and "batch_results" in data:
                return data
            if status == 429:
                raise KeyProviderThrottledError(
                    f"{where}: refused by a rate-limit quota (429); nothing was returned",
                    retry_after=_retry_after_seconds(response),
                )
            raise self._status_error(status, document, where, forbidden_hint)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        where: str,
        idempotent: bool,
        token: Secret[str],
    ) -> httpx.Response:
        attempts = self.options.retries + 1
        headers = {"X-Vault-Token": token.reveal()}
        for attempt in range(attempts):
            last = attempt == attempts - 1
            # Built in the handler, raised after it: the httpx exception (whose request holds
            # the X-Vault-Token header) stays out of the error's __cause__ and __context__.
            failure: KeyProviderError | None = None
            try:
                response = self._client.request(method, path, json=body, headers=headers)
            except httpx.TransportError as exc:
                tls = _tls_failure(exc)
                if tls is not None:  # a configuration error: the same on every attempt
                    failure = KeyProviderError(f"{where}: {tls}")
                elif isinstance(exc, httpx.ConnectError):
                    if last:
                        failure = self._unreachable(where, exc)
                # Sent, maybe applied: retried only when doing it twice changes nothing.
                elif last or not idempotent:
                    failure = self._unreachable(where, exc)
            else:
                if response.status_code not in _RETRYABLE_STATUS or last or not idempotent:
                    return response
                retry_after = _retry_after(response)
                if retry_after is not None:
                    time.sleep(retry_after)
                    continue
            if failure is not None:
                raise failure
            time.sleep(min(_BACKOFF_SECONDS * 2**attempt, _BACKOFF_CAP_SECONDS))
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, where: str, exc: httpx.TransportError) -> KeyProviderError:
        return KeyProviderError(
            f"{where}: cannot reach the server after {self.options.retries + 1} attempts "
            f"({type(exc).__name__}); check LABVAULT_KEY_PROVIDER, the network and TLS settings"
        )

    def _status_error(
        self, status: int, document: Any, where: str, forbidden_hint: str | None
    ) -> KeyProviderError:
        errors = document.get("errors") if isinstance(document, dict) else None
        detail = "; ".join(str(e) for e in errors)[:300] if isinstance(errors, list) else ""
        if status == 403:
            hint = forbidden_hint or (
                "check that the token (or AppRole) is valid and that its policy allows this "
                "operation on the key"
            )
            return KeyProviderError(f"{where}: permission denied; {hint}")
        if status == 404:
            return KeyProviderError(
                f"{where}: not found; check the Transit mount and key name in "
                "LABVAULT_KEY_PROVIDER (run `labvault init` to create the keys)"
            )
        if status == 503:
            return KeyProviderError(f"{where}: the server is sealed or unavailable ({detail})")
        return KeyProviderError(f"{where}: the server answered {status} ({detail})")

    # --- authentication ----------------------------------------------------------------------

    def _can_reauthenticate(self) -> bool:
        return self._inline_token is None

    def _current_token(self, where: str) -> Secret[str]:
        token = self._token
        if token is not None:
            return token
        with self._login_lock:
            if self._token is None:
                if self.options.token_file is not None:
                    path = self.options.token_file
                    self._token = Secret(_read_secret_file(path, where, "token"))
                else:
                    self._token = self._approle_login(where)
            return self._token

    def _forget_token(self, refused: Secret[str]) -> None:
        """Drop a refused token, unless another thread already replaced it."""
        with self._login_lock:
            if self._token is refused:
                self._token = None

    def _approle_login(self, where: str) -> Secret[str]:
        o = self.options
        if o.role_id is None or o.secret_id_file is None:
            raise KeyProviderError(f"{where}: no credentials left to log in with")
        secret_id = _read_secret_file(o.secret_id_file, where, "AppRole secret id")
        path = f"auth/{o.approle_mount}/login"
        response = self._login_once(path, {"role_id": o.role_id, "secret_id": secret_id}, where)
        document = _json(response)
        token = None
        if response.status_code < 300 and isinstance(document, dict):
            auth = document.get("auth")
            token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise KeyProviderError(
                f"{where}: AppRole login at auth/{o.approle_mount} failed "
                f"({response.status_code}); check LABVAULT_TRANSIT_ROLE_ID and the secret id "
                "in LABVAULT_TRANSIT_SECRET_ID_FILE"
            )
        return Secret(token)

    def _login_once(self, path: str, body: dict[str, str], where: str) -> httpx.Response:
        """POST a login, retried only when it was never sent (a connection error).

        A login is not idempotent: a secret id limited in uses (``secret_id_num_uses``) is
        spent by a request that timed out or got a 5xx after the server counted it, so
        replaying it would burn the next use or fail. Errors are raised outside the handler
        (no httpx exception in their chain).
        """
        for attempt in range(self.options.retries + 1):
            failure: KeyProviderError | None = None
            try:
                return self._client.post(path, json=body)
            except httpx.TransportError as exc:
                tls = _tls_failure(exc)
                if tls is not None:
                    failure = KeyProviderError(f"{where}: {tls}")
                elif isinstance(exc, httpx.ConnectError):
                    if attempt == self.options.retries:
                        failure = self._unreachable(where, exc)
                else:
                    failure = KeyProviderError(
                        f"{where}: the AppRole login was sent but no answer came back "
                        f"({type(exc).__name__}); it is not repeated, since a secret id with "
                        "limited uses may have been spent: check the server, and the secret id "
                        "in LABVAULT_TRANSIT_SECRET_ID_FILE, then try again"
                    )
            if failure is not None:
                raise failure
            time.sleep(min(_BACKOFF_SECONDS * 2**attempt, _BACKOFF_CAP_SECONDS))
        raise AssertionError("unreachable")  # pragma: no cover

    def _tls_context(self) -> ssl.SSLContext | bool:
        """The TLS settings, checked now: a bad file is named by its setting, at startup."""
        o = self.options
        if not o.address.startswith("https:"):
            return True
        context = ssl.create_default_context()
        if o.ca_file is not None:
            try:
                context.load_verify_locations(cafile=o.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise self._tls_file_error(
                    f"cannot use the CA file {o.ca_file} (LABVAULT_TRANSIT_CA_FILE)", exc
                ) from None
        if o.client_cert_file is None:
            if o.client_key_file is not None:
                raise KeyProviderError(
                    f"{self._where}: LABVAULT_TRANSIT_CLIENT_KEY_FILE is set without "
                    "LABVAULT_TRANSIT_CLIENT_CERT_FILE; mutual TLS needs both"
                )
            return context
        files = [(o.client_cert_file, "LABVAULT_TRANSIT_CLIENT_CERT_FILE")]
        if o.client_key_file is not None:
            files.append((o.client_key_file, "LABVAULT_TRANSIT_CLIENT_KEY_FILE"))
        for path, setting in files:
            try:
                Path(path).open("rb").close()
            except OSError as exc:
                raise self._tls_file_error(f"cannot read {path} ({setting})", exc) from None
        try:
            # No password: an encrypted key must fail here, not wait for one on a terminal.
            context.load_cert_chain(o.client_cert_file, o.client_key_file, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            pair = (
                f"the client certificate {o.client_cert_file} "
                f"(LABVAULT_TRANSIT_CLIENT_CERT_FILE) and its key {o.client_key_file} "
                "(LABVAULT_TRANSIT_CLIENT_KEY_FILE)"
            )
            if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
                raise KeyProviderError(
                    f"{self._where}: the private key does not match the certificate: {pair}"
                ) from None
            raise self._tls_file_error(
                f"cannot load {pair}; both must be PEM, the key unencrypted", exc
            ) from None
        return context

    def _tls_file_error(self, what: str, exc: OSError | ssl.SSLError) -> KeyProviderError:
        """Only the reason's code or OS message, never the exception text (no file content)."""
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or type(exc).__name__
        else:
            reason = exc.strerror or type(exc).__name__
        return KeyProviderError(f"{self._where}: {what}: {reason}")


def _no_password() -> bytes:
    return b""


def _tls_failure(exc: BaseException) -> str | None:
    """What a TLS configuration error under an httpx exception means, or None.

    Only a certificate the client cannot verify, or one the server refuses: those fail the
    same way on every attempt. Other TLS errors (a connection cut mid-handshake while the
    server restarts) are retried like any failed connection.

    Built from the ssl error's reason code and verification message only (no request, no
    header, no repr).
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or cause.reason or "verification failed"
            return (
                f"the server's TLS certificate could not be verified ({detail}); set "
                "LABVAULT_TRANSIT_CA_FILE to the CA that signed it, and check that the "
                "certificate names the host in LABVAULT_KEY_PROVIDER"
            )
        if isinstance(cause, ssl.SSLError):
            reason = str(cause.reason or "unknown")
            if reason in _CLIENT_CERT_REFUSALS:
                return (
                    f"the server refused the TLS handshake ({reason.lower()}): it requires a "
                    "client certificate it trusts; check LABVAULT_TRANSIT_CLIENT_CERT_FILE "
                    "and LABVAULT_TRANSIT_CLIENT_KEY_FILE"
                )
        cause = cause.__cause__ or cause.__context__
    return None


_CLIENT_CERT_REFUSALS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
)
"""OpenSSL reason codes of the alerts a server sends about the client's certificate."""


def _refuse_extractable(key: dict[str, Any], where: str) -> None:
    """A wrapping key whose material can leave OpenBao/Vault defeats the point of Transit."""
    for flag in ("exportable", "allow_plaintext_backup"):
        if key.get(flag):
            raise KeyProviderError(
                f"{where}: the key exists with {flag}=true: its material can be taken out of "
                "OpenBao/Vault (and this cannot be undone on the key); labvault refuses it. "
                "Create a new key (type aes256-gcm96, derived=true, neither exportable nor "
                "allowing plaintext backup) and point LABVAULT_KEY_PROVIDER at it"
            )


def _has_approle(options: TransitOptions) -> bool:
    return options.role_id is not None and options.secret_id_file is not None


def _base_headers(options: TransitOptions) -> dict[str, str]:
    headers = {"X-Vault-Request": "true"}
    if options.namespace:
        headers["X-Vault-Namespace"] = options.namespace
    return headers


def _read_secret_file(path: str, where: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KeyProviderError(
            f"{where}: cannot read the {what} file {path} ({exc.strerror})"
        ) from None
    if not value:
        raise KeyProviderError(f"{where}: the {what} file {path} is empty")
    return value


def _chunks(items: Sequence[_T], size: int = BATCH_SIZE) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    seconds = _retry_after_seconds(response)
    return None if seconds is None else min(seconds, _BACKOFF_CAP_SECONDS)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _timestamp(value: object) -> dt.datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
