"""`aggregator opml export` / `import`, the `/sources.opml` route, and merging into feeds.yaml."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from lxml import etree

from aggregator import config as config_module
from aggregator import opml
from aggregator.cli import main
from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import DATA, ConfigWriter

OPML = DATA / "opml"
TAG = "经济日报新闻"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def config(write_config: ConfigWriter) -> Config:
    return write_config.write(
        [
            {
                "name": "jingjiribao",
                "url": "https://finews.example.cn/rss.xml",
                "tags": [TAG],
                "title": "经济日报",
            },
            {"name": "python-insider", "url": "https://blog.python.org/feeds/posts/default"},
            {"name": "hn", "url": "https://hnrss.org/frontpage", "category": "tech"},
            {
                "name": "old",
                "url": "https://old.example.org/rss.xml?a=1&b=<2>",
                "category": "tech",
                "enabled": False,
            },
        ],
        settings={"public_url": "https://news.example.org/"},
        categories={"jingjiribao": {"title": TAG}, "tech": {"title": "Technology"}},
    )


@pytest.fixture
def env(environ: dict[str, str], write_config: ConfigWriter) -> dict[str, str]:
    return {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }


def polled(source: str, category: str, title: str, link: str) -> Entry:
    return Entry(
        id=hashlib.sha256(source.encode()).hexdigest()[:16],
        source=source,
        category=category,
        tags=(),
        title="an entry",
        link=f"https://example.test/{source}",
        content="<p>x</p>",
        summary="",
        first_seen=datetime(2024, 1, 1, tzinfo=UTC),
        source_title=title,
        source_link=link,
    )


def outlines(document: bytes) -> list[tuple[str, list[dict[str, str]]]]:
    root = etree.fromstring(document)
    assert root.tag == "opml" and root.get("version") == "2.0"
    return [
        (folder.get("text", ""), [dict(o.attrib) for o in folder.findall("outline")])
        for folder in root.find("body").findall("outline")
    ]


# --- export --------------------------------------------------------------------------------


def test_export_groups_every_source_by_category(
    config: Config, store: Store, env: dict[str, str]
) -> None:
    store.save_poll(
        "python-insider",
        [polled("python-insider", "python-insider", "Python Insider", "https://blog.python.org/")],
        {},
        None,
    )
    # normalize's fallbacks (the source's name, the feed's own URL) are not worth publishing
    store.save_poll("hn", [polled("hn", "tech", "hn", "https://hnrss.org/frontpage")], {}, None)
    result = cli(env, "opml", "export")
    assert result.returncode == 0, result.stderr
    root = etree.fromstring(result.stdout.encode())
    assert root.findtext("head/title") == "Sources of https://news.example.org/"
    assert outlines(result.stdout.encode()) == [
        (
            TAG,
            [
                {
                    "type": "rss",
                    "text": "经济日报",
                    "title": "经济日报",
                    "xmlUrl": "https://finews.example.cn/rss.xml",
                    "category": "jingjiribao",
                }
            ],
        ),
        (
            "python-insider",
            [
                {
                    "type": "rss",
                    "text": "Python Insider",
                    "title": "Python Insider",
                    "xmlUrl": "https://blog.python.org/feeds/posts/default",
                    "htmlUrl": "https://blog.python.org/",
                    "category": "python-insider",
                }
            ],
        ),
        (
            "Technology",
            [
                {
                    "type": "rss",
                    "text": "hn",
                    "title": "hn",
                    "xmlUrl": "https://hnrss.org/frontpage",
                    "category": "tech",
                },
                {
                    "type": "rss",
                    "text": "old",
                    "title": "old",
                    "xmlUrl": "https://old.example.org/rss.xml?a=1&b=<2>",
                    "category": "tech",
                },
            ],
        ),
    ]


def test_export_without_redis_still_lists_the_sources(
    write_config: ConfigWriter, environ: dict[str, str]
) -> None:
    write_config.write(
        [{"name": "a", "url": "https://a.example.org/rss"}],
        settings={"redis_url": "redis://127.0.0.1:1/0"},
    )
    env = {**environ, "AGGREGATOR_CONFIG": str(write_config.path)}
    result = cli(env, "opml", "export")
    assert result.returncode == 0
    assert "warning: no htmlUrl" in result.stderr
    assert outlines(result.stdout.encode())[0][1][0]["xmlUrl"] == "https://a.example.org/rss"


def test_identical_config_renders_identical_bytes(config: Config) -> None:
    assert opml.render(config) == opml.render(config)
    assert opml.render(config).startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<opml")


def test_export_then_import_round_trips_and_passes_check(
    config: Config, env: dict[str, str], tmp_path: Path
) -> None:
    exported = tmp_path / "sources.opml"
    exported.write_text(cli(env, "opml", "export").stdout, encoding="utf-8")
    result = cli(env, "opml", "import", str(exported))
    assert result.returncode == 0, result.stderr
    imported = yaml.safe_load(result.stdout)["sources"]
    assert [(s["url"], s.get("category"), s["title"]) for s in imported] == [
        ("https://finews.example.cn/rss.xml", "jingjiribao", "经济日报"),
        ("https://blog.python.org/feeds/posts/default", "python-insider", "python-insider"),
        ("https://hnrss.org/frontpage", "tech", "hn"),
        ("https://old.example.org/rss.xml?a=1&b=<2>", "tech", "old"),
    ]
    # the printed YAML is a feeds.yaml of its own that `aggregator check` accepts
    standalone = tmp_path / "imported.yaml"
    standalone.write_text(result.stdout, encoding="utf-8")
    checked = cli({**env, "AGGREGATOR_CONFIG": str(standalone)}, "check")
    assert checked.returncode == 0, checked.stderr
    assert "4 sources" in checked.stdout


# --- the /sources.opml route -----------------------------------------------------------------


def test_sources_opml_route(config: Config, store: Store) -> None:
    client = create_app(config, store).test_client()
    response = client.get("/sources.opml")
    assert response.status_code == 200
    assert response.content_type == "text/x-opml; charset=utf-8"
    assert response.data == opml.render(config, {})
    assert [folder for folder, _ in outlines(response.data)] == [
        TAG,
        "python-insider",
        "Technology",
    ]
    again = client.get("/sources.opml", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


# --- import --------------------------------------------------------------------------------


def test_import_nested_folders_golden() -> None:
    result = CliRunner().invoke(main, ["opml", "import", str(OPML / "nested.opml")])
    assert result.exit_code == 0, result.output
    assert result.stdout == (OPML / "nested.yaml").read_text(encoding="utf-8")
    assert result.stderr.splitlines() == [
        "left out 'Python Insider again': HTTPS://Blog.Python.org/feeds/posts/default#top is "
        "listed twice (first as python-insider)",
        "left out 'Gopher': url: not an http(s) URL",
    ]


def test_import_reads_a_declared_multibyte_encoding() -> None:
    feeds = opml.parse((OPML / "gbk.opml").read_bytes())
    assert feeds == [opml.FeedOutline("http://www.ce.cn/rss/jjrb.xml", "经济日报", "", "财经")]


@pytest.mark.parametrize("fixture", ["billion-laughs.opml", "external-entity.opml"])
def test_import_refuses_entity_declarations(fixture: str) -> None:
    result = CliRunner().invoke(main, ["opml", "import", str(OPML / fixture)])
    assert result.exit_code == 1
    assert "refusing an XML entity declaration" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"<rss version='2.0'><channel/></rss>", "not an OPML document: the root element is <rss>"),
        (b"<opml><body><outline text='x'></body></opml>", "not well-formed XML: mismatched tag"),
        (b"<?xml version='1.0' encoding='x-no-such'?><opml/>", "unknown encoding 'x-no-such'"),
        (b"", "not well-formed XML: no element found"),
    ],
)
def test_import_names_what_is_wrong(document: bytes, problem: str) -> None:
    with pytest.raises(opml.OpmlError, match=problem):
        opml.parse(document)


def test_an_opml_without_feeds_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.opml"
    empty.write_text("<opml version='2.0'><body><outline text='folder'/></body></opml>")
    result = CliRunner().invoke(main, ["opml", "import", str(empty)])
    assert result.exit_code == 1 and "no outlines with an xmlUrl" in result.stderr


@pytest.mark.parametrize(
    ("title", "url", "name"),
    [
        (
            "BBC News - Business",
            "https://feeds.bbci.co.uk/news/business/rss.xml",
            "bbc-news-business",
        ),
        ("经济日报", "http://www.ce.cn/rss/jjrb.xml", "ce-cn"),
        ("经济日报 RSS", "http://www.ce.cn/rss/jjrb.xml", "ce-cn"),
        ("Café Ｎｅｗｓ", "https://cafe.example/", "cafe-news"),
        ("", "https://WWW.Example.ORG:8443/x", "example-org"),
        ("!!!", "http://[::1]/feed", "1"),
        ("x" * 80, "https://a.example/", "x" * 48),
    ],
)
def test_names_come_from_the_title_else_the_host(title: str, url: str, name: str) -> None:
    assert opml.base_name(opml.FeedOutline(url, title)) == name


# --- merging into feeds.yaml ---------------------------------------------------------------

NEW = [
    {"name": "new-one", "url": "https://new.example.org/rss", "category": "新闻", "title": "新的"},
    {"name": "new-two", "url": "https://two.example.org/rss"},
]

COMMENTED = """\
# Our sources. Comments stay.
settings:
  public_url: http://localhost:8000   # self links

