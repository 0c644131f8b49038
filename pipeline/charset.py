"""Declared against detected text encodings: bytes that are UTF-8 in fact are read as UTF-8."""

from __future__ import annotations

import re

NON_ASCII = re.compile(r"[^\x00-\x7f]")
REPLACEMENT = "\ufffd"
# how many valid multi-byte characters each invalid byte sequence needs before the bytes count as UTF-8 with a
# few damaged spots (legacy text, read as UTF-8, is invalid at nearly every non-ASCII byte)
VALID_PER_INVALID = 2


def utf8_text(data: bytes) -> str | None:
    """`data` decoded as UTF-8 when it is UTF-8 in fact, whatever it declares: valid throughout, or valid
    with a few damaged sequences (each becomes U+FFFD, never mojibake). None when the bytes are not UTF-8
    (legacy text: let the declared charset or a detector decide)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    invalid = text.count(REPLACEMENT) - data.count(REPLACEMENT.encode())
    valid = len(NON_ASCII.findall(text)) - text.count(REPLACEMENT)
    return text if valid >= VALID_PER_INVALID * invalid else None
