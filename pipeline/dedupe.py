"""Dedup keys: canonical URLs and exact content hashes (near-duplicate signatures: pipeline/neardup.py)."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

LOGGER = logging.getLogger(__name__)

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid", "mc_cid", "mc_eid",
    "_ga", "_gl", "ref", "ref_src", "cmpid", "ocid", "smid", "sr_share", "spm", "mkt_tok", "ito",
})
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "hsa_", "__hs")
DEFAULT_PORTS = {"http": 80, "https": 443}
_WHITESPACE = re.compile(r"\s+")


def canonical_url(url: str) -> str:
    """Normalise a URL: lower-case scheme and host, no default port, fragment or tracking parameters.

    Path case and the order of the remaining query parameters are kept: both can be meaningful to the server.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host
    if parts.port and parts.port != DEFAULT_PORTS.get(scheme):
        netloc = f"{host}:{parts.port}"
    path = quote(unquote(parts.path), safe="/:@!$&'()*+,;=-._~%") or "/"
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key.lower() not in TRACKING_PARAMS and not key.lower().startswith(TRACKING_PREFIXES)
    ]
    return urlunsplit((scheme, netloc, path, urlencode(query, doseq=True), ""))


def same_site(first: str, second: str) -> bool:
    """Whether two URLs belong to the same site: same host, ignoring a leading 'www.' and the scheme."""
    def site(url: str) -> tuple[str, int | None]:
        parts = urlsplit(url)
        host = (parts.hostname or "").removeprefix("www.")
        return host, parts.port if parts.port != DEFAULT_PORTS.get(parts.scheme.lower()) else None

    return site(first) == site(second)


def choose_canonical(page_url: str, declared: str | None) -> str:
    """The article's canonical URL: the page's declared canonical (rel=canonical or og:url) when it is an
    absolute http(s) URL on the same site as the page, else the page URL itself, normalised either way."""
    if declared:
        declared = declared.strip()
        if declared.lower().startswith(("http://", "https://")) and same_site(declared, page_url):
            return canonical_url(declared)
        LOGGER.debug("ignoring declared canonical %s for %s (other site or not absolute)", declared, page_url)
    return canonical_url(page_url)


def normalise_body(body: str) -> str:
    """Text as compared for exact duplicates: Unicode NFC, whitespace runs folded to one space."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", body)).strip()


def content_hash(body: str) -> str:
    """SHA-256 of the normalised body: equal for the same text whatever its markup or spacing."""
    return hashlib.sha256(normalise_body(body).encode("utf-8")).hexdigest()


def word_count(body: str) -> int:
    return len(body.split())
