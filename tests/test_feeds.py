"""Feed parsing on bytes we wrote, OPML import, and the interval rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.feeds import OpmlError, in_window, parse_feed, parse_opml
from pipeline.models import FeedEntry

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel><title>Harbour Wire</title><link>https://wire.example/</link>
<item><title>Coal ships seized</title><link>/world/coal-ships?utm_source=rss</link>
  <guid isPermaLink="false">hw-101</guid><pubDate>Tue, 03 Nov 2026 08:15:00 +0900</pubDate>
  <dc:creator>Mina Park</dc:creator><description>Summary</description></item>
<item><title>No link here</title><guid isPermaLink="false">hw-102</guid></item>
<item><title>Undated</title><link>https://wire.example/world/undated</link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Pacific Ledger</title><id>urn:pl</id>
<updated>2026-11-04T10:00:00Z</updated>
<entry><title>Tariff talks resume</title><id>urn:pl:1</id>
  <link rel="alternate" href="https://ledger.example/biz/tariffs"/>
  <published>2026-11-04T09:30:00Z</published><updated>2026-11-04T10:00:00Z</updated>
  <author><name>Owen Hale</name></author></entry>
</feed>"""


def test_rss_entries_get_absolute_links_utc_dates_and_authors() -> None:
    parsed = parse_feed(RSS, {"Content-Type": "application/rss+xml"}, "https://wire.example/feeds/world.xml")
    assert parsed.title == "Harbour Wire" and not parsed.bozo and parsed.error is None
    first = parsed.entries[0]
    assert first.url == "https://wire.example/world/coal-ships?utm_source=rss"
    assert first.guid == "hw-101" and first.author == "Mina Park"
    assert first.published_at == datetime(2026, 11, 2, 23, 15, tzinfo=UTC)
    assert parsed.skipped == 1  # the item without a link
    assert parsed.entries[1].published_at is None


def test_atom_entries_prefer_published_over_updated() -> None:
    parsed = parse_feed(ATOM, {}, "https://ledger.example/atom.xml")
    (entry,) = parsed.entries
    assert entry.url == "https://ledger.example/biz/tariffs"
    assert entry.author == "Owen Hale"
    assert entry.published_at == datetime(2026, 11, 4, 9, 30, tzinfo=UTC)


def test_truncated_feed_keeps_recoverable_items_and_is_flagged() -> None:
    parsed = parse_feed(RSS[: RSS.index(b"<item><title>No link")], {}, "https://wire.example/f.xml")
    assert parsed.bozo and parsed.bozo_reason
    assert [e.guid for e in parsed.entries] == ["hw-101"]


@pytest.mark.parametrize("body", [b"", b"   ", b"<html><body>not a feed</body></html>", b"\x00\xff\xfe junk"])
def test_non_feeds_are_errors_not_exceptions(body: bytes) -> None:
    parsed = parse_feed(body, {}, "https://example.invalid/feed")
    assert parsed.entries == [] and parsed.error


def test_interval_keeps_entries_inside_and_undated_ones() -> None:
    since, until = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)

    def entry(moment: datetime | None) -> FeedEntry:
        return FeedEntry(url="https://x.example/a", guid=None, title=None, author=None, published_at=moment)

    assert in_window(entry(since), since, until)
    assert not in_window(entry(until), since, until)
    assert in_window(entry(None), since, until)


OPML = b"""<?xml version="1.0"?><opml version="2.0"><head><title>Desks</title></head><body>
<outline text="Harbour Wire"><outline type="rss" text="World" xmlUrl="https://wire.example/world.xml"
  htmlUrl="https://wire.example/"/></outline>
<outline type="rss" text="Pacific Ledger" title="Pacific Ledger" xmlUrl="https://ledger.example/atom.xml"/>
<outline text="folder without feeds"/>
</body></opml>"""


def test_opml_lists_feeds_with_their_outlet() -> None:
    feeds = parse_opml(OPML)
    assert [(f.url, f.source) for f in feeds] == [
        ("https://wire.example/world.xml", "Harbour Wire"),
        ("https://ledger.example/atom.xml", "Pacific Ledger"),
    ]


def test_opml_with_entities_or_bad_xml_is_refused_cleanly() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b'<opml><body><outline text="&b;" xmlUrl="https://x.example/f"/></body></opml>')
    with pytest.raises(OpmlError, match="entity"):
        parse_opml(bomb)
    with pytest.raises(OpmlError):
        parse_opml(b"<opml><body>")
    with pytest.raises(OpmlError):
        parse_opml(b"<rss/>")


def test_nul_characters_are_removed_so_postgres_can_store_the_entry() -> None:
    feed = RSS.replace(b"<title>Coal ships seized</title>", b"<title>Coal&#0; ships\x00 seized</title>")
    parsed = parse_feed(feed, {}, "https://wire.example/f.xml")
    assert parsed.entries and all("\x00" not in (e.title or "") for e in parsed.entries)


MISLABELLED = ('<?xml version="1.0" encoding="iso-8859-1"?><rss version="2.0"><channel><title>Café Pjöngjang</title>'
               '<item><title>Außenminister: Sanktionen würden verschärft</title><link>https://x.example/a</link>'
               '</item></channel></rss>')


def test_a_feed_labelled_latin1_but_utf8_in_fact_is_read_as_utf8() -> None:
    parsed = parse_feed(MISLABELLED.encode(), {"Content-Type": "application/rss+xml; charset=ISO-8859-1"},
                        "https://x.example/f")
    assert parsed.title == "Café Pjöngjang"
    assert parsed.entries[0].title == "Außenminister: Sanktionen würden verschärft"


def test_invalid_utf8_bytes_become_replacement_characters_not_mojibake() -> None:
    body = MISLABELLED.encode().replace(b"Sanktionen", b"Sank\xfftionen")
    parsed = parse_feed(body, {"Content-Type": "application/rss+xml; charset=utf-8"}, "https://x.example/f")
    assert parsed.entries[0].title == "Außenminister: Sank\ufffdtionen würden verschärft"
    assert "Ã" not in parsed.title


def test_a_real_latin1_feed_is_still_read_by_its_label() -> None:
    parsed = parse_feed(MISLABELLED.encode("iso-8859-1"), {"Content-Type": "application/rss+xml"},
                        "https://x.example/f")
    assert parsed.entries[0].title == "Außenminister: Sanktionen würden verschärft"


LAUGHS = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
    b'<!ENTITY lol%d "%s">' % (i, b"".join(b"&lol%s;" % (b"" if i == 1 else str(i - 1).encode()) for _ in range(10)))
    for i in range(1, 10)) + b']><rss version="2.0"><channel><title>&lol9;</title></channel></rss>'


@pytest.mark.parametrize("body", [LAUGHS, LAUGHS.decode().encode("utf-16"),
                                  b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                                  b'<rss version="2.0"><channel><title>&x;</title></channel></rss>'])
def test_entity_declarations_are_refused_before_parsing(body: bytes) -> None:
    parsed = parse_feed(body, {}, "https://x.example/f")
    assert parsed.entries == [] and parsed.error and "declares XML entities" in parsed.error


def test_a_ten_thousand_item_feed_is_parsed_whole() -> None:
    items = "".join(f"<item><title>t{i}</title><link>https://x.example/{i}</link></item>" for i in range(10_000))
    body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>big</title>{items}</channel></rss>'.encode()
    parsed = parse_feed(body, {}, "https://x.example/f")
    assert len(parsed.entries) == 10_000 and parsed.error is None