sources:
  - name: jingjiribao
    url: https://example.com/rss.xml   # the paper
    tags: [经济日报新闻, 财经]
  # - name: old
  #   url: https://old.example.com/rss.xml

# Display names.
categories:
  jingjiribao: {title: 经济日报新闻}
"""

LAYOUTS = {
    "commented": COMMENTED,
    "crlf": COMMENTED.replace("\n", "\r\n"),
    "indentless": "sources:\n- name: a\n  url: https://a.example.com/rss\ntags:\n  x: {title: X}\n",
    "block scalar last": (
        "sources:\n    -   name: a\n        url: https://a.example.com/rss\n"
        "        title: >-\n            A long\n            title\n\ncategories: {}\n"
    ),
    "no final newline": "sources:\n  - name: a\n    url: https://a.example.com/rss  # end",
    "flow": 'sources: [{name: a, url: "https://a.example.com/rss"}]  # one\ncategories: {}\n',
    "flow, several lines": "sources: [\n  {name: a, url: 'https://a.example.com/rss'},\n]\n",
    "empty flow": "settings: {}\nsources: []  # none yet\ncategories: {}\n",
    "missing": "settings:\n  timeout: 5s",
    "empty file": "",
    "only comments": "# nothing yet\n",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_add_sources_keeps_everything_else(layout: str) -> None:
    text = LAYOUTS[layout]
    merged = opml.merge(text, Path("feeds.yaml"), NEW)
    old = config_module.parse(text, Path("feeds.yaml"))
    new = config_module.parse(merged, Path("feeds.yaml"))
    assert [s.name for s in new.sources] == [s.name for s in old.sources] + ["new-one", "new-two"]
    assert new.sources[-2].category == "新闻" and new.sources[-2].title == "新的"
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert line in merged.splitlines()  # every comment line kept
    if layout != "empty flow":
        # one insertion: the old text is a prefix and a suffix of the new, around it
        prefix = next(
            (i for i, (a, b) in enumerate(zip(text, merged, strict=False)) if a != b), len(text)
        )
        assert merged.endswith(text[prefix:])
        assert len(merged) > len(text)
    if "\r\n" in text:
        assert "\n" not in merged.replace("\r\n", "")


def test_block_items_follow_the_last_item_at_its_indentation() -> None:
    merged = opml.add_sources(COMMENTED, NEW[1:])
    assert merged == COMMENTED.replace(
        "    tags: [经济日报新闻, 财经]\n",
        "    tags: [经济日报新闻, 财经]\n  - name: new-two\n    url: https://two.example.org/rss\n",
    )


def test_merge_refuses_an_edit_it_cannot_make_cleanly() -> None:
    with pytest.raises(opml.OpmlError, match="would make feeds.yaml invalid"):
        opml.merge("{settings: {timeout: 5s}}\n", Path("feeds.yaml"), NEW)


def test_cli_merge_adds_new_feeds_and_refuses_duplicates(
    write_config: ConfigWriter, environ: dict[str, str], tmp_path: Path
) -> None:
    write_config.path.write_text(
        COMMENTED.replace(
            "  # - name: old",
            "  - name: python-insider\n    url: https://python.example/feed\n  # - name: old",
        ),
        encoding="utf-8",
    )
    write_config.path.chmod(0o640)
    before = write_config.path.read_text(encoding="utf-8")
    env = {**environ, "AGGREGATOR_CONFIG": str(write_config.path)}
    document = tmp_path / "subscriptions.opml"
    document.write_text(
        """<opml version="2.0"><body><outline text="Mixed">
        <outline text="经济日报" xmlUrl="https://EXAMPLE.com/rss.xml"/>
        <outline text="Python Insider" xmlUrl="https://blog.python.org/feeds/posts/default"/>
        <outline text="Go Blog" xmlUrl="https://go.dev/blog/feed.atom"/>
        </outline></body></opml>""",
        encoding="utf-8",
    )
    result = cli(env, "opml", "import", "--merge", str(document))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "left out '经济日报': https://EXAMPLE.com/rss.xml is already sources[0] (jingjiribao)",
        "left out 'Python Insider': the name 'python-insider' is already sources[1] "
        "(https://python.example/feed)",
    ]
    assert "added 1 sources" in result.stdout and "go-blog" in result.stdout
    after = write_config.path.read_text(encoding="utf-8")
    assert after == before.replace(
        "    url: https://python.example/feed\n",
        "    url: https://python.example/feed\n  - name: go-blog\n"
        "    url: https://go.dev/blog/feed.atom\n    category: Mixed\n    title: Go Blog\n",
    )
    assert write_config.path.stat().st_mode & 0o777 == 0o640
    assert cli(env, "check").returncode == 0

    again = cli(env, "opml", "import", "--merge", str(document))
    assert again.returncode == 0 and "nothing to add" in again.stdout
    assert write_config.path.read_text(encoding="utf-8") == after


def test_cli_merge_leaves_the_file_alone_when_it_cannot(
    write_config: ConfigWriter, environ: dict[str, str], tmp_path: Path
) -> None:
    write_config.path.write_text("{settings: {timeout: 5s}}\n", encoding="utf-8")
    env = {**environ, "AGGREGATOR_CONFIG": str(write_config.path)}
    document = tmp_path / "one.opml"
    document.write_text(
        '<opml version="2.0"><body>'
        '<outline text="Tech [daily]" xmlUrl="https://tech.example.org/rss"/></body></opml>',
        encoding="utf-8",
    )
    result = cli(env, "opml", "import", "--merge", str(document))
    assert result.returncode == 1
    assert "add these by hand" in result.stderr
    assert "  - name: tech-daily\n    url: https://tech.example.org/rss\n" in result.stderr
    assert "    title: Tech [daily]\n" in result.stderr  # printed as it is, not as markup
    assert write_config.path.read_text(encoding="utf-8") == "{settings: {timeout: 5s}}\n"
