"""Charset: the bytes of an XML feed → the same document as UTF-8, whatever its labels said.

Chinese sources often label their bytes wrongly: GBK declared as gb2312 (which lacks 镕 and 堃),
GBK declared as utf-8 or not declared at all, an HTTP charset that contradicts the XML
declaration. feedparser trusts the labels in RFC 3023 order and, when they fail, decodes with the
next one that "works", which can turn UTF-8 into mojibake. So the real encoding is decided here,
before feedparser runs, and feedparser is handed UTF-8 that says it is UTF-8.

How the encoding is decided, first match wins:
1. A byte order mark, or the UTF-16/32 patterns of XML 1.0 Appendix F: authoritative.
2. Bytes that are valid UTF-8 and not all ASCII are UTF-8, whatever the labels say (see
   `_decide` for why).
3. The HTTP charset, then the XML declaration: the first whose strict decode succeeds. Labels
   are read as the superset that real encoders produce (gb2312 and gbk as GB18030, big5 as
   cp950 then Big5-HKSCS: WHATWG Encoding Standard §4.2, §10, §11), and multi-byte labels are
   tried before single-byte ones, which decode any bytes and so prove nothing.
4. A label that nearly decodes (at most 1 bad byte in 100 non-ASCII ones; the same test is
   applied to UTF-8 before the labels): a few corrupted bytes become U+FFFD, not the whole
   document mojibake. `Decoded.lossy` says so.
5. charset-normalizer's best guess, read through the same supersets.
6. Else the first guess or label (or UTF-8) with undecodable bytes replaced by U+FFFD.

Does not parse XML, strip DOCTYPEs (that is `parse`) or read JSON (RFC 8259 §8.1: JSON is
UTF-8). Pure functions, no I/O.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

import charset_normalizer

# Labels Python does not know, from the WHATWG Encoding Standard's label table (§4.2).
_ALIASES = {
    "x-gbk": "gbk",
    "windows-936": "gbk",
    "x-euc-cn": "gb2312",
    "csgb2312": "gb2312",
    "x-x-big5": "big5",
    "cn-big5": "big5",
}

# What bytes labelled with the key really are, in the order to try them.
_SUPERSETS: dict[str, tuple[str, ...]] = {
    # WHATWG Encoding Standard §10.1: the gb2312 and gbk labels are decoded by the gb18030
    # decoder. GB18030 agrees with GBK on every byte pair GBK defines and adds the rest.
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    # cp950 is Big5 as Windows (and so most Taiwanese sites) writes it, with the ETEN
    # extensions (碁, 銹, 裏 at 0xF9D6…); Big5-HKSCS adds Hong Kong characters (喺, 嘅). The two
    # disagree only on 0xC6A1–0xC8FE (kana in cp950, relocated by HKSCS), so a document that
    # decodes as cp950 is read as cp950 and one that needs HKSCS characters as Big5-HKSCS.
    "big5": ("cp950", "big5hkscs"),
    "cp950": ("cp950", "big5hkscs"),
    "big5hkscs": ("big5hkscs", "cp950"),
    # WHATWG Encoding Standard §4.2: us-ascii and iso-8859-1 labels mean windows-1252, which
    # is what servers that say "ISO-8859-1" send; latin-1 for the 5 bytes cp1252 leaves out.
    "ascii": ("cp1252", "iso8859-1"),
    "iso8859-1": ("cp1252", "iso8859-1"),
}

# Encodings of Chinese text: a document in one of these is Chinese (parse uses this for the
# default time zone).
_SEVEN_BIT = frozenset({"hz", "utf-7"})

CHINESE_ENCODINGS = frozenset({"gb18030", "gbk", "gb2312", "cp950", "big5", "big5hkscs", "hz"})

# XML 1.0 Appendix F: byte order marks, longest first (UTF-32 LE starts like UTF-16 LE).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# ...and how `<?` looks in UTF-16/32 with no BOM.
_SNIFF = (
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
)

_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_DECLARED = re.compile(rb"""\A\s*<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z][\w.:-]*)["']""")
_XML_DECL = re.compile(r"\A\s*(<\?xml\s[^>]*?\?>)")
_ENCODING_ATTR = re.compile(r"""(\sencoding\s*=\s*)(["'])[^"']*\2""")


@dataclass(frozen=True, slots=True)
class Decoded:
    """A document as UTF-8: no BOM, and its XML declaration (if any) says utf-8."""

    data: bytes
    encoding: str  # the Python codec the original bytes were read with
    source: str  # what decided it: bom, utf-8, http, declaration, detected, fallback
    lossy: bool = False  # some bytes could not be decoded and became U+FFFD


def http_charset(content_type: str) -> str:
    """The charset parameter of a Content-Type header, or ""."""
    match = _CHARSET_PARAM.search(content_type or "")
    return match.group(1).strip().lower() if match else ""


def declared_encoding(body: bytes) -> str:
    """The encoding named by the XML declaration of ASCII-compatible bytes, or ""."""
    match = _DECLARED.match(body[:1024])
    return match.group(1).decode("ascii").lower() if match else ""


def codecs_for(label: str) -> tuple[str, ...]:
    """The Python codecs to try, in order, for bytes labelled `label`; () if unknown."""
    label = (label or "").strip().lower()
    if not label:
        return ()
    try:
        name = codecs.lookup(_ALIASES.get(label, label)).name
    except LookupError:
        return ()
    return _SUPERSETS.get(name, (name,))


