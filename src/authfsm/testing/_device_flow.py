"""
The device authorization grant (RFC 8628) of the test token server, driven from the test.

:class:`DeviceFlow` serves the device authorization endpoint ``/oauth/device``, a placeholder
verification page ``/device`` and the ``urn:ietf:params:oauth:grant-type:device_code`` grant of
the token endpoint. The test approves, denies or scripts each device code and reads back every
poll's time on the server clock, so a client's polling (interval, ``slow_down``, deadline) can
be checked without waiting. An approved code starts a token family as a login does.

It never logs or reprs a device code or a token.
"""

from __future__ import annotations

import collections
import enum
import secrets
from collections.abc import Mapping
from typing import Literal

import attrs

from ._http import MalformedRequestError, Reply, parse_params
from ._login_host import TOKEN_PATH, Identity, LoginHost, page, positive, with_query
from ._replies import ScriptedResponse, error_reply, json_reply, numeric, scripted_reply

__all__ = [
    "DEVICE_AUTHORIZATION_PATH",
    "DEVICE_CODE_GRANT",
    "DEVICE_PAGE_PATH",
    "DeviceAuthorization",
    "DeviceFlow",
    "DeviceStatus",
]

DEVICE_AUTHORIZATION_PATH = "/oauth/device"
DEVICE_PAGE_PATH = "/device"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

#: Where a device authorization stands; see :class:`DeviceAuthorization`.
DeviceStatus = Literal["pending", "approved", "denied", "expired", "redeemed"]

# RFC 8628 §6.1: consonants only (no vowels, so no words), case-insensitive, 8 characters.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
# RFC 8628 §3.5: each slow_down adds this much to the interval, for good.
_SLOW_DOWN_STEP = 5.0
# RFC 8628 §3.2: a client assumes 5 seconds when the server sends no interval.
_DEFAULT_INTERVAL = 5.0


class _Unset(enum.Enum):
    UNSET = enum.auto()


@attrs.frozen(kw_only=True)
class DeviceAuthorization:
    """
    A device authorization (RFC 8628) as the test sees it; it never holds the device code.

    Attributes:
        user_code: the code the user is shown (``BCDF-GHJK``).
        client_id: the client that asked.
        scope: the scope it asked for, if any.
        status: ``"pending"`` (polls answer ``authorization_pending``), ``"approved"`` (the
            next poll gets tokens), ``"denied"`` (``access_denied``), ``"expired"``
            (``expired_token``: the server clock reached ``expires_at`` before tokens were
            issued) or ``"redeemed"`` (tokens issued; the device code is spent).
        issued_at: the server clock's time of the device authorization request.
        expires_at: ``issued_at`` plus the ``expires_in`` that was announced.
        interval: the ``interval`` announced, or None when it was omitted.
        required_interval: the interval the client must keep now: the announced one (5 s when
            omitted), plus 5 s for each ``slow_down`` answered.
        polls: the server clock's time of every token request for this device code, in order;
            their differences are the client's polling intervals.
    """

    user_code: str
    client_id: str
    scope: str | None
    status: DeviceStatus
    issued_at: float
    expires_at: float
    interval: float | None
    required_interval: float
    polls: tuple[float, ...]


@attrs.define(kw_only=True, eq=False)
class _Device:
    user_code: str
    client_id: str
    scope: str | None
    issued_at: float
    expires_at: float
    interval: float | None
    required_interval: float
    status: Literal["pending", "approved", "denied", "redeemed"] = "pending"
    identity: Identity | None = None
    polls: list[float] = attrs.field(factory=list)
    script: collections.deque[str | ScriptedResponse] = attrs.field(
        factory=collections.deque, repr=False
    )

    def status_at(self, now: float) -> DeviceStatus:
        if self.status in ("pending", "approved") and now >= self.expires_at:
            return "expired"
        return self.status


