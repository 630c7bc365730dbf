"""WebSub (W3C Recommendation, 23 January 2018): the protocol's decisions, on plain values.

As a subscriber: discovery of a source's hub and topic (§4), the subscription record and what to
do next with it (subscribe, renew at 80 % of the lease, fall back to polling on denial, expiry
or a poll that found entries push never brought), verification of intent (§5.3) and the
signature of a content distribution (§8). As a publisher: the feed URLs a change pings.

No I/O here: store.py keeps the records, push.py makes the requests, web.py answers the hub's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import urljoin

from aggregator import keys, urls

if TYPE_CHECKING:
    from aggregator.config import Config

LEASE_REQUESTED = 10 * 86400  # seconds asked for in hub.lease_seconds (§5.1); the hub decides
MAX_LEASE = 366 * 86400  # a longer grant is read as this: renewal is never put off for years
RENEW_AT = 0.8  # renew once this share of the granted lease has passed
VERIFY_WAIT = 300.0  # a request the hub has not verified by then is sent again
RETRY_FIRST = 60.0  # after a hub failed a request: 1 min, 2, 4 … up to RETRY_LAST
RETRY_LAST = 86400.0
RETRY_LATER = 86400.0  # after a denial, a broken subscription or a feed without a hub
SAFETY_NET = 86400.0  # the longest interval of a safety-net poll
SAFETY_FACTOR = 24  # … or the source's interval times this, whichever is shorter
# §8: the signature algorithms a hub may use (hubs commonly sign with sha1).
ALGORITHMS = frozenset(("sha1", "sha256", "sha384", "sha512"))
SECRET_BYTES = 32  # 43 characters once encoded: §5.1 wants under 200 bytes
TOKEN_BYTES = 24

State = Literal[
    "",
    "pending",  # asked for, verification of intent not come yet
    "live",  # verified: the hub distributes to us
    "denied",  # the hub said no (§5.2)
    "broken",  # a safety-net poll found entries push never delivered
    "expired",  # the lease ran out before a renewal was verified
    "failed",  # discovery or the hub's answer failed
    "nohub",  # the source advertises no hub
    "unsubscribing",  # unsubscription asked for
    "unsubscribed",
]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One source's subscription as kept in Redis (every field text there)."""

    state: State = ""
    hub: str = ""
    topic: str = ""
    token: str = ""  # the last segment of the callback URL: new for each subscription
    callback: str = ""  # the callback URL the hub was given (what an unsubscription names)
    secret: str = ""  # hub.secret: distributions are signed with it (§8)
    pending: str = ""  # "subscribe" or "unsubscribe": a request not verified yet
    requested_at: float = 0.0
    lease: float = 0.0  # granted, in seconds
    expires: float = 0.0
    renew_at: float = 0.0
    retry_at: float = 0.0
    failures: int = 0
    reason: str = ""
    since: float = 0.0  # when it became live
    catchup_at: float = 0.0  # when a poll was asked for, once it became live
    armed: bool = False  # a poll started since ran: from now on new entries mean push failed
    stretched: bool = False  # the source's next poll was put off to the safety net's interval
    delivered: float = 0.0  # the last distribution accepted

    def to_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_fields(cls, data: Mapping[str, str]) -> Subscription | None:
        """The record `to_fields` wrote, or None when there is none."""
        if not data:
            return None
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = data.get(f.name)
            if raw is None:
                continue
            if f.type == "bool":
                values[f.name] = raw == "1"
            elif f.type == "float":
                values[f.name] = _float(raw)
            elif f.type == "int":
                values[f.name] = int(_float(raw))
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]

    @property
    def verifying(self) -> bool:
        """A callback for this record's token is expected (§5.3): pending, live, leaving."""
        return bool(self.token) and self.state in ("pending", "live", "unsubscribing")


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


