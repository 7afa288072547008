"""
The naive client the demo compares authfsm with: what many CLIs and agents do today.

It keeps the credential in memory, re-reads the file when the file changes, refreshes with the
refresh token *it* holds when its token is due (or after a 401), and writes the result back. It
never takes a lock, never re-reads before spending, never checks whose credential it reads, and
never gives up. Each of those is one of the failures authfsm exists for.

Only the demo uses this; it is deliberately wrong and must not be imitated.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx

from ..adapters import NativeCodec
from ..engine import PERMANENT_ERROR_CODES, Credentials, Record

__all__ = ["NaiveClient"]

#: Refresh this long before expiry (the same 5 minutes authfsm's default policy uses).
LEEWAY = timedelta(minutes=5)


class NaiveClient:
    """
    A credential cache with the classic split-brain and cross-user bugs.

    Args:
        path: the shared credential file (authfsm's native format, so both clients share it).
        token_url: the token endpoint.
        client_id: the OAuth client id.
        http: the HTTP client to use.
        clock: POSIX seconds.
    """

    def __init__(
        self,
        path: Path,
        token_url: str,
        client_id: str,
        http: httpx.Client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._token_url = token_url
        self._client_id = client_id
        self._http = http
        self._clock = clock
        self._codec = NativeCodec()
        self._seen: tuple[int, int, int] | None = None
        self._revision = 0
        self._cred: Credentials | None = None
        self._rejected = False
        #: The OAuth error code (or HTTP status) of the last failed refresh, if any.
        self.last_error: str | None = None
        self._reload_if_changed()

    @property
    def credentials(self) -> Credentials | None:
        """The credential held in memory."""
        return self._cred

    @property
    def needs_login(self) -> bool:
        """Its last refresh failed for good: nothing but a login can help it now."""
        return self.last_error in PERMANENT_ERROR_CODES

    def poll(self, resource_url: str) -> str:
        """One unit of work: reload if the file changed, refresh if due or rejected, call."""
        self._reload_if_changed()
        if self._cred is None:
            return "logged_out"
        if self._rejected or self._due():
            self._refresh()
        response = self._http.get(
            resource_url, headers={"Authorization": f"Bearer {self._cred.access_token}"}
        )
        self._rejected = response.status_code == httpx.codes.UNAUTHORIZED
        if response.is_success:
            return "ok"
        return f"http_{response.status_code}" + (f" ({self.last_error})" if self.last_error else "")

    def _due(self) -> bool:
        cred = self._cred
        if cred is None or cred.expires_at is None:
            return False
        return cred.expires_at - LEEWAY <= datetime.fromtimestamp(self._clock(), UTC)

    def _reload_if_changed(self) -> None:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            return
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return
        try:
            record = self._codec.decode(self._path.read_bytes())
        except (OSError, ValueError):
            return  # a torn or odd file: keep what is in memory and try again next time
        self._seen = seen
        self._revision = record.revision
        if record.credential is not None:
            # No identity check: whatever is in the file now is "our" credential.
            self._cred = record.credential
            self._rejected = False

    def _refresh(self) -> None:
        cred = self._cred
        if cred is None or cred.refresh_token is None:
            return
        try:
            response = self._http.post(
                self._token_url,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": cred.refresh_token,
                    "client_id": self._client_id,
                },
            )
        except httpx.HTTPError as error:
            self.last_error = f"network:{type(error).__name__}"
            return
        body = _json(response)
        if not response.is_success or not isinstance(body.get("access_token"), str):
            self.last_error = str(body.get("error") or f"http_{response.status_code}")
            return
        now = self._clock()
        expires_in = body.get("expires_in")
        self._cred = attrs.evolve(
            cred,
            access_token=body["access_token"],
            refresh_token=body.get("refresh_token") or cred.refresh_token,
            id_token=body.get("id_token") or cred.id_token,
            expires_at=(
                datetime.fromtimestamp(now + float(expires_in), UTC)
                if isinstance(expires_in, int | float)
                else None
            ),
            last_refresh=datetime.fromtimestamp(now, UTC),
        )
        self.last_error = None
        self._rejected = False
        self._write_back()

    def _write_back(self) -> None:
        # Atomic, so readers never see a torn file, but with no lock and no revision check:
        # whoever writes last wins.
        assert self._cred is not None
        self._revision += 1
        data = self._codec.encode(Record(credential=self._cred, revision=self._revision))
        fd, tmp = tempfile.mkstemp(prefix=".naive.", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        info = self._path.stat()
        self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
