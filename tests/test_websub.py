"""WebSub as a subscriber: discovery, subscription with a secret, verification of intent,
signed distribution, renewal before the lease ends, denial, expiry, the safety-net poll, and
what `aggregator status` says. The hub is tests/hub.py, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import feedparser
import pytest
from waitress.server import create_server

from aggregator import config as config_module
from aggregator import keys, websub
from aggregator import store as store_module
from aggregator.addresses import AddressPolicy
from aggregator.config import Settings
from aggregator.errors import FetchError
from aggregator.fetch import Fetcher
from aggregator.parse import parse
from aggregator.scheduler import Worker
from aggregator.store import Store
from aggregator.web import create_app
from aggregator.websub import Subscription
from tests.conftest import ConfigWriter, FeedServer, Route, free_port
from tests.hub import Hub, post
from tests.weblinks import eventually, http_get, wait_for

TAG = "推送"


def atom(*entries: str, hub: str = "", self_url: str = "") -> bytes:
    links = ""
    if hub:
        links += f'<link rel="hub" href="{hub}"/>'
    if self_url:
        links += f'<link rel="self" href="{self_url}"/>'
    items = "".join(
        f"<entry><id>urn:push:{e}</id><title>{e}</title><link href='http://push.test/{e}'/>"
        f"<updated>2024-05-0{i + 1}T08:00:00+08:00</updated><content>{e} text</content></entry>"
        for i, e in enumerate(entries)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<title>Push</title><id>urn:push</id><updated>2024-05-01T00:00:00Z</updated>{links}"
        f"{items}</feed>"
    ).encode()


# --- the pure parts ------------------------------------------------------------------------


def test_discovery_reads_link_headers_first_then_the_document() -> None:
    header = '<https://hub.example/a>; rel="hub", </feed.xml>; rel="self"'
    found = websub.discover(header, ("https://other.example/",), "", "http://s.test/x.xml")
    assert found == websub.Discovery("https://hub.example/a", "http://s.test/feed.xml")
    # no Link header: the document's hub, and its self URL as the topic
    found = websub.discover("", ("https://hub.example/",), "http://s.test/self", "http://s/x")
    assert found == websub.Discovery("https://hub.example/", "http://s.test/self")
    assert websub.discover('<http://x/>; rel="alternate"', (), "", "http://s/x") is None
    # relation types are case-insensitive and may be a list (RFC 8288 §3.3)
    links = websub.link_header('<h>; rel="HUB self", <a>;type="x,y";rel=alternate', "http://b/")
    assert links == [("http://b/h", frozenset({"hub", "self"})), ("http://b/a", {"alternate"})]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (atom("a", hub="https://hub.example/", self_url="http://s.test/atom"), ""),
        (
            b'<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel><title>t'
            b'</title><link>http://s.test/</link><atom:link rel="hub" href="https://hub.example/"'
            b'/><atom:link rel="self" href="http://s.test/atom"/><item><guid>1</guid></item>'
            b"</channel></rss>",
            "",
        ),
        (
            b'{"version":"https://jsonfeed.org/version/1.1","title":"t","feed_url":'
            b'"http://s.test/atom","hubs":[{"type":"WebSub","url":"https://hub.example/"},'
            b'{"type":"rssCloud","url":"https://cloud.example/"}],"items":[]}',
            "application/feed+json",
        ),
    ],
    ids=["atom", "rss", "json"],
)
def test_every_format_names_its_hub_and_self(body: bytes, content_type: str) -> None:
    feed = parse(body, "http://s.test/feed", content_type)
    assert feed.hubs == ("https://hub.example/",)
    assert feed.self_url == "http://s.test/atom"


@pytest.mark.parametrize("method", ["sha1", "sha256", "sha384", "sha512"])
def test_a_signature_in_any_listed_algorithm_is_checked(method: str) -> None:
    sub = Subscription(state="live", token="t", secret="s3cret", topic="http://x/")
    body = b"<feed/>"
    assert websub.refusal(sub, "t", websub.signature("s3cret", body, method), body) is None
    assert websub.refusal(sub, "t", websub.signature("other", body, method), body)
    assert websub.refusal(sub, "t", websub.signature("s3cret", body + b" ", method), body)
    assert websub.refusal(sub, "t", "", body) == "no X-Hub-Signature"
    assert websub.refusal(sub, "t", "md5=00", body)
    assert websub.refusal(sub, "old", websub.signature("s3cret", body), body) == (
        "unknown subscription"
    )


def test_verification_matches_mode_topic_and_token() -> None:
    pending = websub.requested(None, "http://hub/", "http://topic/", "http://a/", "s", 1000.0)
    assert pending.callback == f"http://a/websub/s/{pending.token}"
    assert len(pending.secret.encode()) < 200 and pending.secret != pending.token
    ask = {"hub.mode": "subscribe", "hub.topic": "http://topic/", "hub.challenge": "c"}
    assert websub.verify(pending, "wrong", ask, 1001).status == 404
    assert websub.verify(pending, pending.token, {**ask, "hub.topic": "x"}, 1001).status == 404
    unsub = {**ask, "hub.mode": "unsubscribe"}
    assert websub.verify(pending, pending.token, unsub, 1001).status == 404
    verdict = websub.verify(pending, pending.token, {**ask, "hub.lease_seconds": "1000"}, 1001)
    assert (verdict.status, verdict.body) == (200, "c")
    live = verdict.record
    assert live is not None and live.state == "live"
    assert (live.expires, live.renew_at) == (2001, 1801)  # renewed at 80 %
    assert websub.plan(live, True, "http://a", 1500) == "catch_up"


def test_renewal_is_planned_at_80_percent_and_never_after_expiry() -> None:
    live = Subscription(
        state="live",
        token="t",
        topic="x",
        hub="h",
        callback="http://a/websub/s/t",
        catchup_at=1,
        expires=2000,
        renew_at=1800,
    )
    public = "http://a/"
    assert websub.plan(live, True, public, 1799) == "none"
    assert websub.plan(live, True, public, 1800) == "renew"
    asked = websub.renewing(live, 1800)
    assert websub.plan(asked, True, public, 1900) == "none"  # waiting for the verification
    assert websub.plan(asked, True, public, 2000) == "subscribe"  # expired: a new one
    assert websub.plan(live, False, public, 1000) == "unsubscribe"
    assert websub.plan(live, True, None, 1000) == "unsubscribe"  # public_url removed
    assert websub.plan(live, True, "http://b/", 1000) == "unsubscribe"  # … or changed
    assert websub.plan(None, True, None, 1000) == "none"


# --- a hub, a web process and a worker ----------------------------------------------------


@dataclass
class PushSite:
    hub: Hub
    feed_server: FeedServer
    write_config: ConfigWriter
    store: Store
    base: str
    topic: str
    document: list[bytes]

    def source(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "push",
            "url": self.feed_server.url("push.xml"),
            "tags": [TAG],
            "interval": "1h",
            "websub": True,
            **extra,
        }

    def configure(self, **extra: Any) -> None:
        settings = {"public_url": self.base, "max_bytes": "1MB", **extra.pop("settings", {})}
        self.write_config.write([self.source(**extra)], settings=settings)

    def record(self) -> Subscription | None:
        (raw,) = store_module.subscriptions(self.store, ["push"])
        return Subscription.from_fields(raw)

    def feed_gets(self) -> int:
        return sum(1 for r in self.feed_server.requests if r.path == "/push.xml")

    def titles(self) -> list[str]:
        return [e.title for e in self.store.entries("tag", TAG, limit=100)]


@pytest.fixture
def push_site(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> Iterator[PushSite]:
    hub = Hub()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    topic = feed_server.url("push.xml")
    document = [atom("first")]
    feed_server.routes["/push.xml"] = lambda: Route(
        headers={
            "Content-Type": "application/atom+xml",
            "Link": f'<{hub.url}>; rel="hub", <{topic}>; rel="self"',
        },
        body=document[0],
    )
    site = PushSite(hub, feed_server, write_config, store, base, topic, document)
    site.configure()
    config = config_module.from_environ()
    server: Any = create_server(
        create_app(config, store, load_config=config_module.from_environ),
        host="127.0.0.1",
        port=port,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.close()
        thread.join(5)
        hub.close()


@contextmanager
def working(store: Store) -> Iterator[Worker]:
    executor = ThreadPoolExecutor(2)
    worker = Worker(config_module.from_environ, store, executor=executor, tick=0.1, push_tick=0.1)
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)
        executor.shutdown()
        assert not thread.is_alive()


def until(check: Callable[[], object], seconds: float = 15) -> None:
    assert eventually(lambda: bool(check()), seconds), "condition not met in time"


def live_and_armed(site: PushSite) -> Callable[[], bool]:
    def check() -> bool:
        sub = site.record()
        return sub is not None and sub.state == "live" and sub.armed

    return check


def test_a_distribution_is_stored_without_a_poll_and_forgeries_store_nothing(
    push_site: PushSite,
) -> None:
    site, hub = push_site, push_site.hub
    with working(site.store):
        until(lambda: hub.active(site.topic))
        until(live_and_armed(site))
        (subscribed,) = hub.active(site.topic)
        request = next(r for r in hub.requests if r["hub.mode"] == "subscribe")
        # subscribed to the self URL, with a secret, asking for a lease, at our callback
        assert request["hub.topic"] == site.topic
        assert request["hub.secret"] and len(request["hub.secret"].encode()) < 200
        assert int(request["hub.lease_seconds"]) > 0
        assert request["hub.callback"].startswith(site.base + "/websub/push/")
        gets = site.feed_gets()
        assert site.titles() == ["first"]

        # a bad signature is acknowledged (§8) and ignored; so is a missing one
        forged = atom("forged")
        assert hub.distribute(site.topic, forged, secret="guess") == [202]
        assert hub.distribute(site.topic, forged, signed=False) == [202]
        # a verification nobody asked for is 404, whatever its token or topic
        assert hub.verify_now("subscribe", "http://elsewhere/", subscribed.callback)[0] == 404
        unsolicited = site.base + "/websub/push/" + websub.new_token()
        assert hub.verify_now("subscribe", site.topic, unsolicited)[0] == 404
        assert hub.verify_now("unsubscribe", site.topic, subscribed.callback)[0] == 404
        assert site.record() is not None and site.record().state == "live"  # type: ignore[union-attr]

        # the token is this source's only: under another source's name it is nobody's
        elsewhere = subscribed.callback.replace("/websub/push/", "/websub/other/")
        signed = websub.signature(subscribed.secret, forged)
        assert post(elsewhere, forged, "application/atom+xml", signed) == 410

        # the hub's signed distribution (sha1, as hubs commonly sign) is stored, no poll made
        assert hub.distribute(site.topic, atom("pushed", "first")) == [202]
        until(lambda: "pushed" in site.titles())
        assert "forged" not in site.titles()
        assert site.feed_gets() == gets
        (state,) = site.store.source_states(["push"])
        assert state.url == site.feed_server.url("push.xml")  # polling is where it was

        # a body over max_bytes is refused and stores nothing
        big = atom("big" + "x" * 300)
        secret = subscribed.secret
        too_big = post(
            subscribed.callback,
            b" " * 2_000_000 + big,
            "application/atom+xml",
            websub.signature(secret, b" " * 2_000_000 + big),
        )
        assert too_big == 413
    assert "forged" not in site.titles() and not any(t.startswith("big") for t in site.titles())


def test_an_old_subscriptions_token_is_refused(push_site: PushSite) -> None:
    site, hub = push_site, push_site.hub
    with working(site.store):
        until(live_and_armed(site))
        (old,) = hub.active(site.topic)
        # push switched off: unsubscribed (verified by the hub), then on again: a new token
        site.configure(websub=False)
        site.store.request_reload()
        until(lambda: not hub.active(site.topic))
        site.configure()
        site.store.request_reload()
        until(lambda: hub.active(site.topic))
        (new,) = hub.active(site.topic)
        assert new.callback != old.callback and new.secret != old.secret
        body = atom("replayed")
        # signed with the old secret, as the old subscription's was: the token is dead
        assert (
            post(old.callback, body, "application/atom+xml", websub.signature(old.secret, body))
            == 410
        )
        assert hub.verify_now("subscribe", site.topic, old.callback)[0] == 404
        time.sleep(0.5)
    assert "replayed" not in site.titles()


def test_the_lease_is_renewed_before_it_ends(push_site: PushSite) -> None:
    site, hub = push_site, push_site.hub
    hub.lease = 4
    with working(site.store):
        until(lambda: hub.active(site.topic))
        first = next(v for v in hub.verifications if v.confirmed)
        until(lambda: sum(v.confirmed for v in hub.verifications) >= 3, 20)
        confirmed = [v for v in hub.verifications if v.confirmed]
        # same callback each time (a renewal is the same subscription), each one in time
        assert {v.callback for v in confirmed} == {first.callback}
        for before, after in zip(confirmed, confirmed[1:], strict=False):
            assert after.at - before.at < hub.lease
            assert after.at - before.at >= hub.lease * 0.7
        assert hub.active(site.topic)


def test_an_expired_lease_makes_a_new_subscription(push_site: PushSite) -> None:
    site, hub = push_site, push_site.hub
    hub.lease, hub.verify_renewals = 2, False  # the hub never confirms a renewal
    with working(site.store):
        until(lambda: hub.active(site.topic))
        (old,) = hub.active(site.topic)
        until(lambda: hub.active(site.topic) and hub.active(site.topic)[0].callback != old.callback)
        sub = site.record()
        assert sub is not None and sub.state == "live" and sub.token not in old.callback


def test_a_denial_falls_back_to_polling_and_status_says_so(
    push_site: PushSite, environ: dict[str, str]
) -> None:
    site, hub = push_site, push_site.hub
    hub.deny.add(site.topic)
    with working(site.store):
        until(lambda: site.record() is not None and site.record().state == "denied")  # type: ignore[union-attr]
    (state,) = site.store.source_states(["push"])
    assert state.next_due is not None and state.last_poll is not None
    assert (state.next_due - state.last_poll).total_seconds() <= 3600 + 1
    out = status(site, environ)
    assert f"WebSub: denied by {hub.url}: not here; polled at its interval" in out


def test_a_poll_finding_what_push_missed_marks_it_broken(
    push_site: PushSite, environ: dict[str, str]
) -> None:
    site = push_site
    with working(site.store):
        until(live_and_armed(site))
        (state,) = site.store.source_states(["push"])
        # while live, polled as a safety net: daily (the interval × 24 would be longer)
        assert state.next_due is not None and state.last_poll is not None
        assert (state.next_due - state.last_poll).total_seconds() > 23 * 3600
        assert "polled every 1d as a safety net" in status(site, environ)
        # the source publishes, the hub never pushes it, and the safety-net poll comes
        site.document[0] = atom("missed", "first")
        site.store.client.zadd(keys.DUE, {"push": 0})
        until(lambda: site.record() is not None and site.record().state == "broken")  # type: ignore[union-attr]
        until(
            lambda: (
                (s := site.store.source_states(["push"])[0]).next_due is not None
                and s.last_poll is not None
                and (s.next_due - s.last_poll).total_seconds() <= 3600 + 1
            )
        )
    assert "missed" in site.titles()
    assert "broken: a safety-net poll found entries" in status(site, environ)


def test_without_public_url_nothing_subscribes_and_status_says_why(
    push_site: PushSite, environ: dict[str, str]
) -> None:
    site = push_site
    site.write_config.write([site.source()], settings={"max_bytes": "1MB"})
    with working(site.store):
        until(lambda: site.store.source_states(["push"])[0].last_poll is not None)
        time.sleep(0.5)
    assert site.hub.requests == []
    assert "settings.public_url is unset, so no hub can reach our callback" in status(site, environ)


def status(site: PushSite, environ: dict[str, str]) -> str:
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(site.write_config.path),
        "AGGREGATOR_REDIS_URL": site.write_config.redis_url,
        "COLUMNS": "400",
    }
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_hub_requests_keep_block_private_addresses() -> None:
    hub = Hub()
    try:
        settings = Settings(block_private_addresses=True)
        allowed = AddressPolicy(allowed=(ipaddress.ip_network("127.0.0.1/32"),))
        refused_url = hub.url.replace("127.0.0.1", "127.0.0.2")

        async def ask() -> tuple[int, str]:
            async with Fetcher(settings, addresses=allowed) as fetcher:
                ok = await fetcher.post_form(hub.url, {"hub.mode": "publish", "hub.url": "x"})
                try:
                    await fetcher.post_form(refused_url, {"hub.mode": "publish", "hub.url": "y"})
                except FetchError as err:
                    return ok, str(err)
                return ok, ""

        ok, refused = asyncio.run(ask())
        assert ok == 204
        assert "127.0.0.2 is a loopback address (settings.block_private_addresses)" in refused
        assert hub.pings == ["x"]
    finally:
        hub.close()


# --- the way an operator runs it ----------------------------------------------------------


def test_end_to_end_push_reaches_the_merged_feed(
    write_config: ConfigWriter,
    feed_server: FeedServer,
    environ: dict[str, str],
) -> None:
    """feeds.yaml → `aggregator web` and `aggregator worker` → the hub subscribes and pushes →
    the entry is in /tags/<tag>.atom, with no poll between."""
    hub = Hub()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    topic = feed_server.url("push.xml")
    feed_server.routes["/push.xml"] = Route(
        headers={"Content-Type": "application/atom+xml"},
        body=atom("first", hub=hub.url, self_url=topic),
    )
    write_config.write(
        [{"name": "push", "url": topic, "tags": [TAG], "interval": "1h", "websub": True}],
        settings={"public_url": base},
    )
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }
    web = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    feed = base + "/tags/" + urllib.request.quote(TAG) + ".atom"
    try:
        wait_for(base, web)
        until(lambda: hub.active(topic), 30)
        store = Store.from_url(write_config.redis_url)
        try:
            until(
                lambda: (
                    (
                        Subscription.from_fields(store_module.subscriptions(store, ["push"])[0])
                        or Subscription()
                    ).armed
                ),
                30,
            )
        finally:
            store.close()
        gets = sum(1 for r in feed_server.requests if r.path == "/push.xml")
        assert hub.distribute(topic, atom("pushed", "first"), method="sha256") == [202]

        def titles() -> list[str]:
            return [e.title for e in feedparser.parse(http_get(feed).body).entries]

        until(lambda: "pushed" in titles(), 30)
        assert sorted(titles()) == ["first", "pushed"]
        assert sum(1 for r in feed_server.requests if r.path == "/push.xml") == gets
    finally:
        for process in (worker, web):
            process.terminate()
            process.wait(20)
        hub.close()
    env["COLUMNS"] = "400"
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"WebSub: live at {hub.url} until" in " ".join(done.stdout.split())
