"""README, "Commands": one test per row of the command table, each command run as
`python -m aggregator ...` in a subprocess, with the README's shipped defaults."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from urllib.parse import quote

import yaml
from lxml import etree

from tests.conftest import Route, free_port
from tests.readme_support import (
    Item,
    Site,
    Web,
    hours_ago,
    rss,
    standard_sources,
    stop,
    table_header,
    table_rows,
    titles,
    wait_for,
)

JINGJI_TAG = "经济日报新闻"
POLL_COLUMNS = [
    "source",
    "status",
    "entries",
    "new",
    "updated",
    "merged",
    "filtered",
    "cut",
    "time",
]
SUMMARY = re.compile(
    r"^(\d+) ok, (\d+) failed, (\d+) new entries, (\d+) merged, (\d+) filtered, "
    r"(\d+) cut by max_entries$"
)


def test_row_command_run(site: Site) -> None:
    """`aggregator run [--host H] [--port P]`: the scheduler and the web in one process."""
    site.write(standard_sources(site))
    port = free_port()
    process = site.start("run", "--host", "127.0.0.1", "--port", str(port))
    web = Web(f"http://127.0.0.1:{port}", process)

    def polled() -> bool:
        try:
            items = web.get("/all.json").json()["items"]
        except (OSError, ValueError):
            return False
        return {i["_source"]["name"] for i in items} == {"jingjiribao", "tech"}

    wait_for(polled, "run polls its sources and serves them", process=process)
    assert len(web.ok("/all.json").json()["items"]) == 6
    shown = titles(web.ok("/tags/" + quote(JINGJI_TAG, safe="") + ".atom").feed())
    assert "2017年全国就业形势总体稳定" in shown and "直播带岗助力稳就业" in shown
    # `status` beside it sees what it polled.
    rows = site.status()
    assert rows["jingjiribao"]["status"] == "200" and rows["tech"]["status"] == "200"
    assert stop(process) == 0


def _both_recorded(rows: dict[str, dict[str, str]]) -> dict[str, dict[str, str]] | None:
    done = all(rows[name]["last poll"] != "-" for name in ("jingjiribao", "tech"))
    return rows if done else None


def test_row_command_worker(site: Site) -> None:
    """`aggregator worker`: the scheduler only; many share one Redis and never poll one
    source twice at once; SIGHUP makes one re-read feeds.yaml."""
    sources = standard_sources(site)
    site.write(sources)
    workers = [site.start("worker"), site.start("worker")]

    def both_polled() -> bool:
        # the fixture server's own record: asking `status` in a loop would load the machine
        return bool(site.requests_to("jingji.xml") and site.requests_to("tech.xml"))

    wait_for(both_polled, "the workers poll every source", process=workers[0])
    time.sleep(1.5)  # a few more ticks of both workers
    assert len(site.requests_to("jingji.xml")) == 1, site.server.requests
    assert len(site.requests_to("tech.xml")) == 1, site.server.requests
    # The requests are made; their polls' records follow (slowly on a busy machine).
    rows = wait_for(
        lambda: _both_recorded(site.status()), "both polls recorded", 20, process=workers[0]
    )
    assert rows["jingjiribao"]["status"] == "200" and rows["tech"]["status"] == "200", rows

    extra = site.serve(
        "extra.xml", rss([Item("Extra story", "https://x.example.org/1", hours_ago(1))])
    )
    site.write([*sources, {"name": "extra", "url": extra}])
    for worker in workers:
        worker.send_signal(signal.SIGHUP)
    wait_for(lambda: site.requests_to("extra.xml"), "a worker polls the source added", 15)
    web = site.web()
    wait_for(
        lambda: "Extra story" in titles(web.ok("/all.atom").feed()), "the new entry is served", 10
    )
    for worker in workers:
        assert stop(worker) == 0


def test_row_command_web(site: Site) -> None:
    """`aggregator web [--host H] [--port P]`, and gunicorn 'aggregator.web:create_app()':
    both serve the same bytes with the same ETag, and the web never fetches."""
    site.write(standard_sources(site))
    assert site.poll().returncode == 0
    fetched = len(site.server.requests)
    port = free_port()
    web = site.web(
        sys.executable,
        "-m",
        "aggregator",
        "web",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        port=port,
    )
    other_port = free_port()
    gunicorn = site.web(
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{other_port}",
        "--workers",
        "1",
        "aggregator.web:create_app()",
        port=other_port,
    )
    path = "/tags/" + quote(JINGJI_TAG, safe="") + ".json"
    mine, theirs = web.ok(path), gunicorn.ok(path)
    assert len(mine.json()["items"]) == 4
    # Asked under one name (as behind one proxy), both give the same bytes and ETag.
    same = {"Host": "feeds.example"}
    one, other = web.get(path, same), gunicorn.get(path, same)
    assert (one.status, other.status) == (200, 200)
    assert one.body == other.body and one.headers["ETag"] == other.headers["ETag"]
    # Self links come from each request's own host and port (public_url unset).
    assert mine.json()["feed_url"] == web.base + path
    assert theirs.json()["feed_url"] == gunicorn.base + path
    assert len(site.server.requests) == fetched


def test_row_command_poll(site: Site) -> None:
    """`aggregator poll [NAME ...]`: once, a summary table, exit 1 only if every poll failed."""
    sources = standard_sources(site)
    # A second copy of one story (same link, tracking parameters added) merges into the first.
    copy = Item(
        "直播带岗助力稳就业",
        "https://finews.example.cn/html_News/today/1.html?utm_source=rss",
        hours_ago(1),
    )
    sources.append({"name": "copy", "url": site.serve("copy.xml", rss([copy]))})
    sources[0]["exclude"] = ["外贸"]
    site.write(sources, settings={"retention": {"max_entries": 2}})
    polled = site.poll()
    assert polled.returncode == 0, polled.stdout + polled.stderr
    assert table_header(polled.stdout) == POLL_COLUMNS
    match = SUMMARY.match(polled.summary)
    assert match, polled.summary
    ok, failed, new, merged, filtered, cut = map(int, match.groups())
    # jingji: 4 listed, 1 filtered, 3 left of which max_entries keeps 2; tech 2; copy merged.
    assert (ok, failed, merged, filtered, cut) == (3, 0, 1, 1, 1), polled.summary
    assert new == 2 + 2, polled.summary
    row = table_rows(polled.stdout)["jingjiribao"]
    # (which of jingjiribao and copy counts the story as merged depends on which finishes first)
    assert (row["status"], row["filtered"], row["cut"]) == ("HTTP 200", "1", "1"), row

    again = site.poll("tech")
    assert again.returncode == 0
    assert set(table_rows(again.stdout)) == {"tech"}, again.stdout

    dead = f"http://127.0.0.1:{free_port()}/feed.xml"
    site.write([{"name": "dead", "url": dead}, {"name": "gone", "url": site.server.url("none")}])
    failed_all = site.poll()
    assert failed_all.returncode == 1
    assert SUMMARY.match(failed_all.summary) and failed_all.summary.startswith("0 ok, 2 failed")


def test_row_command_poll_draws_its_progress_bar_on_a_terminal(site: Site) -> None:
    """`aggregator poll` on a terminal draws a progress bar (rich's, erased at the end) before
    its table; into a pipe (cron) it prints the table and summary alone."""
    import os
    import pty
    import subprocess

    site.write(standard_sources(site))
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "aggregator", "poll"],
            env={**site.env, "COLUMNS": "120", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=site.root,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: all is read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    text = seen.decode("utf-8", "replace")
    assert re.search(r"\d+/2", text), text[:2000]  # the bar's "done/total" column
    assert "2 ok, 0 failed" in text, text[-2000:]
    piped = site.poll()
    assert not re.search(r"\d+/2", piped.stdout) and "\x1b[" not in piped.stdout, piped.stdout


def test_row_command_check(site: Site) -> None:
    """`aggregator check`: exit 1 listing every problem by its place; 0 on a good file."""
    site.path.write_text(
        "settings: {default_interval: soon, colour: red}\n"
        "sources:\n"
        "  - {name: Bad Name, url: 'https://a.example/'}\n"
        "  - {name: ok, url: 'ftp://b.example/', tags: ['']}\n"
        "  - {name: ok, url: 'https://c.example/'}\n",
        encoding="utf-8",
    )
    checked = site.cli("check")
    assert checked.returncode == 1
    for problem in (
        "settings.default_interval: not a duration",
        "settings.colour: unknown key",
        "sources[0].name:",
        "sources[1].url: not an http(s) URL",
        "sources[1].tags[0]:",
        "sources[2].name: duplicate name 'ok'",
    ):
        assert problem in checked.stderr, checked.stderr
    site.write(standard_sources(site))
    good = site.cli("check")
    assert good.returncode == 0, good.stderr
    assert "OK, 2 sources" in good.stdout


def test_row_command_status(site: Site) -> None:
    """`aggregator status`: one row per source with last poll, HTTP status, entries, stored,
    next due and the last error as one line a person reads."""
    sources = standard_sources(site)
    dead_port = free_port()
    sources += [
        {"name": "missing", "url": site.server.url("missing.xml")},
        {"name": "refused", "url": f"http://127.0.0.1:{dead_port}/feed.xml"},
    ]
    site.write(sources, settings={"retention": {"max_entries": 3}})
    site.poll()
    done = site.cli("status")
    assert done.returncode == 0
    header = table_header(done.stdout)
    for column in ("source", "last poll", "status", "entries", "stored", "next due"):
        assert column in header, header
    rows = table_rows(done.stdout)
    assert set(rows) >= {"jingjiribao", "tech", "missing", "refused"}
    assert rows["jingjiribao"]["entries"] == "4" and rows["jingjiribao"]["stored"] == "3"
    assert rows["missing"]["status"] == "404"
    assert "HTTP 404" in rows["missing"]["notes"]
    assert f"connection refused by 127.0.0.1:{dead_port}" in rows["refused"]["notes"], done.stdout
    for line in done.stdout.splitlines():
        assert "causes" not in line and "Error(" not in line, line


def test_row_command_reload(site: Site) -> None:
    """`aggregator reload` reaches every worker and web process: within about two seconds a
    web process shows new tag titles, new sources in /sources.opml and Cache-Control from the
    new intervals; a worker polls a new source, and a source that answered 410 whose URL was
    then changed."""
    sources = standard_sources(site)
    site.server.routes["/old.xml"] = Route(410, {"Content-Type": "text/plain"}, b"gone")
    sources.append({"name": "moved", "url": site.server.url("old.xml")})
    site.write(sources)
    worker = site.start("worker")
    web = site.web()
    wait_for(lambda: site.requests_to("old.xml"), "the worker polls the 410 source", process=worker)
    wait_for(
        lambda: "never" in site.status()["moved"]["next due"], "the 410 source is unscheduled", 10
    )
    tag = "/tags/" + quote(JINGJI_TAG, safe="")
    assert web.ok(tag + ".atom").feed().feed.title == JINGJI_TAG
    assert web.ok(tag + ".atom").headers["Cache-Control"] == "public, max-age=900"

    new_url = site.serve(
        "new.xml", rss([Item("搬家以后的新文章", "https://m.example.cn/1", hours_ago(2))])
    )
    extra = site.serve(
        "extra.xml", rss([Item("Extra story", "https://x.example.org/1", hours_ago(1))])
    )
    sources[0]["interval"] = "5m"
    sources[2]["url"] = new_url
    sources.append({"name": "extra", "url": extra, "tags": [JINGJI_TAG]})
    site.write(sources, tags={JINGJI_TAG: {"title": "经济日报 · 要闻"}})
    assert site.cli("reload").returncode == 0
    asked = time.monotonic()
    wait_for(lambda: web.ok(tag + ".atom").feed().feed.title == "经济日报 · 要闻", "new title", 5)
    assert time.monotonic() - asked < 3.0
    assert web.ok(tag + ".atom").headers["Cache-Control"] == "public, max-age=300"
    assert "extra.xml" in web.ok("/sources.opml").text
    wait_for(lambda: site.requests_to("extra.xml"), "the worker polls the new source", 10)
    wait_for(lambda: site.requests_to("new.xml"), "the worker polls the changed URL", 10)
    wait_for(lambda: "搬家以后的新文章" in titles(web.ok("/all.atom").feed()), "served", 10)
    assert stop(worker) == 0


def test_row_command_export_jekyll(site: Site, tmp_path: Path) -> None:
    """`aggregator export jekyll --out DIR [--tag T | --category C]`: one post per stored
    entry at DIR/_posts/YYYY-MM-DD-<id>.html; a re-run rewrites nothing unchanged."""
    site.write(standard_sources(site))
    assert site.poll().returncode == 0
    out = tmp_path / "jekyll"
    done = site.cli("export", "jekyll", "--out", str(out))
    assert done.returncode == 0, done.stderr
    posts = sorted((out / "_posts").iterdir())
    assert len(posts) == 6, [p.name for p in posts]
    for post in posts:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[0-9a-f]{16}\.html", post.name), post.name
    old = next(p for p in posts if p.name.startswith("2017-12-03-"))
    text = old.read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---")[1])
    assert front["title"] == "2017年全国就业形势总体稳定"
    assert str(front["date"]).startswith("2017-12-03 09:30:05"), front  # its own +08:00 day
    mtimes = {p.name: p.stat().st_mtime_ns for p in posts}
    again = site.cli("export", "jekyll", "--out", str(out))
    assert "0 new, 0 updated, 6 unchanged" in again.stdout, again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_posts").iterdir()} == mtimes

    tagged = tmp_path / "tagged"
    assert site.cli("export", "jekyll", "--out", str(tagged), "--tag", "node.js").returncode == 0
    assert len(list((tagged / "_posts").iterdir())) == 2
    by_category = tmp_path / "by-category"
    done = site.cli("export", "jekyll", "--out", str(by_category), "--category", "jingjiribao")
    assert done.returncode == 0 and len(list((by_category / "_posts").iterdir())) == 4
    both = site.cli(
        "export", "jekyll", "--out", str(tmp_path / "x"), "--tag", "a", "--category", "b"
    )
    assert both.returncode != 0


def test_row_command_opml_export(site: Site) -> None:
    """`aggregator opml export`: OPML 2.0, one folder per category, htmlUrl and feed titles
    from what was polled."""
    site.write(standard_sources(site), categories={"technology": {"title": "科技"}})
    assert site.poll().returncode == 0
    done = site.cli("opml", "export")
    assert done.returncode == 0, done.stderr
    root = etree.fromstring(done.stdout.encode("utf-8"))
    assert root.get("version") == "2.0"
    folders = {f.get("text"): f for f in root.find("body")}
    assert set(folders) == {"jingjiribao", "科技"}
    tech = folders["科技"][0]
    assert tech.get("xmlUrl") == site.server.url("tech.xml")
    assert tech.get("htmlUrl") == "https://tech.example.org/"
    assert tech.get("title") == "Example Tech News"  # the feed's own title, as polled
    jingji = folders["jingjiribao"][0]
    assert jingji.get("title") == "经济日报"
    assert jingji.get("htmlUrl") == "https://finews.example.cn/category/jingjiribao.html"


def test_row_command_opml_import(site: Site, tmp_path: Path) -> None:
    """`aggregator opml import FILE [--merge]`: OPML outlines as feeds.yaml sources printed
    as YAML; --merge appends them, keeping the rest of the file and leaving out feeds already
    there."""
    sources = standard_sources(site)
    site.write(sources)
    opml = tmp_path / "reader.opml"
    opml.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<opml version="1.0"><head><title>订阅</title>'
        "</head><body>"
        '<outline text="财经新闻">'
        f'<outline type="rss" text="经济日报" xmlUrl="{sources[0]["url"]}"/>'
        '<outline type="rss" text="人民网 财经" xmlUrl="https://finance.example.cn/rss.xml"/>'
        "</outline>"
        '<outline type="rss" text="Science" xmlUrl="https://science.example.org/atom.xml"/>'
        "</body></opml>",
        encoding="utf-8",
    )
    printed = site.cli("opml", "import", str(opml))
    assert printed.returncode == 0, printed.stderr
    listed = yaml.safe_load(printed.stdout)
    entries = listed["sources"] if isinstance(listed, dict) else listed
    urls = {s["url"] for s in entries}
    assert {"https://finance.example.cn/rss.xml", "https://science.example.org/atom.xml"} <= urls
    for entry in entries:
        assert re.fullmatch(r"[a-z0-9_-]+", entry["name"]), entry

    before = "# our sources, kept by the news desk\n" + site.path.read_text(encoding="utf-8")
    site.path.write_text(before, encoding="utf-8")
    merged = site.cli("opml", "import", "--merge", str(opml))
    assert merged.returncode == 0, merged.stderr
    after = site.path.read_text(encoding="utf-8")
    assert after.startswith(before.rstrip("\n")), after
    document = yaml.safe_load(after)
    urls = [s["url"] for s in document["sources"]]
    assert len(urls) == 4 and urls.count(sources[0]["url"]) == 1
    finance = next(s for s in document["sources"] if "finance" in s["url"])
    assert finance.get("category") == "财经新闻"
    assert site.cli("check").returncode == 0
