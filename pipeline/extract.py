"""HTML page to article body and metadata, with trafilatura."""

from __future__ import annotations

import codecs
import logging
import re
from urllib.parse import urljoin, urlsplit

import trafilatura
from lxml import etree
from lxml.html import HtmlElement
from trafilatura.settings import Document
from trafilatura.xml import xmltotxt

from pipeline.charset import utf8_text
from pipeline.models import Extraction

LOGGER = logging.getLogger(__name__)

# Bump the suffix whenever an option or a post-processing step below changes, so stored rows can be
# re-extracted selectively.
EXTRACTOR_VERSION = f"trafilatura-{trafilatura.__version__}+precision-fast-retry.4"

MIN_WORDS = 20
MAX_HTML_BYTES = 20_000_000
VISIBLE_TEXT = etree.XPath("//body//text()[not(ancestor::script or ancestor::style or ancestor::noscript)]")
# Options of the main pass, chosen on the Article Extraction Benchmark (see bench/aeb.py).
EXTRACT_OPTIONS = {"include_comments": False, "include_tables": True, "favor_precision": True, "fast": True}
# htmldate without its page-wide text search, whose last resort turns a "© 2024" footer into
# 2024-01-01: a published date we would be inventing.
DATE_PARAMS = {"extensive_search": False, "original_date": True}
# Precision mode sometimes keeps only a stub of the article (a reprint notice, a teaser). When its
# text is short and covers little of the page, a balanced pass is tried and kept if clearly longer:
# the same gate trafilatura applies to its own balanced mode before escalating to recall.
RETRY_MAX_CHARS = 3000
RETRY_PAGE_SHARE = 0.2
RETRY_ACCEPT_RATIO = 1.5
# How far into the document a charset declaration is looked for (the HTML spec says 1024 bytes;
# real pages put long scripts first).
CHARSET_PRESCAN_BYTES = 4096
# Control bytes that never occur in text (WHATWG MIME sniffing "binary data bytes"). A NUL, or more
# than 1% of them at the start, means binary content; a few strays in a real page are tolerated.
BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
BINARY_SNIFF_BYTES = 1024
BINARY_MAX_SHARE = 0.01
BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
META_CHARSET_RE = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_:.()-]+)|<\?xml[^>]+encoding\s*=\s*["']([a-z0-9_:.()-]+)""",
    re.IGNORECASE,
)
CONTENT_TYPE_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?\s*([a-z0-9_:.()-]+)", re.IGNORECASE)
# Browsers read these labels as windows-1252 (WHATWG Encoding Standard); Python's latin-1 would turn
# curly quotes and dashes into control characters.
WINDOWS_1252_LABELS = frozenset(
    {
        "ascii",
        "us-ascii",
        "iso-8859-1",
        "iso8859-1",
        "iso_8859-1",
        "latin1",
        "latin-1",
        "l1",
        "cp819",
        "ibm819",
    }
)
# A "word": a run of letters/digits, or one CJK character (those scripts do not separate words).
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD_RE = re.compile(rf"[{CJK}]|[^\W{CJK}]+")
LANGUAGE_RE = re.compile(r"[a-z]{2,3}")
AUTHOR_PREFIX_RE = re.compile(r"^by\b\s*:?\s*", re.IGNORECASE)
AUTHOR_ROLES = frozenset(
    {
        "staff",
        "staff writer",
        "staff reporter",
        "reporter",
        "correspondent",
        "contributor",
        "editor",
        "columnist",
    }
)
EDGE_PUNCTUATION = " \t\r\n,;:|/-–—.·•"