@lru_cache(maxsize=64)
def _single_byte(codec: str) -> bool:
    """A codec that maps every byte to one character decodes anything: its success is no
    evidence. (UTF-8 would pass this test by one U+FFFD per byte, so it is excluded.)"""
    if codec.startswith("utf"):
        return False
    return len(bytes(range(0x80, 0x100)).decode(codec, "replace")) == 0x80


def _strict(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def to_utf8(body: bytes, content_type: str = "") -> Decoded:
    """Decide what `body` is really encoded in and return it as UTF-8 (see the module doc)."""
    text, encoding, source, lossy = _decide(body, content_type)
    return Decoded(_rewrite_declaration(text).encode("utf-8"), encoding, source, lossy)


def _decide(body: bytes, content_type: str) -> tuple[str, str, str, bool]:
    for bom, codec in _BOMS:
        if body.startswith(bom):
            rest = body[len(bom) :]
            text = _strict(rest, codec)
            if text is not None:
                return text, codec, "bom", False
            return rest.decode(codec, "replace"), codec, "bom", True
    for pattern, codec in _SNIFF:
        if body.startswith(pattern):
            text = _strict(body, codec)
            if text is not None:
                return text, codec, "bom", False
    labelled: list[tuple[str, str]] = []
    for source, label in (
        ("http", http_charset(content_type)),
        ("declaration", declared_encoding(body)),
    ):
        for codec in codecs_for(label):
            if all(codec != seen for seen, _ in labelled):
                labelled.append((codec, source))
    if body.isascii():
        # The same text in every ASCII-compatible encoding; only a 7-bit one (HZ, ISO-2022)
        # reads it differently, and only when a label names it.
        for codec, source in labelled:
            if codec in _SEVEN_BIT or codec.startswith("iso2022"):
                text = _strict(body, codec)
                if text is not None:
                    return text, codec, source, False
        return body.decode("ascii"), "utf-8", "utf-8", False
    # Valid UTF-8 with non-ASCII bytes is UTF-8, whatever the labels say. Text in GBK, Big5 or
    # Latin-1 almost never forms valid UTF-8 by chance (each byte >= 0x80 must fit UTF-8's
    # exact lead/continuation pattern), while UTF-8 Chinese often decodes "successfully" as
    # GB18030 or Big5 into mojibake: so the one test that proves something comes first.
    # UTF-16 without a BOM is the exception: its ASCII is valid UTF-8 too, with NULs.
    if b"\x00" not in body:
        text = _strict(body, "utf-8")
        if text is not None:
            return text, "utf-8", "utf-8", False
    # A few bad bytes (a truncated character, a corrupted copy) must not turn the whole
    # document into mojibake, so "nearly decodes" counts too: at most 1 error per 100
    # non-ASCII bytes. Legacy text read as UTF-8 fails on nearly every character, far above.
    tolerance = (len(body) - _ascii_count(body)) // 100
    if b"\x00" not in body:
        nearly = _nearly(body, "utf-8", tolerance)
        if nearly is not None:
            return nearly, "utf-8", "utf-8", True
    labelled.sort(key=lambda pair: _single_byte(pair[0]))  # stable: label order kept within
    for codec, source in labelled:
        text = _strict(body, codec)
        if text is not None:
            return text, codec, source, False
    # The labels nearly right (multi-byte ones only: a single-byte codec has no errors to count).
    best: tuple[int, str, str, str] | None = None
    for codec, source in labelled:
        if not _single_byte(codec):
            text = _nearly(body, codec, tolerance)
            if text is not None and (best is None or text.count("\ufffd") < best[0]):
                best = (text.count("\ufffd"), text, codec, source)
    if best is not None:
        return best[1], best[2], best[3], True
    # charset-normalizer drops every encoding that does not decode the whole document, so
    # with no label (or only wrong ones) a corrupted document may come back as a single-byte
    # guess; that is the case left to the fallback below.
    guess = charset_normalizer.from_bytes(body).best()
    guessed = codecs_for(guess.encoding) if guess is not None else ()
    for codec in guessed:
        text = _strict(body, codec)
        if text is not None:
            return text, codec, "detected", False
    codec = (guessed or tuple(c for c, _ in labelled) or ("utf-8",))[0]
    return body.decode(codec, "replace"), codec, "fallback", True


def _ascii_count(body: bytes) -> int:
    return len(body) - len(body.translate(None, bytes(range(0x80))))


def _nearly(body: bytes, codec: str, tolerance: int) -> str | None:
    """`body` decoded with at most `tolerance` bytes replaced by U+FFFD, else None."""
    if tolerance <= 0:
        return None
    try:
        text = body.decode(codec, "replace")
    except LookupError:
        return None
    return text if text.count("\ufffd") <= tolerance else None


def _rewrite_declaration(text: str) -> str:
    """Make the XML declaration say utf-8, and drop whitespace before it (XML 1.0 §2.8 wants
    it first; PHP feeds often start with a blank line, which sends feedparser to its loose
    parser)."""
    match = _XML_DECL.match(text)
    if match is None:
        return text
    declaration = _ENCODING_ATTR.sub(r'\g<1>"utf-8"', match.group(1))
    return declaration + text[match.end() :]
