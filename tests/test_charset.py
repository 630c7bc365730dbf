"""`aggregator.charset.to_utf8`: whatever the labels say, Chinese text comes out exactly as written,
as UTF-8 whose declaration says so. Fixture bytes are built here, one case per way sources get
their labels wrong."""

from __future__ import annotations

import codecs

import pytest

from aggregator.charset import codecs_for, declared_encoding, http_charset, to_utf8

# 镕 and 堃 are GBK but not GB2312: a gb2312 label read literally fails on them.
GB_TITLES = ["朱镕基会见外宾", "王堃获得国家科技奖", "一季度城镇新增就业稳步增长"]
# 碁 is at 0xF9D6, an ETEN extension: cp950 has it, strict Big5 does not.
TW_TITLES = ["臺灣經濟穩定成長", "碁盤與圍棋文化", "外貿出口保持韌性"]
# 嘅 and 喺 exist only in Big5-HKSCS.
HK_TITLES = ["香港嘅經濟數據", "佢喺度等緊你"]


def rss(titles: list[str], declared: str | None = None, channel: str = "财经频道") -> str:
    encoding = f' encoding="{declared}"' if declared else ""
    items = "".join(
        f"<item><title>{t}</title><link>https://finews.example.cn/{i}</link>"
        f"<description>&lt;p&gt;{t}。&lt;/p&gt;</description></item>"
        for i, t in enumerate(titles)
    )
    return (
        f'<?xml version="1.0"{encoding}?>\n<rss version="2.0"><channel><title>{channel}</title>'
        f"<link>https://finews.example.cn/</link>{items}</channel></rss>"
    )


def decoded_text(body: bytes, content_type: str = "") -> str:
    return to_utf8(body, content_type).data.decode("utf-8")


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "source"),
    [
        # GBK declared gb2312: the label is read as its superset GB18030 (WHATWG §10.1)
        (rss(GB_TITLES, "gb2312").encode("gbk"), "application/rss+xml", "gb18030", "declaration"),
        # GBK declared utf-8: the label fails strictly, charset-normalizer decides
        (rss(GB_TITLES, "utf-8").encode("gbk"), "application/rss+xml", "gb18030", "detected"),
        # GBK with no declaration and no HTTP charset
        (rss(GB_TITLES).encode("gbk"), "application/xml", "gb18030", "detected"),
        (rss(GB_TITLES).encode("gbk"), "", "gb18030", "detected"),
        # HTTP says utf-8, the declaration says gbk, the bytes are GBK
        (rss(GB_TITLES, "gbk").encode("gbk"), "text/xml; charset=utf-8", "gb18030", "declaration"),
        # HTTP says gbk, the bytes are UTF-8 (declared or not): valid UTF-8 wins
        (rss(GB_TITLES, "utf-8").encode(), "text/xml; charset=gbk", "utf-8", "utf-8"),
        (rss(GB_TITLES, "gbk").encode(), "text/xml; charset=gbk", "utf-8", "utf-8"),
        # a server default of ISO-8859-1 decodes anything, so proves nothing: gbk is tried first
        (
            rss(GB_TITLES, "gbk").encode("gbk"),
            "text/xml; charset=ISO-8859-1",
            "gb18030",
            "declaration",
        ),
        # GB18030's four-byte sequences (㗎 is in no two-byte table)
        (rss([*GB_TITLES, "㗎字"], "gb2312").encode("gb18030"), "", "gb18030", "declaration"),
    ],
    ids=[
        "gbk-declared-gb2312",
        "gbk-declared-utf8",
        "gbk-undeclared",
        "gbk-undeclared-no-header",
        "http-utf8-declared-gbk",
        "http-gbk-bytes-utf8",
        "http-gbk-declared-gbk-bytes-utf8",
        "http-latin1-declared-gbk",
        "gb18030-four-byte",
    ],
)
def test_simplified_chinese_read_right(
    body: bytes, content_type: str, encoding: str, source: str
) -> None:
    result = to_utf8(body, content_type)
    assert (result.encoding, result.source, result.lossy) == (encoding, source, False)
    text = result.data.decode("utf-8")
    assert "<title>财经频道</title>" in text
    for title in GB_TITLES:
        assert f"<title>{title}</title>" in text
    assert "\ufffd" not in text


@pytest.mark.parametrize(
    ("titles", "codec", "declared", "encoding", "source"),
    [
        (TW_TITLES, "cp950", "big5", "cp950", "declaration"),
        (TW_TITLES, "cp950", "Big5", "cp950", "declaration"),
        (HK_TITLES, "big5hkscs", "big5", "big5hkscs", "declaration"),
        (HK_TITLES, "big5hkscs", "big5-hkscs", "big5hkscs", "declaration"),
        (TW_TITLES, "cp950", None, None, "detected"),
    ],
    ids=["big5", "big5-label-case", "hkscs-labelled-big5", "hkscs", "big5-undeclared"],
)
def test_traditional_chinese_read_right(
    titles: list[str], codec: str, declared: str | None, encoding: str | None, source: str
) -> None:
    result = to_utf8(rss(titles, declared, "財經頻道").encode(codec), "text/xml")
    assert result.source == source
    assert result.encoding in ((encoding,) if encoding else ("cp950", "big5hkscs"))
    text = result.data.decode("utf-8")
    assert "<title>財經頻道</title>" in text
    for title in titles:
        assert f"<title>{title}</title>" in text


