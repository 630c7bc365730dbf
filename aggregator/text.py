"""Text helpers every stage may use. Pure, and importing nothing of this package."""

from __future__ import annotations

import re

# XML 1.0 §2.2 Char: no C0 controls but tab, LF, CR; no surrogates; not U+FFFE/U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: str) -> str:
    """`value` without the characters XML 1.0 forbids, so every output stays well-formed."""
    return _NOT_XML.sub("", value)
