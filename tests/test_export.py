"""`aggregator export jekyll`: posts in the seed's format, from a real Redis, onto a real disk."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import lxml.html
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import export
from aggregator.cli import main
from aggregator.config import Config
from aggregator.export import BackLinks, jekyll_words, network_path, one_line_html, render_post
from aggregator.models import Entry
from aggregator.store import Store
from tests.conftest import DATA, ConfigWriter

EXPORT = DATA / "export"
SEED = EXPORT / "000_3d1692eb5dbbc894.txt"
FIXTURE = EXPORT / "3d1692eb5dbbc894.entry.json"
POST = "2022-04-05-3d1692eb5dbbc894.html"
TAG = "经济日报新闻"
CST = timezone(timedelta(hours=8))
# The one place our export differs from the seed: the back link goes to the category page our
# web app serves (`/categories/<c>`); the seed's site had its own (`/category/<c>.html`), and
# feeds.yaml has no key for another site's page layout.
SEED_CATEGORY_LINK = "//finews.withounder.com/category/jingjiribao.html"
OUR_CATEGORY_LINK = "//finews.withounder.com/categories/jingjiribao"


def seed_entry() -> Entry:
    return Entry.from_dict(json.loads(FIXTURE.read_text(encoding="utf-8")))


def seed_titles(category: str) -> str:
    return {"jingjiribao": TAG}.get(category, category)


def expected_post() -> bytes:
    seed = SEED.read_bytes()
    assert seed.count(SEED_CATEGORY_LINK.encode()) == 1
    return seed.replace(SEED_CATEGORY_LINK.encode(), OUR_CATEGORY_LINK.encode())


def front_matter(post: str) -> dict[str, object]:
    assert post.startswith("---\n")
    block = post[4 : post.index("\n---\n")]
    loaded = yaml.safe_load(block)
    assert isinstance(loaded, dict)
    return loaded


def jekyll_list(value: object) -> list[str]:
    """What Jekyll makes of `categories`/`tags` (Utils.value_from_plural_key): a string is
    split on white space, a list taken as it is, anything else dropped."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return []


@pytest.fixture
def config(write_config: ConfigWriter) -> Config:
    return write_config.write(
        [
            {"name": "jingjiribao", "url": "http://finews.zning.xyz/rss.xml", "tags": [TAG]},
            {"name": "tech", "url": "https://tech.example.org/rss.xml", "tags": ["python"]},
        ],
        settings={"public_url": "https://finews.withounder.com"},
        categories={"jingjiribao": {"title": TAG}},
    )


def make_entry(n: int, **changes: object) -> Entry:
    values: dict[str, object] = {
        "id": f"{n:016x}",
        "source": "tech",
        "category": "tech",
        "tags": ("python",),
        "title": f"Post {n}",
        "link": f"https://tech.example.org/{n}.html",
        "content": f"<p>body {n}</p>",
        "summary": "",
        "first_seen": datetime(2024, 1, 1, tzinfo=UTC),
        "published": datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
        + timedelta(hours=n),
    }
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


def run_export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["export", "jekyll", *args])
    return result.exit_code, result.output


# --- the golden post -----------------------------------------------------------------------


def test_a_post_reproduces_the_seed_byte_for_byte() -> None:
    links = BackLinks(
        network_path("https://finews.withounder.com/"),
        seed_titles,
        category_path="/category/{}.html",
    )
    post = render_post(seed_entry(), links)
    assert export.post_name(seed_entry()) == POST
    assert post.encode("utf-8") == SEED.read_bytes()