def extract(
    html: bytes | str, url: str | None = None, *, min_words: int = MIN_WORDS, content_type: str | None = None
) -> Extraction:
    """Extract the article body and metadata of one page; bad input becomes an `error`, never an exception.

    The body is plain text: blocks (paragraphs, headings, lists, quotes, tables) are separated by a
    blank line ("\\n\\n"); a single "\\n" is a line break inside a block (list items, table rows, <br>).
    `content_type` is the HTTP Content-Type header, whose charset outranks the page's own declaration.
    """
    if isinstance(html, bytearray | memoryview):
        html = bytes(html)
    if not isinstance(html, bytes | str):
        return Extraction(body="", error=f"unsupported input type: {type(html).__name__}")
    if not html.strip():
        return Extraction(body="", error="empty document")
    if len(html) > MAX_HTML_BYTES:
        unit = "bytes" if isinstance(html, bytes) else "characters"
        return Extraction(body="", error=f"document too large: {len(html)} {unit} (maximum {MAX_HTML_BYTES})")
    try:
        return _extract(html, url, min_words, content_type)
    except Exception as err:  # a parser failure is this page's recorded outcome; there is no I/O to hide
        LOGGER.warning("extraction failed for %s: %s: %s", url, type(err).__name__, err)
        return Extraction(body="", error=f"extraction failed: {type(err).__name__}: {err}")


def _extract(html: bytes | str, url: str | None, min_words: int, content_type: str | None) -> Extraction:
    """Parse once, then body and metadata from that tree."""
    if isinstance(html, bytes):
        if sniffs_binary(html):
            return Extraction(body="", error="not an HTML document: binary content")
        text = decode_html(html, content_type)
    else:
        text = html.removeprefix("\ufeff")
    tree = trafilatura.load_html(text)
    if tree is None:
        return Extraction(body="", error="not an HTML document")
    root = tree.getroottree().getroot()
    language, declared_url = page_language(root), canonical_url(root, url)

    document = trafilatura.bare_extraction(
        tree, url=url, with_metadata=True, date_extraction_params=DATE_PARAMS, **EXTRACT_OPTIONS
    )
    body_document = document
    length = len(document.text) if document else 0
    if length < RETRY_MAX_CHARS and length < RETRY_PAGE_SHARE * visible_text_length(tree):
        retry = trafilatura.bare_extraction(
            tree,
            url=url,
            with_metadata=document is None,
            date_extraction_params=DATE_PARAMS,
            include_comments=False,
            include_tables=True,
        )
        if retry and len(retry.text) > RETRY_ACCEPT_RATIO * length:
            LOGGER.debug("precision pass kept %d chars, balanced pass %d: %s", length, len(retry.text), url)
            body_document = retry
            document = document or retry
    if document is None:
        document = trafilatura.extract_metadata(tree, default_url=url, date_config=DATE_PARAMS)

    fields = {
        "title": _clean(document.title),
        "author": normalize_author(document.author),
        "published": _clean(document.date),
        "sitename": _clean(document.sitename),
        "language": language,
        "canonical_url": declared_url,
        "description": _clean(document.description),
    }
    if body_document is None:
        return Extraction(body="", error="no article text found", **fields)
    body = body_text(body_document, fields["title"])
    words = count_words(body)
    if words == 0:
        return Extraction(body="", error="no article text found", **fields)
    if words < min_words:
        return Extraction(body="", error=f"body too short: {words} words (minimum {min_words})", **fields)
    return Extraction(body=body, **fields)


def visible_text_length(tree: HtmlElement) -> int:
    """Characters of text in the page body outside scripts and styles (a cheap stand-in for html2txt)."""
    return sum(len(text.strip()) for text in VISIBLE_TEXT(tree))


def sniffs_binary(data: bytes) -> bool:
    """True when the start holds NUL or many control bytes that no text has and no UTF-16/32 BOM explains."""
    if any(data.startswith(bom) for bom, _ in BOMS):
        return False
    sample = data[:BINARY_SNIFF_BYTES]
    return b"\x00" in sample or len(BINARY_BYTES.findall(sample)) > BINARY_MAX_SHARE * len(sample)


def decode_html(data: bytes, content_type: str | None = None) -> str | bytes:
    """Decode by BOM, valid UTF-8, then the declared charset; bytes back when trafilatura must guess.

    Valid multi-byte UTF-8 wins over a declared legacy charset: legacy text is practically never
    valid UTF-8, whereas pages mislabelled as iso-8859-1 are common. So does UTF-8 with a few invalid
    bytes: guessing a legacy charset for it would turn every accented letter into mojibake.
    """
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    text = utf8_text(data)  # UTF-8 in fact, perhaps with a few damaged bytes (each becomes U+FFFD)
    if text is not None:
        return text
    for label in (_header_charset(content_type), _declared_charset(data)):
        encoding = _python_codec(label)
        if encoding is None:
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            LOGGER.debug("declared charset %s does not decode the page", label)
    return data