class DeviceFlow(LoginHost):
    """
    The device flow of :class:`~authfsm.testing.TokenServer` (see the module docstring).

    Its public methods and properties appear on ``TokenServer``; this class is not used alone.
    """

    def _init_device_flow(
        self,
        *,
        device_code_ttl: float,
        device_interval: float | None,
        enforce_device_interval: bool,
    ) -> None:
        self._devices: dict[str, _Device] = {}
        self._devices_by_user_code: dict[str, _Device] = {}
        self._device_polls = 0
        self._device_code_ttl = 1.0
        self._device_interval: float | None = None
        self.device_code_ttl = device_code_ttl
        self.device_interval = device_interval
        #: When true, a device poll sooner than the required interval after the previous one (on
        #: the server clock) is answered ``slow_down``, and the interval grows by 5 s for good,
        #: as RFC 8628 §3.5 lets a server do. Off by default: with a FakeClock that the client
        #: does not advance, every poll would look too soon.
        self.enforce_device_interval = enforce_device_interval

    # -- addresses ---------------------------------------------------------------------------

    @property
    def device_authorization_url(self) -> str:
        """The RFC 8628 device authorization endpoint, ``{url}/oauth/device``."""
        return self.url + DEVICE_AUTHORIZATION_PATH

    @property
    def device_verification_url(self) -> str:
        """The ``verification_uri`` shown to the user, ``{url}/device`` (a placeholder page)."""
        return self.url + DEVICE_PAGE_PATH

    # -- settings ----------------------------------------------------------------------------

    @property
    def device_code_ttl(self) -> float:
        """The ``expires_in`` of new device codes; later polls answer ``expired_token``."""
        return self._device_code_ttl

    @device_code_ttl.setter
    def device_code_ttl(self, seconds: float) -> None:
        self._device_code_ttl = positive(seconds, "device_code_ttl")

    @property
    def device_interval(self) -> float | None:
        """
        The ``interval`` new device authorizations announce, in seconds; None leaves it out.

        RFC 8628 §3.2 makes it optional (a client then waits 5 s), and some providers do omit
        it, so set None to test that default.
        """
        return self._device_interval

    @device_interval.setter
    def device_interval(self, seconds: float | None) -> None:
        if seconds is not None and (isinstance(seconds, bool) or not seconds >= 0):
            raise ValueError("device_interval must be None or a number of seconds >= 0")
        self._device_interval = None if seconds is None else float(seconds)

    # -- the test side -----------------------------------------------------------------------

    def approve_device(
        self,
        user_code: str,
        *,
        user_id: str | None = None,
        account_id: str | _Unset | None = _Unset.UNSET,
        codex_claims: bool | None = None,
    ) -> None:
        """
        Approve a device authorization, as the user would on the verification page.

        The next poll gets tokens for a new family. The identity is the :meth:`login_as` one,
        with whichever of ``user_id``, ``account_id`` and ``codex_claims`` are given replacing
        its parts. ``user_code`` is matched case-insensitively, with or without its dash.
        Raises KeyError for an unknown code and ValueError when it is no longer pending.
        """
        with self._lock:
            device = self._pending_device(user_code)
            base = self._login_identity
            device.identity = Identity(
                user_id=base.user_id if user_id is None else user_id,
                account_id=base.account_id if isinstance(account_id, _Unset) else account_id,
                codex_claims=base.codex_claims if codex_claims is None else codex_claims,
            )
            device.status = "approved"

    def deny_device(self, user_code: str) -> None:
        """Deny a device authorization: every later poll answers ``access_denied``."""
        with self._lock:
            self._pending_device(user_code).status = "denied"

    def script_device(self, user_code: str, *answers: str | ScriptedResponse) -> None:
        """
        Queue answers for the next polls of one device code, oldest first.

        A string is answered as that OAuth error, ``400 {"error": ...}``: ``"slow_down"`` (which
        also raises the required interval by 5 s), ``"authorization_pending"``,
        ``"server_error"``...; a :class:`ScriptedResponse` is sent as it is. A scripted poll is
        still counted, and an expired or redeemed device code answers as such instead.
        """
        for answer in answers:
            if not isinstance(answer, str | ScriptedResponse) or answer == "":
                raise TypeError("script_device() takes error strings or ScriptedResponse")
        with self._lock:
            self._device_for(user_code).script.extend(answers)

    def device_authorization(self, user_code: str) -> DeviceAuthorization:
        """Where one device authorization stands now; KeyError for an unknown code."""
        with self._lock:
            return self._snapshot(self._device_for(user_code))

    @property
    def device_authorizations(self) -> list[DeviceAuthorization]:
        """Every device authorization so far, oldest first."""
        with self._lock:
            return [self._snapshot(device) for device in self._devices.values()]

    @property
    def device_polls(self) -> int:
        """
        Token requests with the device_code grant that reached a device code, whatever the answer.

        A response queued with :meth:`script` answers before the grant is read, so it is counted
        in :attr:`token_calls` only; one queued with :meth:`script_device` is counted here.
        """
        return self._device_polls

    # -- request handling (called from handler threads) --------------------------------------

    def _handle_device(
        self,
        method: str,
        path: str,
        content_type: str | None,
        authorization: str | None,
        body: bytes,
    ) -> Reply:
        if path == DEVICE_AUTHORIZATION_PATH:
            if method != "POST":
                return self._refuse(path, method, 405, "invalid_request", "use POST")
            return self._device_authorization(content_type, authorization, body)
        if method != "GET":
            return self._refuse(path, method, 405, "invalid_request", "use GET")
        with self._lock:
            self._log(path, method, None, 200, "device_page", None)
        return page(
            200,
            "Device login",
            "This is a test identity provider. Devices are approved by the test, with "
            "TokenServer.approve_device(user_code).",
        )

    def _device_authorization(
        self, content_type: str | None, authorization: str | None, body: bytes
    ) -> Reply:
        path = DEVICE_AUTHORIZATION_PATH
        try:
            params = parse_params(content_type, body)
        except MalformedRequestError:
            return self._refuse(path, "POST", 400, "invalid_request", "the body is malformed")
        with self._lock:
            client_error = self._authenticate(params, authorization)
            if client_error is not None:
                self._log(path, "POST", None, 401, "invalid_client", None)
                return error_reply(
                    401,
                    "invalid_client",
                    client_error,
                    (("WWW-Authenticate", 'Basic realm="authfsm-testing"'),),
                )
            now = self._clock()
            user_code = _new_user_code(self._devices_by_user_code)
            device_code = secrets.token_urlsafe(32)
            interval = self._device_interval
            device = _Device(
                user_code=user_code,
                client_id=self._client_id,
                scope=params.get("scope") or None,
                issued_at=now,
                expires_at=now + self._device_code_ttl,
                interval=interval,
                required_interval=_DEFAULT_INTERVAL if interval is None else interval,
            )
            self._devices[device_code] = device
            self._devices_by_user_code[_normal_user_code(user_code)] = device
            self._log(path, "POST", None, 200, "device_code_issued", None, now)
        response: dict[str, object] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.device_verification_url,
            "verification_uri_complete": with_query(
                self.device_verification_url, {"user_code": user_code}
            ),
            "expires_in": numeric(self._device_code_ttl),
        }
        if interval is not None:
            response["interval"] = numeric(interval)
        return json_reply(200, response)

    def _poll_device(self, params: Mapping[str, str]) -> Reply:
        grant = DEVICE_CODE_GRANT
        presented = params.get("device_code")
        if not presented:
            return self._grant_refused(
                grant, 400, "bad_request", "invalid_request", "device_code is required"
            )
        now = self._clock()
        device = self._devices.get(presented)
        if device is None:
            return self._grant_refused(
                grant, 400, "invalid_grant", "invalid_grant", "unknown device_code"
            )
        self._device_polls += 1
        previous = device.polls[-1] if device.polls else None
        device.polls.append(now)
        status = device.status_at(now)
        if status == "redeemed":
            return self._grant_refused(
                grant, 400, "invalid_grant", "invalid_grant", "device_code already used"
            )
        if status == "expired":
            return self._device_answer("expired_token", "the device code has expired", now)
        if device.script:
            answer = device.script.popleft()
            if isinstance(answer, ScriptedResponse):
                self._log(TOKEN_PATH, "POST", grant, answer.status, "scripted", None, now)
                return scripted_reply(answer)
            if answer == "slow_down":
                device.required_interval += _SLOW_DOWN_STEP
            self._log(TOKEN_PATH, "POST", grant, 400, "scripted", None, now)
            return error_reply(400, answer, "scripted by the test")
        if (
            self.enforce_device_interval
            and previous is not None
            and now - previous < device.required_interval
        ):
            device.required_interval += _SLOW_DOWN_STEP
            return self._device_answer("slow_down", "polling too fast", now)
        if status == "pending":
            return self._device_answer("authorization_pending", "not approved yet", now)
        if status == "denied":
            return self._device_answer("access_denied", "the user denied the request", now)
        identity = device.identity
        if identity is None:  # approve_device() always sets it; never reached
            raise RuntimeError("an approved device authorization has no identity")
        family_id, response = self._start_family(
            user_id=identity.user_id,
            account_id=identity.account_id,
            codex_claims=identity.codex_claims,
            now=now,
            nonce=None,
            auth_time=now,
        )
        device.status = "redeemed"
        if device.scope is not None:
            response["scope"] = device.scope
        self._log(TOKEN_PATH, "POST", grant, 200, "device_exchanged", family_id, now)
        return json_reply(200, response)

    def _device_answer(
        self,
        error: Literal["authorization_pending", "slow_down", "access_denied", "expired_token"],
        description: str,
        now: float,
    ) -> Reply:
        self._log(TOKEN_PATH, "POST", DEVICE_CODE_GRANT, 400, error, None, now)
        return error_reply(400, error, description)

    # -- state (call with the lock held) -----------------------------------------------------

    def _device_for(self, user_code: str) -> _Device:
        device = self._devices_by_user_code.get(_normal_user_code(user_code))
        if device is None:
            raise KeyError("no device authorization has that user code")
        return device

    def _pending_device(self, user_code: str) -> _Device:
        device = self._device_for(user_code)
        status = device.status_at(self._clock())
        if status != "pending":
            raise ValueError(f"that device authorization is {status}, not pending")
        return device

    def _snapshot(self, device: _Device) -> DeviceAuthorization:
        return DeviceAuthorization(
            user_code=device.user_code,
            client_id=device.client_id,
            scope=device.scope,
            status=device.status_at(self._clock()),
            issued_at=device.issued_at,
            expires_at=device.expires_at,
            interval=device.interval,
            required_interval=device.required_interval,
            polls=tuple(device.polls),
        )


def _new_user_code(taken: Mapping[str, object]) -> str:
    while True:
        raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
        if raw not in taken:
            return f"{raw[:4]}-{raw[4:]}"


def _normal_user_code(user_code: str) -> str:
    return "".join(char for char in user_code.upper() if char.isalnum())
