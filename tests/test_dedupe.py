"""Canonical URLs and content hashes."""

from __future__ import annotations

import pytest

from pipeline.dedupe import canonical_url, choose_canonical, content_hash, same_site


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://News.Example.COM/World/Story.html", "http://news.example.com/World/Story.html"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com/a#comments", "https://example.com/a"),
        ("https://example.com/a?utm_source=rss&utm_medium=feed&id=7", "https://example.com/a?id=7"),
        ("https://example.com/a?fbclid=XYZ&gclid=1&page=2", "https://example.com/a?page=2"),
        ("https://example.com/a?b=2&a=1", "https://example.com/a?b=2&a=1"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/caf%C3%A9", "https://example.com/caf%C3%A9"),
        ("https://example.com/a?ref=rss", "https://example.com/a"),
    ],
)
def test_canonical_url_normalises_case_ports_fragments_and_tracking(raw: str, expected: str) -> None:
    assert canonical_url(raw) == expected


def test_same_site_ignores_www_and_scheme_but_not_host_or_port() -> None:
    assert same_site("https://www.example.com/a", "http://example.com/b")
    assert not same_site("https://example.com/a", "https://evil.example.net/a")
    assert not same_site("http://127.0.0.1:8000/a", "http://127.0.0.1:9000/a")


def test_declared_canonical_on_the_same_site_wins() -> None:
    page = "https://news.example.com/amp/story-1?utm_source=rss"
    assert choose_canonical(page, "https://news.example.com/world/story-1") == "https://news.example.com/world/story-1"


def test_declared_canonical_on_another_site_or_relative_is_ignored() -> None:
    page = "https://news.example.com/story-1?utm_campaign=x"
    assert choose_canonical(page, "https://aggregator.example.org/story-1") == "https://news.example.com/story-1"
    assert choose_canonical(page, "/story-1") == "https://news.example.com/story-1"
    assert choose_canonical(page, None) == "https://news.example.com/story-1"


def test_content_hash_ignores_whitespace_layout_but_not_words() -> None:
    assert content_hash("One  two\n\nthree") == content_hash(" One two three ")
    assert content_hash("One two three") != content_hash("One two four")
    assert content_hash("Cafe\u0301") == content_hash("Caf\u00e9")