def test_the_command_writes_the_seed_post_from_the_store(
    config: Config,
    store: Store,
    environ: dict[str, str],
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    store.save_poll("jingjiribao", [seed_entry()], {"status": 200}, None)
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "aggregator", "export", "jekyll", "--out", str(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "1 posts" in result.stdout and "1 new" in result.stdout
    assert [p.name for p in (site / "_posts").iterdir()] == [POST]
    assert (site / "_posts" / POST).read_bytes() == expected_post()


def test_the_seed_front_matter_reads_back(config: Config) -> None:
    post = render_post(seed_entry(), BackLinks.from_config(config))
    matter = front_matter(post)
    assert matter["layout"] == "post"
    assert matter["title"] == "从面对面到屏对屏——各地稳就业举措亮点纷呈"
    assert matter["categories"] == "jingjiribao"
    assert matter["tags"] == TAG
    assert post.endswith(f"[返回{TAG}]({OUR_CATEGORY_LINK})｜[返回首页](//finews.withounder.com/)")


# --- re-running ----------------------------------------------------------------------------


def test_rerun_rewrites_changed_posts_only(config: Config, store: Store, tmp_path: Path) -> None:
    store.save_poll("tech", [make_entry(n) for n in range(3)], {}, None)
    assert run_export("--out", str(tmp_path)) == (
        0,
        f"3 posts in {tmp_path / '_posts'}: 3 new, 0 updated, 0 unchanged\n",
    )
    posts = sorted((tmp_path / "_posts").iterdir())
    assert [p.name for p in posts] == [
        "2024-03-01-0000000000000000.html",
        "2024-03-02-0000000000000001.html",  # 00:30 the next day, in the source's -05:00
        "2024-03-02-0000000000000002.html",
    ]
    old = 946684800_000000000  # 2000-01-01: a rewrite would move it
    for post in posts:
        os.utime(post, ns=(old, old))
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in posts}

    store.save_poll("tech", [make_entry(1, title="Post 1, corrected")], {}, None)
    code, output = run_export("--out", str(tmp_path))
    assert code == 0 and "1 updated, 2 unchanged" in output
    for post in posts:
        changed = post.name.endswith("1.html")
        assert (post.stat().st_mtime_ns == old) is not changed, post.name
        assert (post.read_bytes() == before[post.name][1]) is not changed
        if not changed:
            assert post.stat().st_ino == before[post.name][0]
    assert 'title: "Post 1, corrected"' in posts[1].read_text(encoding="utf-8")
    assert not [p for p in (tmp_path / "_posts").iterdir() if p.name.startswith(".tmp")]


def test_a_post_whose_date_moved_leaves_the_old_date(
    config: Config, store: Store, tmp_path: Path
) -> None:
    entry = make_entry(0)
    store.save_poll("tech", [entry], {}, None)
    run_export("--out", str(tmp_path))
    moved = entry.published + timedelta(days=3)  # type: ignore[operator]
    store.save_poll("tech", [dataclasses.replace(entry, published=moved)], {}, None)
    code, output = run_export("--out", str(tmp_path))
    assert code == 0 and "1 moved to a new date" in output
    assert [p.name for p in (tmp_path / "_posts").iterdir()] == ["2024-03-04-0000000000000000.html"]


def test_every_page_of_a_tag_or_category_is_exported(
    config: Config, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "PAGE", 3)
    store.save_poll("tech", [make_entry(n) for n in range(10)], {}, None)
    store.save_poll("jingjiribao", [seed_entry()], {}, None)
    by_tag = tmp_path / "tag"
    assert run_export("--out", str(by_tag), "--tag", "python")[0] == 0
    assert len(list((by_tag / "_posts").iterdir())) == 10
    by_category = tmp_path / "category"
    assert run_export("--out", str(by_category), "--category", "jingjiribao")[0] == 0
    assert [p.name for p in (by_category / "_posts").iterdir()] == [POST]
    everything = tmp_path / "all"
    assert run_export("--out", str(everything))[0] == 0
    assert len(list((everything / "_posts").iterdir())) == 11


def test_unknown_tag_and_both_filters_are_refused(config: Config, tmp_path: Path) -> None:
    code, output = run_export("--out", str(tmp_path), "--tag", "nope")
    assert code == 1 and "no tag named 'nope'" in output
    code, output = run_export("--out", str(tmp_path), "--tag", TAG, "--category", "tech")
    assert code == 2 and "not both" in output
    assert not (tmp_path / "_posts").exists()


# --- front matter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "written"),
    [
        ([TAG], TAG),  # the seed's form
        ([TAG, "财经", "python"], f"{TAG} 财经 python"),
        (["Business News", "财经"], '["Business News", "财经"]'),  # Jekyll would split it
        (["全角\u3000空格"], '["全角\u3000空格"]'),
        (["yes"], '["yes"]'),  # a boolean, in YAML 1.1
        (["YeS", "x"], '["YeS", "x"]'),  # Psych ignores case
        (["2022"], '["2022"]'),  # a number: Jekyll would drop it
        (["2022-04-05"], '["2022-04-05"]'),  # a date
        (["0x1F"], '["0x1F"]'),
        ([":sym"], '[":sym"]'),  # a Ruby symbol for Psych
        (["#hash", "c"], '["#hash", "c"]'),  # a comment
        (["a:", "b"], '["a:", "b"]'),  # `a: b` is a mapping
        (["*star"], '["*star"]'),  # an alias
        (['say "hi"'], '["say \\"hi\\""]'),
        ([], "[]"),
    ],
)
def test_tags_are_space_separated_when_that_is_lossless(values: list[str], written: str) -> None:
    assert jekyll_words(values) == written
    assert jekyll_list(yaml.safe_load(f"tags: {written}")["tags"]) == values