def new_token() -> str:
    """An unguessable callback path segment (URL-safe base64)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def callback_url(public_url: str, source: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/websub/{source}/{token}"


def safety_interval(interval: float) -> float:
    """How often a source is polled while push is live: daily, or its interval × 24 when
    that is shorter (never more often than it is polled anyway)."""
    return max(min(SAFETY_NET, interval * SAFETY_FACTOR), interval)


def retry_delay(failures: int) -> float:
    return min(RETRY_FIRST * 2.0 ** max(failures - 1, 0), RETRY_LAST)


# --- discovery (§4) ------------------------------------------------------------------------


def _split(value: str, separator: str) -> list[str]:
    """`value` split at `separator` outside <…> and quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = bracketed = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"' and not bracketed:
            quoted = not quoted
        elif char == "<" and not quoted:
            bracketed = True
        elif char == ">" and not quoted:
            bracketed = False
        elif char == separator and not quoted and not bracketed:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def link_header(value: str, base: str) -> list[tuple[str, frozenset[str]]]:
    """An HTTP Link header (RFC 8288 §3) as (absolute target, relation types) pairs, in
    order. Relation types are compared case-insensitively (§2.1.1); what does not parse is
    skipped."""
    out: list[tuple[str, frozenset[str]]] = []
    for link in _split(value, ","):
        target, *params = _split(link.strip(), ";")
        target = target.strip()
        if not (target.startswith("<") and target.endswith(">")):
            continue
        rels: set[str] = set()
        for param in params:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "rel":
                raw = raw.strip()
                if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
                    raw = raw[1:-1]
                rels.update(r.lower() for r in raw.split())
        out.append((urljoin(base, target[1:-1].strip()), frozenset(rels)))
    return out


@dataclass(frozen=True, slots=True)
class Discovery:
    hub: str
    topic: str


def discover(links: str, hubs: Sequence[str], self_url: str, fetched_url: str) -> Discovery | None:
    """The hub and topic to subscribe to: from the response's Link header first, then the
    document's own links (§4: "the subscriber MUST check the HTTP Link headers first"); the
    topic is the self URL (§4), the URL fetched when none is given. None: no hub."""
    parsed = link_header(links, fetched_url)
    header_hubs = [t for t, rels in parsed if "hub" in rels and _http(t)]
    header_self = next((t for t, rels in parsed if "self" in rels and _http(t)), "")
    if header_hubs:
        return Discovery(header_hubs[0], header_self or _resolved(self_url, fetched_url))
    body_hubs = [urljoin(fetched_url, h) for h in hubs if _http(urljoin(fetched_url, h))]
    if not body_hubs:
        return None
    return Discovery(body_hubs[0], _resolved(self_url, fetched_url))


def _http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _resolved(self_url: str, fetched_url: str) -> str:
    found = urljoin(fetched_url, self_url) if self_url else ""
    return found if _http(found) else fetched_url


# --- what to do next -------------------------------------------------------------------------

Action = Literal["none", "subscribe", "renew", "unsubscribe", "forget", "catch_up", "fall_back"]


def plan(sub: Subscription | None, wanted: bool, public_url: str | None, now: float) -> Action:
    """The next step for one source's subscription. `wanted`: the source is enabled with
    `websub: true`; `public_url`: where a hub calls us back (None: nowhere)."""
    reachable = public_url is not None
    if sub is not None and sub.stretched and not (sub.state == "live" and wanted):
        return "fall_back"  # no push any more: the source's normal interval again
    moved = (
        reachable
        and sub is not None
        and sub.state in ("pending", "live")
        and not sub.callback.startswith(f"{(public_url or '').rstrip('/')}/websub/")
    )
    if not wanted or not reachable or moved:
        if sub is None:
            return "none"
        if sub.state in ("pending", "live"):
            return "unsubscribe"
        if sub.state == "unsubscribing" and now - sub.requested_at >= VERIFY_WAIT:
            return "forget"  # the hub never verified; its lease runs out, we answer 410
        return "none"
    if sub is None or sub.state in ("", "unsubscribed", "unsubscribing"):
        return "subscribe"
    if sub.state == "live":
        if now >= sub.expires:
            return "subscribe"  # never renewed in time: a new subscription, a new token
        if not sub.catchup_at:
            return "catch_up"
        waiting = sub.pending and now - sub.requested_at < VERIFY_WAIT
        if now >= sub.renew_at and not waiting:
            return "renew"
        return "none"
    if sub.state == "pending":
        return "subscribe" if now - sub.requested_at >= VERIFY_WAIT else "none"
    return "subscribe" if now >= sub.retry_at else "none"