def test_declaration_rewritten_to_utf8() -> None:
    body = "\n\n<?xml version='1.0' encoding='GB2312' standalone='yes'?>\n<rss/>".encode("gbk")
    assert (
        decoded_text(body) == """<?xml version='1.0' encoding="utf-8" standalone='yes'?>\n<rss/>"""
    )


@pytest.mark.parametrize(
    ("prefix", "codec"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (b"", "utf-16-le"),  # no BOM: XML 1.0 Appendix F, "<?" as 3C 00 3F 00
        (b"", "utf-16-be"),
    ],
)
def test_bom_and_appendix_f_win_over_labels(prefix: bytes, codec: str) -> None:
    body = prefix + rss(GB_TITLES, "gbk").encode(codec)
    result = to_utf8(body, "text/xml; charset=gbk")
    assert (result.encoding, result.source) == (codec, "bom")
    text = result.data.decode("utf-8")
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    assert "<title>朱镕基会见外宾</title>" in text


def test_ascii_is_passed_through_as_utf8() -> None:
    body = b'<?xml version="1.0" encoding="iso-8859-1"?><rss><channel/></rss>'
    result = to_utf8(body, "text/xml; charset=gbk")
    assert (result.encoding, result.source) == ("utf-8", "utf-8")
    assert result.data == body.replace(b"iso-8859-1", b"utf-8")


def test_latin1_label_means_windows_1252() -> None:
    """WHATWG Encoding §4.2: what servers call ISO-8859-1 is windows-1252 (curly quotes at 0x93)."""
    body = '<?xml version="1.0" encoding="iso-8859-1"?><rss><title>“Café”</title></rss>'
    result = to_utf8(body.encode("cp1252"))
    assert result.encoding == "cp1252"
    assert "<title>“Café”</title>" in result.data.decode("utf-8")


def test_undecodable_bytes_become_replacement_characters_not_a_failure() -> None:
    # GBK with one lone lead byte in the middle: no encoding decodes it strictly.
    good = rss(GB_TITLES, "gbk").encode("gbk")
    cut = good.index("王堃".encode("gbk"))
    body = good[:cut] + b"\x81<" + good[cut:]
    result = to_utf8(body)
    assert result.lossy
    assert result.encoding == "gb18030"
    text = result.data.decode("utf-8")
    assert "\ufffd" in text
    assert "<title>朱镕基会见外宾</title>" in text


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("text/xml; charset=GBK", "gbk"),
        ('application/rss+xml;charset="gb2312"', "gb2312"),
        ("text/xml; Charset = 'big5' ; q=1", "big5"),
        ("application/xml", ""),
        ("", ""),
    ],
)
def test_http_charset(content_type: str, charset: str) -> None:
    assert http_charset(content_type) == charset


def test_declared_encoding() -> None:
    assert declared_encoding(b'\n<?xml version="1.0" encoding="GB2312"?><rss/>') == "gb2312"
    assert declared_encoding(b"<?xml version='1.0' encoding='big5'?>") == "big5"
    assert declared_encoding(b'<?xml version="1.0"?><rss encoding="gbk"/>') == ""
    assert declared_encoding(b"<rss/>") == ""


@pytest.mark.parametrize(
    ("label", "tried"),
    [
        ("gb2312", ("gb18030",)),
        ("GBK", ("gb18030",)),
        ("x-gbk", ("gb18030",)),
        ("cp936", ("gb18030",)),
        ("euc-cn", ("gb18030",)),
        ("gb18030", ("gb18030",)),
        ("big5", ("cp950", "big5hkscs")),
        ("x-x-big5", ("cp950", "big5hkscs")),
        ("big5-hkscs", ("big5hkscs", "cp950")),
        ("us-ascii", ("cp1252", "iso8859-1")),
        ("UTF-8", ("utf-8",)),
        ("shift_jis", ("shift_jis",)),
        ("no-such-charset", ()),
        ("", ()),
    ],
)
def test_codecs_for(label: str, tried: tuple[str, ...]) -> None:
    assert codecs_for(label) == tried


def test_utf8_with_a_bad_byte_stays_utf8_whatever_the_label() -> None:
    """GB18030 decodes much UTF-8 "successfully"; one corrupt byte must not hand it the feed."""
    good = rss(GB_TITLES * 4, "gbk").encode("utf-8")
    cut = good.index("王堃".encode())
    body = good[:cut] + b"\xff" + good[cut:]
    result = to_utf8(body, "text/xml; charset=gbk")
    assert (result.encoding, result.source, result.lossy) == ("utf-8", "utf-8", True)
    text = result.data.decode("utf-8")
    assert text.count("\ufffd") == 1
    for title in GB_TITLES:
        assert f"<title>{title}</title>" in text