labels = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: s.strip() == s and s != "")


@settings(deadline=None)  # a loaded CI machine is no failure
@given(st.lists(labels, max_size=5))
def test_any_tags_reach_jekyll_unchanged(values: list[str]) -> None:
    assert jekyll_list(yaml.safe_load(f"tags: {jekyll_words(values)}")["tags"]) == values


@settings(deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_any_title_reads_back_exactly(title: str) -> None:
    post = render_post(make_entry(1, title=title), BackLinks("//x.test", str))
    assert front_matter(post)["title"] == title


def test_title_escapes_what_yaml_double_quotes_require() -> None:
    title = 'a "quoted" \\ back\nslash\ttab\x85\u2028\ufeff\x7f\x00'
    post = render_post(make_entry(1, title=title), BackLinks("//x.test", str))
    line = post.split("\n")[2]
    assert line == 'title: "a \\"quoted\\" \\\\ back\\nslash\ttab\\N\\L\\ufeff\\x7f\\0"'
    assert front_matter(post)["title"] == title


def test_merged_story_lists_every_category_and_tag(config: Config) -> None:
    from aggregator.models import Origin

    entry = dataclasses.replace(
        seed_entry(), merged=(Origin("tech", "ffffffffffffffff", "tech", ("python", TAG)),)
    )
    matter = front_matter(render_post(entry, BackLinks.from_config(config)))
    assert matter["categories"] == "jingjiribao tech"
    assert matter["tags"] == f"{TAG} python"


# --- body and links ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        "<p>one</p>\n<p>two</p>",
        "<pre>line 1\r\nline 2\rline 3\n\nline 5</pre>",
        '<p><a href="https://x.test/" title="a\nb">x</a></p>',
        "<pre>\n\nstarts with blank lines</pre>",
    ],
)
def test_the_body_is_one_line_with_the_same_dom(html: str) -> None:
    flat = one_line_html(html)
    assert "\n" not in flat and "\r" not in flat
    normalized = html.replace("\r\n", "\n").replace("\r", "\n")

    def dom(markup: str) -> bytes:
        return lxml.html.tostring(lxml.html.fragment_fromstring(markup, create_parent="div"))

    assert dom(flat) == dom(normalized)


def test_liquid_in_a_feed_never_runs_in_jekyll() -> None:
    post = render_post(
        make_entry(1, content="<p>{{ site.secret }} {% include x.html %} {ok}</p>"),
        BackLinks("//x.test", str),
    )
    body = post.split("\n")[7]
    assert "{{" not in body and "{%" not in body
    assert body == "<p>&#123;{ site.secret }} &#123;% include x.html %} {ok}</p>"
    text = lxml.html.fragment_fromstring(body).text_content()
    assert text == "{{ site.secret }} {% include x.html %} {ok}"


def test_links_and_back_link_text_are_escaped(config: Config) -> None:
    entry = make_entry(
        1, category="a b[1]", link="https://x.test/a b<c>{{d}}", tags=("t",), source="tech"
    )
    links = BackLinks("//news.test", lambda c: "R&D <lab> [x]")
    lines = render_post(entry, links).split("\n")
    assert lines[4] == 'categories: ["a b[1]"]'
    assert lines[9] == "<https://x.test/a%20b%3Cc%3E%7B%7Bd%7D%7D>"
    assert lines[11] == (
        r"[返回R&amp;D &lt;lab&gt; \[x\]](//news.test/categories/a%20b%5B1%5D)"
        "｜[返回首页](//news.test/)"
    )


def test_an_entry_without_a_link_has_no_link_paragraph() -> None:
    post = render_post(make_entry(1, link=""), BackLinks("//x.test", str))
    assert post.split("\n")[7:] == [
        "<p>body 1</p>",
        "",
        "[返回tech](//x.test/categories/tech)｜[返回首页](//x.test/)",
    ]


def test_network_path_keeps_a_path_prefix() -> None:
    assert network_path("https://finews.withounder.com") == "//finews.withounder.com"
    assert network_path("http://example.org:8080/news/") == "//example.org:8080/news"