def requested(
    sub: Subscription | None, hub: str, topic: str, public_url: str, source: str, now: float
) -> Subscription:
    """A new subscription's record, saved before the request is sent: the hub may verify
    before it answers (§5.1.2)."""
    token = new_token()
    return Subscription(
        state="pending",
        hub=hub,
        topic=topic,
        token=token,
        callback=callback_url(public_url, source, token),
        secret=new_secret(),
        pending="subscribe",
        requested_at=now,
        failures=sub.failures if sub is not None and sub.state == "failed" else 0,
        stretched=sub.stretched if sub is not None else False,
    )


def renewing(sub: Subscription, now: float) -> Subscription:
    """A renewal is the same subscription asked for again (§5.1: same topic and callback)."""
    return replace(sub, pending="subscribe", requested_at=now)


def failed(sub: Subscription, reason: str, now: float) -> Subscription:
    """The hub refused or did not answer a request. A renewal keeps the live subscription
    and tries again (before the lease ends, or else it expires); a new one waits and retries."""
    failures = sub.failures + 1
    if sub.state == "live":
        return replace(
            sub, pending="", failures=failures, reason=reason, renew_at=now + retry_delay(failures)
        )
    return replace(
        sub,
        state="failed",
        pending="",
        token="",
        secret="",
        failures=failures,
        reason=reason,
        retry_at=now + retry_delay(failures),
    )


def without_hub(reason: str, now: float, stretched: bool = False) -> Subscription:
    return Subscription(
        state="nohub", reason=reason, retry_at=now + RETRY_LATER, stretched=stretched
    )


def leaving(sub: Subscription, now: float) -> Subscription:
    return replace(sub, state="unsubscribing", pending="unsubscribe", requested_at=now)


def broken(sub: Subscription, now: float) -> Subscription:
    return replace(
        sub,
        state="broken",
        pending="",
        reason=f"a safety-net poll found entries {sub.hub} never pushed",
        retry_at=now + RETRY_LATER,
    )


