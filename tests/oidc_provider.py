"""
A real, certified OpenID provider for tests: panva's ``oidc-provider`` (the exact version pinned in
``tests/oidc/package.json``, installed by ``.ci/oidc-deps`` from the committed lock file), run by
``node tests/oidc/provider.mjs`` on 127.0.0.1 at an OS-chosen port; ready once it prints
``ready <port>``; stopped by its PID (SIGTERM, then SIGKILL) and reaped, even when a test fails.

Its configuration (see provider.mjs): a public native client ``cli-public`` (PKCE, any loopback
port for ``http://127.0.0.1/callback``, authorization code, refresh token, device code), a
confidential client ``svc``, rotation of every refresh token (a consumed one presented again is
``invalid_grant`` and revokes the whole grant), refresh tokens only with ``offline_access``, the
device flow, revocation, introspection and the development login/consent pages.

The helpers drive those pages with httpx like a browser that has no JavaScript: follow redirects,
fill the login form (any password), press Continue or Cancel, until the browser leaves the provider
for the client's redirect_uri (authorization code) or lands on the success page (device flow).
Every loop is bounded in steps and time. A missing or stale install fails the test with a message
that says to run ``.ci/oidc-deps``; it never skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Literal
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest

OIDC_FOLDER = Path(__file__).resolve().parent / "oidc"
SCRIPT = OIDC_FOLDER / "provider.mjs"
DEPS_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "oidc-deps"

PUBLIC_CLIENT_ID = "cli-public"
LOOPBACK_REDIRECT_URI = "http://127.0.0.1/callback"  # registered without a port: any port works
CONFIDENTIAL_CLIENT_ID = "svc"
CONFIDENTIAL_CLIENT_SECRET = "svc-secret"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

START_TIMEOUT = 20.0  # seconds until "ready"; it takes about 0.3 s on a 2-core machine
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0
INTERACTION_TIMEOUT = 30.0  # one whole authorize/approve walk
INTERACTION_STEPS = 20  # pages and redirects in one walk; a real one takes fewer than 10

_READY = re.compile(r"ready (\d+)")
_REVOKED = re.compile(r"revoked (\S+)")
_GRANT = re.compile(r"grant (ok|error) (\S+)")


def pinned_version() -> str:
    """The exact oidc-provider version tests/oidc/package.json pins."""
    package = json.loads((OIDC_FOLDER / "package.json").read_text())
    return str(package["dependencies"]["oidc-provider"])


def install_folder() -> Path:
    """Where .ci/oidc-deps installs the pinned version (the same expression as the script)."""
    cache = os.environ.get("AUTHFSM_CI_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "authfsm-ci"
    )
    return Path(cache) / f"oidc-provider-{pinned_version()}"


def installed_modules() -> Path:
    """
    The node_modules folder holding the pinned oidc-provider, installed from the current lock file.

    Fails the test (never skips it) when it is missing or was installed from another lock file.
    """
    folder = install_folder()
    lock_sha = hashlib.sha256((OIDC_FOLDER / "package-lock.json").read_bytes()).hexdigest()
    stamp = folder / ".authfsm-lock-sha256"
    if not stamp.is_file() or stamp.read_text().strip() != lock_sha:
        pytest.fail(
            f"oidc-provider@{pinned_version()} is not installed in {folder} (or was installed from "
            f"another tests/oidc/package-lock.json). The OpenID provider tests need the real "
            f"provider: run {DEPS_SCRIPT} (it installs Node.js if missing, then `npm ci`).",
            pytrace=False,
        )
    return folder / "node_modules"


def find_node() -> str:
    """The node binary ($AUTHFSM_NODE or PATH); fails the test when there is none."""
    binary = os.environ.get("AUTHFSM_NODE") or shutil.which("node")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(
            f"node was not found on PATH (or in $AUTHFSM_NODE): run {DEPS_SCRIPT}.", pytrace=False
        )
    return binary


class InteractionError(AssertionError):
    """A provider page the helpers did not expect: an error page, a re-rendered form, a timeout."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        if response is not None:
            text = re.sub(r"<(style|script).*?</\1>|<[^>]+>", " ", response.text, flags=re.S)
            text = re.sub(r"\s+", " ", text)
            message = f"{message} ({response.status_code} at {response.url}: {text.strip()[:300]})"
        super().__init__(message)
        self.response = response


@dataclass(frozen=True)
class AuthorizationRedirect:
    """Where the provider sent the browser back to the client, and (when followed) the answer."""

    url: str
    response: httpx.Response | None = None

    @property
    def params(self) -> dict[str, str]:
        """The redirect's query parameters (code, state, iss; or error, error_description)."""
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))