def _header_charset(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type header."""
    match = CONTENT_TYPE_CHARSET_RE.search(content_type or "")
    return match.group(1) if match else None


def _declared_charset(data: bytes) -> str | None:
    """The charset a <meta> tag or XML declaration announces near the start of the page."""
    match = META_CHARSET_RE.search(data[:CHARSET_PRESCAN_BYTES])
    if not match:
        return None
    return (match.group(1) or match.group(2)).decode("ascii", errors="ignore")


def _python_codec(label: str | None) -> str | None:
    """Python codec for a charset label, following browsers for the latin-1 family; None if unusable."""
    if not label:
        return None
    label = label.strip().lower()
    if label in WINDOWS_1252_LABELS:
        return "cp1252"
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    # A UTF-16/32 declaration in a page without BOM is not to be believed (the page already failed UTF-8).
    return None if name.startswith(("utf-16", "utf-32", "utf-8")) else name


def body_text(document: Document, title: str | None) -> str:
    """The extracted blocks as text separated by blank lines, minus a leading repeat of the title."""
    blocks = [text for child in document.body if (text := xmltotxt(child, False).strip())]
    if blocks and title and _comparable(blocks[0]) == _comparable(title):
        blocks = blocks[1:]
    return "\n\n".join(blocks).replace("\x00", "")  # PostgreSQL text cannot hold NUL


def count_words(text: str) -> int:
    """Words in a text, counting each CJK character as one."""
    return len(WORD_RE.findall(text))


def canonical_url(root: HtmlElement, url: str | None) -> str | None:
    """The page's declared URL: <link rel=canonical> else og:url, made absolute against <base> and `url`."""
    base = url or ""
    base_href = next((b.get("href") for b in root.iter("base") if b.get("href")), None)
    if base_href:
        base = urljoin(base, base_href.strip())
    candidates = [
        link.get("href")
        for link in root.iter("link")
        if "canonical" in (link.get("rel") or "").lower().split()
    ]
    candidates += [
        meta.get("content")
        for meta in root.iter("meta")
        if (meta.get("property") or meta.get("name") or "").strip().lower() == "og:url"
    ]
    for href in candidates:
        href = (href or "").strip()
        if not href:
            continue
        absolute = urljoin(base, href)
        parts = urlsplit(absolute)
        if parts.scheme in ("http", "https") and parts.netloc:
            return absolute
        LOGGER.debug("ignoring declared URL %r of %s: not absolute http(s)", href, url)
    return None


def page_language(root: HtmlElement) -> str | None:
    """Primary language subtag (ISO 639) from <html lang>, a content-language meta, else og:locale."""
    declared = [root.get("lang"), root.get("xml:lang")]
    for meta in root.iter("meta"):
        key = (meta.get("http-equiv") or meta.get("property") or meta.get("name") or "").strip().lower()
        if key in ("content-language", "og:locale", "language"):
            declared.append(meta.get("content"))
    for value in declared:
        primary = re.split(r"[-_,;\s]", (value or "").strip().lower(), maxsplit=1)[0]
        if LANGUAGE_RE.fullmatch(primary):
            return primary
    return None


def normalize_author(author: str | None) -> str | None:
    """Authors as trafilatura found them, "; "-separated, without "By", role labels or stray punctuation."""
    if not author:
        return None
    names: list[str] = []
    for part in author.replace("\x00", "").split(";"):
        name = " ".join(AUTHOR_PREFIX_RE.sub("", part.strip()).split()).strip(EDGE_PUNCTUATION)
        if name and name.lower() not in AUTHOR_ROLES and name not in names:
            names.append(name)
    return "; ".join(names) or None


def _clean(value: str | None) -> str | None:
    """Whitespace-collapsed text without NUL (which PostgreSQL refuses), None when empty."""
    if value is None:
        return None
    return " ".join(str(value).replace("\x00", "").split()) or None


def _comparable(text: str) -> str:
    """Text folded for a loose equality test (case, spacing and edge punctuation ignored)."""
    return " ".join(text.casefold().split()).strip(EDGE_PUNCTUATION + "\"'“”‘’«»")