# --- verification of intent (§5.3) and denial (§5.2) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a hub's GET: `status`, `body` (the challenge when confirmed), and the
    record as it is to be saved (None: unchanged)."""

    status: int
    body: str = ""
    record: Subscription | None = None


NOT_OURS = Verdict(404, "no such subscription request\n")


def verify(sub: Subscription | None, token: str, params: Mapping[str, str], now: float) -> Verdict:
    """A verification of intent is confirmed (2xx with hub.challenge) only when its mode,
    topic and token match what we asked for, pending or live; anything else is 404
    (§5.3.1: "If the subscriber does not agree with the action, the subscriber MUST respond
    with a 404")."""
    mode = params.get("hub.mode", "")
    topic = params.get("hub.topic", "")
    if sub is None or not sub.verifying or not hmac.compare_digest(sub.token, token):
        return NOT_OURS
    if topic != sub.topic:
        return NOT_OURS
    if mode == "denied":
        if sub.state not in ("pending", "live"):
            return NOT_OURS
        reason = " ".join(params.get("hub.reason", "").split())[:300] or "no reason given"
        record = replace(
            sub,
            state="denied",
            pending="",
            token="",
            secret="",
            reason=f"denied by {sub.hub}: {reason}",
            retry_at=now + RETRY_LATER,
        )
        return Verdict(200, "", record)
    challenge = params.get("hub.challenge", "")
    if not challenge:
        return NOT_OURS
    if mode == "subscribe" and sub.state in ("pending", "live"):
        lease = _lease(params.get("hub.lease_seconds", ""))
        record = replace(
            sub,
            state="live",
            pending="",
            lease=lease,
            expires=now + lease,
            renew_at=now + lease * RENEW_AT,
            failures=0,
            reason="",
            since=sub.since if sub.state == "live" else now,
            catchup_at=sub.catchup_at if sub.state == "live" else 0.0,
            armed=sub.armed if sub.state == "live" else False,
        )
        return Verdict(200, challenge, record)
    if mode == "unsubscribe" and sub.pending == "unsubscribe":
        record = replace(sub, state="unsubscribed", pending="", token="", secret="", callback="")
        return Verdict(200, challenge, record)
    return NOT_OURS


def _lease(raw: str) -> float:
    """hub.lease_seconds is required on a subscribe verification (§5.3); without a usable
    one, the lease asked for is assumed."""
    try:
        lease = float(int(raw))
    except ValueError:
        return float(LEASE_REQUESTED)
    return float(min(lease, MAX_LEASE)) if lease > 0 else float(LEASE_REQUESTED)


# --- content distribution (§7, §8) ---------------------------------------------------------


def refusal(sub: Subscription | None, token: str, signature: str, body: bytes) -> str | None:
    """Why a distribution is not taken (None: it is): an unknown or old token, a missing,
    unknown or wrong X-Hub-Signature (§8: "sha1=…", HMAC over the raw body, the secret as
    key, compared in constant time)."""
    if sub is None or sub.state != "live" or not hmac.compare_digest(sub.token, token):
        return "unknown subscription"
    method, sep, given = signature.strip().partition("=")
    method = method.strip().lower()
    if not sep:
        return "no X-Hub-Signature"
    if method not in ALGORITHMS:
        return f"signature method {method!r} is not one WebSub lists"
    expected = hmac.new(sub.secret.encode("utf-8"), body, getattr(hashlib, method)).hexdigest()
    if not hmac.compare_digest(expected, given.strip().lower()):
        return "signature does not match"
    return None


def signature(secret: str, body: bytes, method: str = "sha256") -> str:
    """An X-Hub-Signature value (for hubs, and for tests that play one)."""
    return f"{method}={hmac.new(secret.encode('utf-8'), body, method).hexdigest()}"


# --- status ----------------------------------------------------------------------------------


def status_notes(config: Config, records: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """What `aggregator status` says of each source's push (source name → note), from the
    subscription records as the store keeps them (source name → record; none for a source
    without one)."""
    reachable = config.settings.public_url is not None
    notes = {}
    for source in config.sources:
        wanted = source.enabled and source.websub
        sub = Subscription.from_fields(records.get(source.name, {}))
        text = note(sub, wanted, reachable, config.interval(source))
        if text:
            notes[source.name] = text
    return notes


def note(sub: Subscription | None, wanted: bool, reachable: bool, interval: float) -> str:
    """What `aggregator status` says of a source's push."""
    if not wanted:
        if sub is not None and sub.state in ("pending", "live", "unsubscribing"):
            return f"WebSub: unsubscribing from {sub.hub}"
        return ""
    if not reachable:
        return (
            "WebSub: not subscribed: settings.public_url is unset, so no hub can reach our "
            "callback; polled at its interval"
        )
    normal = "polled at its interval"
    if sub is None or sub.state in ("", "unsubscribed", "unsubscribing"):
        return f"WebSub: subscribing; {normal}"
    if sub.state == "live":
        net = _duration(safety_interval(interval))
        renewal = " (renewal asked)" if sub.pending else ""
        return (
            f"WebSub: live at {sub.hub} until {_when(sub.expires)}, renewed from "
            f"{_when(sub.renew_at)}{renewal}; polled every {net} as a safety net"
        )
    if sub.state == "pending":
        return f"WebSub: asked {sub.hub}, awaiting verification; {normal}"
    retry = f"; tried again from {_when(sub.retry_at)}" if sub.retry_at else ""
    words = {
        "denied": sub.reason,
        "broken": f"broken: {sub.reason}",
        "expired": f"lease expired at {sub.hub}",
        "failed": f"subscribing failed: {sub.reason}",
        "nohub": sub.reason,
    }
    return f"WebSub: {words.get(sub.state, sub.state)}; {normal}{retry}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- publisher -------------------------------------------------------------------------------

FORMATS = ("atom", "rss", "json")


def feed_urls(public_url: str, kind: keys.Kind, name: str) -> list[str]:
    """The URLs a change of one index pings the hub with (hub.url), one per format: the self
    URLs our feeds advertise (web.py, render.py)."""
    base = public_url.rstrip("/")
    if kind == "all":
        path = "/all"
    else:
        path = urls.name_path("tags" if kind == "tag" else "categories", name)
    return [f"{base}{path}.{fmt}" for fmt in FORMATS]