class OidcProvider:
    """
    One ``node provider.mjs`` process.

    Args:
        access_token_ttl: seconds an access token lives (short, to exercise proactive refresh).
    """

    def __init__(self, *, access_token_ttl: int = 60) -> None:
        self.access_token_ttl = access_token_ttl
        self.port = 0
        self.startup_seconds = 0.0  # from spawning node to "ready"
        self.metadata: dict[str, object] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stderr_tail = ""
        self._reader: threading.Thread | None = None
        self._ready: queue.Queue[int | None] = queue.Queue()
        self._events = threading.Condition()
        self._revoked: list[str] = []
        self._grants: list[tuple[str, str]] = []

    # --- the process -----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL (the issuer: every endpoint is below it)."""
        return self.issuer

    def endpoint(self, name: str) -> str:
        """An endpoint from the discovery document, e.g. ``endpoint("token")``."""
        return str(self.metadata[f"{name}_endpoint"])

    @property
    def token_url(self) -> str:
        return self.endpoint("token")

    @property
    def authorization_url(self) -> str:
        return self.endpoint("authorization")

    @property
    def device_authorization_url(self) -> str:
        return self.endpoint("device_authorization")

    @property
    def revocation_url(self) -> str:
        return self.endpoint("revocation")

    @property
    def introspection_url(self) -> str:
        return self.endpoint("introspection")

    def start(self) -> OidcProvider:
        """Start node and wait (bounded) until it prints ``ready <port>``; read discovery."""
        if self.process is not None:
            raise RuntimeError("the provider is already running")
        args = [
            find_node(), str(SCRIPT),
            "--modules", str(installed_modules()),
            "--port", "0",
            "--access-token-ttl", str(self.access_token_ttl),
            "--watch-stdin",  # exits when this process dies without stopping it
        ]  # fmt: skip
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open until stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        try:
            self._reader = threading.Thread(
                target=self._read_stdout, args=(self.process.stdout,), daemon=True
            )
            self._reader.start()
            try:
                port = self._ready.get(timeout=START_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"oidc-provider did not print 'ready' within {START_TIMEOUT:g} s")
            if port is None:
                self.process.wait(timeout=STOP_TIMEOUT)
                pytest.fail(
                    f"oidc-provider exited with {self.process.returncode}: {self.stderr_text()}"
                )
            self.port = port
            self.startup_seconds = time.monotonic() - started
            discovery = httpx.get(
                f"{self.issuer}/.well-known/openid-configuration", timeout=REQUEST_TIMEOUT
            )
            discovery.raise_for_status()
            self.metadata = discovery.json()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process this object started, SIGKILL it if it lingers; reap. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if process.stdin is not None:
            process.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        self._stderr_tail = self.stderr_text()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr_text(self, limit: int = 4000) -> str:
        """The tail of what the provider wrote to stderr (warnings, server errors)."""
        if self._stderr is None:
            return self._stderr_tail[-limit:]
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def _read_stdout(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            line = raw.decode(errors="replace").strip()
            if ready := _READY.fullmatch(line):
                self._ready.put(int(ready.group(1)))
            elif revoked := _REVOKED.fullmatch(line):
                with self._events:
                    self._revoked.append(revoked.group(1))
                    self._events.notify_all()
            elif grant := _GRANT.fullmatch(line):
                with self._events:
                    self._grants.append((grant.group(2), grant.group(1)))
                    self._events.notify_all()
        self._ready.put(None)  # EOF: if nobody waits for "ready" any more, nobody reads this

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- what the provider did -------------------------------------------------------------------

    @property
    def revoked_grants(self) -> list[str]:
        """Grant ids the provider revoked so far (its ``grant.revoked`` events), in order."""
        with self._events:
            return list(self._revoked)

    def token_requests(self, grant_type: str | None = None) -> list[tuple[str, str]]:
        """Token requests answered so far as (grant_type, "ok"|"error"), in order."""
        with self._events:
            return [g for g in self._grants if grant_type is None or g[0] == grant_type]

    def wait_for_token_requests(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` token requests were answered (their lines arrive late)."""
        with self._events:
            if not self._events.wait_for(lambda: len(self._grants) >= count, timeout=timeout):
                pytest.fail(f"{len(self._grants)} token requests after {timeout:g} s, not {count}")

    def wait_for_revocations(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until at least ``count`` grants were revoked in all; fails the test on timeout."""
        with self._events:
            if not self._events.wait_for(lambda: len(self._revoked) >= count, timeout=timeout):
                pytest.fail(
                    f"{len(self._revoked)} grant revocations after {timeout:g} s, not {count}"
                )
            return list(self._revoked)

    def introspect(self, token: str, *, token_type_hint: str | None = None) -> dict[str, object]:
        """RFC 7662 introspection by the confidential client (it may introspect any token)."""
        data = {"token": token}
        if token_type_hint:
            data["token_type_hint"] = token_type_hint
        response = httpx.post(
            self.introspection_url,
            data=data,
            auth=(CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET),
            timeout=REQUEST_TIMEOUT,
        )
        response.raise_for_status()
        return dict(response.json())

    def is_active(self, token: str) -> bool:
        """Whether an access or refresh token (so its grant) is still alive."""
        return self.introspect(token).get("active") is True

    # --- the browser ------------------------------------------------------------------------------

    def authorize(
        self,
        authorization_url: str,
        *,
        login: str = "alice",
        consent: bool = True,
        follow_final_redirect: bool = True,
    ) -> AuthorizationRedirect:
        """
        Walk an authorization request to its redirect back to the client.

        GET the URL, sign in as ``login`` on the login page, press Continue on the consent page
        (Cancel when ``consent`` is false: ``error=access_denied``), follow redirects until the
        browser leaves the provider. With ``follow_final_redirect``, GET that redirect_uri too,
        with the same cookie jar, as a browser would, and keep the answer.
        """
        cancel_at: Literal["consent"] | None = None if consent else "consent"
        return self._authorize(authorization_url, login, cancel_at, follow_final_redirect)

    def deny(
        self,
        authorization_url: str,
        *,
        login: str = "alice",
        at: Literal["login", "consent"] = "consent",
        follow_final_redirect: bool = True,
    ) -> AuthorizationRedirect:
        """Like :meth:`authorize`, but press Cancel on the ``at`` page: ``error=access_denied``."""
        return self._authorize(authorization_url, login, at, follow_final_redirect)

    def _authorize(
        self,
        authorization_url: str,
        login: str,
        cancel_at: Literal["login", "consent"] | None,
        follow_final_redirect: bool,
    ) -> AuthorizationRedirect:
        with self._browser() as browser:
            response = browser.get(self._own(authorization_url))
            left = self._walk(browser, response, login=login, cancel_at=cancel_at)
            if not isinstance(left, str):
                raise InteractionError("the provider did not redirect back to the client", left)
            answer = browser.get(left, follow_redirects=True) if follow_final_redirect else None
            return AuthorizationRedirect(left, answer)

    def approve_device(self, user_code: str, *, login: str = "alice") -> httpx.Response:
        """
        Approve a device authorization as ``login``: the user code (or verification_uri_complete)
        on the /device page, Continue on the confirmation page, then sign in and consent. Returns
        the success page; raises :class:`InteractionError` for an unknown, expired or used code.
        """
        return self._device(user_code, login=login, cancel_at=None)

    def deny_device(
        self,
        user_code: str,
        *,
        login: str = "alice",
        at: Literal["confirm", "login", "consent"] = "confirm",
    ) -> httpx.Response:
        """
        Refuse a device authorization: Abort on the confirmation page, or Cancel on the login or
        consent page. The device's next poll is ``access_denied``. Returns the last page.
        """
        return self._device(user_code, login=login, cancel_at=at)

    def _device(
        self,
        user_code: str,
        *,
        login: str,
        cancel_at: Literal["confirm", "login", "consent"] | None,
    ) -> httpx.Response:
        with self._browser() as browser:
            if user_code.startswith(("http://", "https://")):  # verification_uri_complete
                response = browser.get(self._own(user_code))
            else:
                response = browser.get(f"{self.issuer}/device")
            left = self._walk(
                browser, response, login=login, cancel_at=cancel_at, user_code=user_code
            )
            if isinstance(left, str):
                raise InteractionError(f"the device flow left the provider for {left}")
            return left

    @contextlib.contextmanager
    def _browser(self) -> Iterator[httpx.Client]:
        with httpx.Client(
            follow_redirects=False,
            timeout=REQUEST_TIMEOUT,
            max_redirects=5,
            headers={"accept": "text/html"},
        ) as client:
            yield client

    def _own(self, url: str) -> str:
        if not self._is_mine(url):
            raise ValueError(f"{url} is not on this provider ({self.issuer})")
        return url

    def _is_mine(self, url: str) -> bool:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" == self.issuer

    def _walk(
        self,
        browser: httpx.Client,
        response: httpx.Response,
        *,
        login: str,
        cancel_at: str | None,
        user_code: str | None = None,
    ) -> str | httpx.Response:
        """
        Act on each page as a person would, until the browser leaves the provider (the URL it was
        sent to) or reaches the device flow's last page (that page).
        """
        deadline = time.monotonic() + INTERACTION_TIMEOUT
        cancelled = False
        for _ in range(INTERACTION_STEPS):
            if time.monotonic() > deadline:
                raise InteractionError(f"no end after {INTERACTION_TIMEOUT:g} s", response)
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if not self._is_mine(target):
                    return target
                response = browser.get(target)
                continue
            page = _Page.parse(response.text)
            form = page.forms[0] if page.forms else None
            prompt = form.fields.get("prompt") if form else None
            if prompt in ("login", "consent") and form is not None:
                if cancel_at == prompt:
                    abort = page.link_ending("/abort")
                    if abort is None:
                        raise InteractionError("no Cancel link on the page", response)
                    response = browser.get(urljoin(str(response.url), abort))
                    cancelled = True
                    continue
                fields = dict(form.fields)
                if prompt == "login":
                    fields |= {"login": login, "password": "any-password"}
                response = browser.post(urljoin(str(response.url), form.action), data=fields)
            elif form is not None and form.id == "op.deviceInputForm":
                if cancelled:  # a device flow cancelled at login or consent ends on this form
                    return _expect_device_end(response, denied=True)
                if page.has_error:  # the provider re-renders this form when something is wrong
                    raise InteractionError("the provider refused the user code", response)
                if user_code is None or user_code.startswith(("http://", "https://")):
                    raise InteractionError("the provider asks for a user code", response)
                fields = dict(form.fields) | {"user_code": user_code}
                response = browser.post(urljoin(str(response.url), form.action), data=fields)
                user_code = None  # entered once; asked again means it was refused
            elif form is not None and form.id == "op.deviceConfirmForm":
                fields = dict(form.fields)
                if cancel_at == "confirm":
                    fields.pop("confirm", None)
                    fields |= form.buttons  # the [ Abort ] button: abort=yes
                    response = browser.post(urljoin(str(response.url), form.action), data=fields)
                    return _expect_device_end(response, denied=True)
                response = browser.post(urljoin(str(response.url), form.action), data=fields)
            elif form is not None and page.title == "Submitting Callback":  # form_post page
                response = browser.post(urljoin(str(response.url), form.action), data=form.fields)
            else:
                return _expect_device_end(response, denied=cancel_at is not None)
        raise InteractionError(f"no end after {INTERACTION_STEPS} pages", response)


def _expect_device_end(response: httpx.Response, *, denied: bool) -> httpx.Response:
    page = _Page.parse(response.text)
    if not denied and page.title == "Sign-in Success":
        return response
    if denied and page.has_error:
        return response
    raise InteractionError("the device flow did not end as expected", response)


@dataclass
class _Form:
    id: str | None
    action: str
    fields: dict[str, str] = field(default_factory=dict)  # hidden and text inputs
    buttons: dict[str, str] = field(default_factory=dict)  # named submit buttons (name=abort)


class _Page(HTMLParser):
    """The forms, links and title of a provider page; the stdlib parser, no browser."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.links: list[str] = []
        self.title = ""
        self.has_error = False  # a <p class="red"> message (the device pages)
        self._in_title = False
        self._current: _Form | None = None

    @classmethod
    def parse(cls, html: str) -> _Page:
        page = cls()
        page.feed(html)
        page.close()
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = _Form(values.get("id"), values.get("action", ""))
            self.forms.append(self._current)
        elif tag == "input" and "name" in values:
            form = self._form_for(values)
            if form is not None and values.get("type", "text") != "submit":
                form.fields[values["name"]] = values.get("value", "")
        elif tag == "button" and "name" in values:
            form = self._form_for(values)
            if form is not None:
                form.buttons[values["name"]] = values.get("value", "")
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])
        elif tag == "title":
            self._in_title = True
        elif tag == "p" and "red" in values.get("class", "").split():
            self.has_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()

    def _form_for(self, values: dict[str, str]) -> _Form | None:
        if "form" in values:  # <button form="op.deviceConfirmForm"> outside its form
            return next((form for form in self.forms if form.id == values["form"]), None)
        return self._current

    def link_ending(self, suffix: str) -> str | None:
        return next((link for link in self.links if link.endswith(suffix)), None)


@contextlib.contextmanager
def running_oidc_provider(*, access_token_ttl: int = 60) -> Iterator[OidcProvider]:
    """A started provider of its own (fresh grants, its own TTL); stopped afterwards."""
    with OidcProvider(access_token_ttl=access_token_ttl) as provider:
        yield provider


@pytest.fixture(name="oidc_provider", scope="session")
def _oidc_provider() -> Iterator[OidcProvider]:
    """One provider for the session; tests isolate themselves by login name or their own grants."""
    with running_oidc_provider() as provider:
        yield provider
