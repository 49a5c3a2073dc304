"""Push webhooks (GitHub, GitLab, Gitea) at `/hooks/git`, and `/hooks/wake` for the post-receive
hook, as endpoints of the HTTP listener (`gitorch.server.http`). The path, the method and the
headers (size, provider, signature header, wake token) are checked before any body is read."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gitorch.server.http import MAX_BODY, Endpoint, Incoming, Reply


@dataclass(frozen=True)
class Verdict:
    """What a webhook request is: `status` is the HTTP answer, `wake` whether to run a pass."""

    status: int
    result: str  # accepted | ignored | unauthorized | bad_request
    provider: str
    message: str

    @property
    def wake(self) -> bool:
        return self.result == "accepted"


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _provider(h: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(provider, event, signature or token) from lower-cased headers; None for none of the three."""
    if "x-gitlab-token" in h or "x-gitlab-event" in h:
        return "gitlab", h.get("x-gitlab-event", ""), h.get("x-gitlab-token", "")
    if "x-gitea-signature" in h or "x-gitea-event" in h:
        return "gitea", h.get("x-gitea-event", ""), h.get("x-gitea-signature", "")
    if "x-hub-signature-256" in h or "x-github-event" in h:
        return "github", h.get("x-github-event", ""), h.get("x-hub-signature-256", "")
    return None


def precheck(headers: Mapping[str, str], secret: str | None) -> Verdict | None:
    """Refuse, from the headers alone, a request `verify` would refuse whatever its body: no
    provider, no secret configured, no signature, a wrong GitLab token (pure). None: read the body."""
    h = _headers(headers)
    found = _provider(h)
    if found is None:
        return Verdict(401, "unauthorized", "unknown", "no GitHub, GitLab or Gitea signature header")
    provider, _, given = found
    if not secret:
        return Verdict(401, "unauthorized", provider, "no webhook secret is configured on this controller")
    if not given or (provider == "gitlab" and not hmac.compare_digest(given.encode(), secret.encode())):
        return Verdict(401, "unauthorized", provider, "bad or missing signature")
    return None


def verify(headers: Mapping[str, str], body: bytes, secret: str | None, branch: str | None) -> Verdict:
    """Check a push webhook's signature and say what to do with it (pure)."""
    h = _headers(headers)
    found = _provider(h)
    if found is None:
        return Verdict(401, "unauthorized", "unknown", "no GitHub, GitLab or Gitea signature header")
    provider, event, given = found
    if provider == "gitlab":
        ok = bool(secret) and hmac.compare_digest(given.encode(), (secret or "").encode())
        is_push = event in ("Push Hook", "System Hook")
    elif provider == "gitea":
        ok = bool(secret) and hmac.compare_digest(given.lower().encode(), _hmac_hex(secret or "", body).encode())
        is_push = event == "push"
    else:
        expected = "sha256=" + _hmac_hex(secret or "", body)
        ok = bool(secret) and hmac.compare_digest(given.lower().encode(), expected.encode())
        is_push = event == "push"
    if not secret:
        return Verdict(401, "unauthorized", provider, "no webhook secret is configured on this controller")
    if not ok:
        return Verdict(401, "unauthorized", provider, "bad or missing signature")
    if not is_push:
        return Verdict(200, "ignored", provider, f"event {event!r} ignored (only push events deploy)")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return Verdict(400, "bad_request", provider, "the body is not JSON")
    ref = payload.get("ref") if isinstance(payload, dict) else None
    if branch and isinstance(ref, str) and ref != f"refs/heads/{branch}":
        return Verdict(202, "ignored", provider, f"push to {ref} ignored (watching {branch})")
    return Verdict(202, "accepted", provider, "reconciling")


def token_ok(headers: Mapping[str, str], token: str | None) -> bool:
    """Whether a request carries `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = _headers(headers).get("authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass
class Handlers:
    """What the endpoints call, on the listener's event loop: each must be quick."""

    wake: Callable[[str], None]
    """Run a reconcile pass now; the argument says why (for the log)."""
    webhook_result: Callable[[str, str], None] | None = None
    """Called with (provider, result) for every /hooks/git request."""


def endpoints(
    handlers: Handlers, *, secret: str | None, branch: str | None, wake_token: str | None
) -> list[Endpoint]:
    """`/hooks/git` (signed push webhooks) and `/hooks/wake` (the post-receive hook, with the wake token)."""

    async def git(request: Incoming) -> Reply:
        verdict = precheck(request.headers, secret)
        if verdict is None:
            verdict = verify(request.headers, await request.body(), secret, branch)
        if handlers.webhook_result is not None:
            handlers.webhook_result(verdict.provider, verdict.result)
        if verdict.wake:
            handlers.wake(f"{verdict.provider} webhook")
        return Reply(verdict.status, verdict.message + "\n")

    async def wake(request: Incoming) -> Reply:
        if not token_ok(request.headers, wake_token):
            return Reply(401, "/hooks/wake needs the controller's wake token (`gitorch hook install` writes it)\n",
                         headers=(("WWW-Authenticate", "Bearer"),))
        handlers.wake("post-receive hook")
        return Reply(202, "reconciling\n")

    return [
        Endpoint("/hooks/git", git, methods=("POST",), max_body=MAX_BODY),
        Endpoint("/hooks/wake", wake, methods=("POST",)),
    ]
