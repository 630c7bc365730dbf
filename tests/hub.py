"""A small WebSub hub on 127.0.0.1, written from the W3C Recommendation (23 January 2018): it
takes subscription requests (§5.1) and answers 202, verifies intent with a GET and a challenge
(§5.3) or denies (§5.2), keeps each subscription for its lease, distributes signed content
(§7, §8), and records publish pings. Tests script it through its attributes."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from aggregator.websub import signature


@dataclass
class Subscribed:
    topic: str
    callback: str
    secret: str
    expires: float


@dataclass
class Verification:
    mode: str
    topic: str
    callback: str
    status: int
    confirmed: bool
    at: float
    lease: int = 0


@dataclass
class Hub:
    lease: int = 3600  # what the hub grants, whatever is asked (§5.3: the hub decides)
    status: int = 202  # the answer to a (un)subscription request
    deny: set[str] = field(default_factory=set)  # topics denied (§5.2)
    verify_renewals: bool = True  # False: a request for a callback it has is never verified
    failing_pings: int = 0  # publish pings answered 503 before the hub takes them again
    requests: list[dict[str, str]] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    pings: list[str] = field(default_factory=list)
    subscriptions: dict[tuple[str, str], Subscribed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hub = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status = hub.take(form)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the hub's side of the protocol ------------------------------------------------------

    def take(self, form: dict[str, str]) -> int:
        mode = form.get("hub.mode", "")
        with self._lock:
            self.requests.append(form)
        if mode == "publish":
            with self._lock:
                if self.failing_pings > 0:
                    self.failing_pings -= 1
                    return 503
                self.pings.append(form.get("hub.url", ""))
            return 204
        if mode not in ("subscribe", "unsubscribe") or self.status != 202:
            return self.status if self.status != 202 else 400
        topic, callback = form.get("hub.topic", ""), form.get("hub.callback", "")
        if not topic or not callback:
            return 400
        known = (topic, callback) in self.subscriptions
        if mode == "subscribe" and known and not self.verify_renewals:
            return 202
        # Verification is asynchronous (§5.1.2: 202 Accepted, then the GET).
        threading.Thread(target=self._verify, args=(form,), daemon=True).start()
        return 202

    def _verify(self, form: dict[str, str]) -> None:
        time.sleep(0.05)
        mode, topic, callback = form["hub.mode"], form["hub.topic"], form["hub.callback"]
        if mode == "subscribe" and topic in self.deny:
            params = {"hub.mode": "denied", "hub.topic": topic, "hub.reason": "not here"}
            status, _ = _get(callback, params)
            self._record(Verification("denied", topic, callback, status, False, time.time()))
            return
        challenge = secrets.token_hex(16)
        params = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
        if mode == "subscribe":
            params["hub.lease_seconds"] = str(self.lease)
        status, body = _get(callback, params)
        confirmed = 200 <= status < 300 and body == challenge
        now = time.time()
        with self._lock:
            if confirmed and mode == "subscribe":
                self.subscriptions[(topic, callback)] = Subscribed(
                    topic, callback, form.get("hub.secret", ""), now + self.lease
                )
            elif confirmed:
                self.subscriptions.pop((topic, callback), None)
        self._record(Verification(mode, topic, callback, status, confirmed, now, self.lease))

    def _record(self, verification: Verification) -> None:
        with self._lock:
            self.verifications.append(verification)

    def verify_now(self, mode: str, topic: str, callback: str) -> tuple[int, str]:
        """A verification of intent nobody asked for (as anyone could send)."""
        challenge = secrets.token_hex(8)
        return _get(
            callback,
            {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge},
        )

    def active(self, topic: str) -> list[Subscribed]:
        """The subscriptions to `topic` whose lease has not run out."""
        now = time.time()
        with self._lock:
            return [s for s in self.subscriptions.values() if s.topic == topic and s.expires > now]

    def distribute(
        self,
        topic: str,
        body: bytes,
        content_type: str = "application/atom+xml",
        *,
        method: str = "sha1",
        secret: str | None = None,
        signed: bool = True,
    ) -> list[int]:
        """POST `body` to every live subscriber of `topic` (§7), signed with its secret, or
        with `secret` instead; the callbacks' statuses."""
        statuses = []
        for sub in self.active(topic):
            statuses.append(
                post(
                    sub.callback,
                    body,
                    content_type,
                    signature(secret or sub.secret, body, method) if signed else None,
                    topic=topic,
                    hub=self.url,
                )
            )
        return statuses


def post(
    callback: str,
    body: bytes,
    content_type: str,
    signed: str | None,
    *,
    topic: str = "",
    hub: str = "",
) -> int:
    headers = {"Content-Type": content_type}
    if signed is not None:
        headers["X-Hub-Signature"] = signed
    if topic:
        headers["Link"] = f'<{hub}>; rel="hub", <{topic}>; rel="self"'
    request = urllib.request.Request(callback, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _get(url: str, params: dict[str, str]) -> tuple[int, str]:
    joined = url + ("&" if "?" in url else "?") + urlencode(params)
    try:
        with urllib.request.urlopen(joined, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError:
        return 0, ""
