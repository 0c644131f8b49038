"""Tests of the extraction stage on pages written for them, plus a sample of the AEB corpus."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trafilatura

from bench.aeb import GROUND_TRUTH_FILE, corpus_dir, evaluate, load_corpus, score
from pipeline.extract import EXTRACTOR_VERSION, count_words, extract, normalize_author
from pipeline.models import Extraction

FIXTURES = Path(__file__).parent / "fixtures" / "pages"
ARTICLE_URL = "https://gazette.example/news/2024/03/05/ferry-returns?utm_source=rss"
AEB_SAMPLE_PAGES = 10
AEB_SAMPLE_MIN_F1 = 0.93
STORY = (
    "The city council approved the northern tram extension on Thursday after a debate that lasted "
    "most of the afternoon and drew a crowd of residents to the public gallery.",
    "Construction is due to start next spring. The first section, between the railway station and "
    "the hospital, should open to passengers within two years if the budget holds.",
    "Opponents argued that buses could serve the same streets for a fraction of the cost, but the "
    "transport committee said trams would carry twice as many people at peak times.",
)


def read_page(name: str) -> bytes:
    """Raw bytes of a fixture page."""
    return (FIXTURES / name).read_bytes()


def story_page(head: str = "", paragraphs: tuple[str, ...] = STORY) -> str:
    """A small article page with `head` markup added to <head>."""
    body = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><title>Tram extension approved</title>{head}</head>"
        f"<body><article><h1>Tram extension approved</h1>{body}</article></body></html>"
    )


@pytest.fixture(scope="module")
def chrome_article() -> Extraction:
    return extract(read_page("article_with_chrome.html"), ARTICLE_URL)


def test_article_body_is_extracted_without_page_chrome(chrome_article: Extraction) -> None:
    assert chrome_article.ok, chrome_article.error
    body = chrome_article.body
    assert body.startswith("The cross-harbour ferry will carry passengers again")
    assert "eleven minutes instead of the forty" in body
    assert body.endswith("almost half of their weekday takings.")
    chrome = (
        "cookies",
        "Accept all",
        "Search the Gazette",
        "Share on Facebook",
        "Related stories",
        "Bridge tolls",
        "newsletter",
        "Subscribe",
        "12 comments",
        "driving round the bay",
        "I will believe it",
        "Privacy notice",
        "All rights reserved",
        "By Maria Okafor",
    )
    for text in chrome:
        assert text not in body


def test_body_blocks_are_separated_by_blank_lines(chrome_article: Extraction) -> None:
    blocks = chrome_article.body.split("\n\n")
    assert len(blocks) == 6
    assert blocks[3] == "Fares and timetable"
    assert all(block and "\n" not in block for block in blocks)


def test_title_is_not_repeated_at_the_top_of_the_body(chrome_article: Extraction) -> None:
    assert chrome_article.title == "Harbour ferry service to resume after two-year repair"
    assert chrome_article.title not in chrome_article.body


def test_article_metadata_is_extracted(chrome_article: Extraction) -> None:
    assert chrome_article.author == "Maria Okafor"
    assert chrome_article.published == "2024-03-05"
    assert chrome_article.language == "en"
    assert chrome_article.sitename == "The Harbour Gazette"
    assert chrome_article.description == (
        "The cross-harbour ferry returns in May after a hull refit and a new landing stage."
    )


def test_rel_canonical_is_preferred_over_og_url(chrome_article: Extraction) -> None:
    assert chrome_article.canonical_url == "https://gazette.example/news/2024/03/05/ferry-returns"


def test_og_url_is_used_when_there_is_no_canonical_link() -> None:
    page = story_page('<meta property="og:url" content="https://news.example/trams/extension-approved">')
    assert extract(page, "https://news.example/x?id=1").canonical_url == (
        "https://news.example/trams/extension-approved"
    )


def test_relative_canonical_is_resolved_against_the_page_url() -> None:
    page = story_page('<link rel="canonical" href="../trams/extension-approved?page=1">')
    result = extract(page, "https://news.example/city/2024/story.html?utm_medium=feed")
    assert result.canonical_url == "https://news.example/city/trams/extension-approved?page=1"


def test_canonical_resolution_honours_base_href() -> None:
    head = '<base href="https://static.example/mirror/"><link rel="canonical" href="trams/approved">'
    assert extract(story_page(head), "https://news.example/a").canonical_url == (
        "https://static.example/mirror/trams/approved"
    )


def test_relative_canonical_without_page_url_is_not_reported() -> None:
    assert extract(story_page('<link rel="canonical" href="/trams/approved">')).canonical_url is None


def test_unusable_canonical_falls_back_to_og_url() -> None:
    head = (
        '<link rel="canonical" href="javascript:void(0)">'
        '<meta property="og:url" content="https://news.example/trams/approved">'
    )
    assert (
        extract(story_page(head), "https://news.example/a").canonical_url
        == "https://news.example/trams/approved"
    )


def test_html_lang_region_is_reduced_to_the_language() -> None:
    page = story_page().replace("<html>", '<html lang="pt-BR">')
    assert extract(page).language == "pt"


@pytest.mark.parametrize("html", [b"", "", b"  \n\t ", "\ufeff"], ids=["bytes", "str", "whitespace", "bom"])
def test_empty_document_is_an_error_not_an_exception(html: bytes | str) -> None:
    result = extract(html)
    assert result.body == ""
    assert result.error in ("empty document", "not an HTML document")


@pytest.mark.parametrize(
    "junk",
    [
        random.Random(7).randbytes(4096),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        b"\x00" * 1000,
    ],
    ids=["random", "png", "nul"],
)
def test_binary_junk_is_an_error_not_an_exception(junk: bytes) -> None:
    result = extract(junk, "https://news.example/file")
    assert result.body == ""
    assert result.error == "not an HTML document: binary content"


def test_a_few_stray_control_bytes_do_not_make_a_page_binary() -> None:
    page = story_page("<script>var sep = '\x03';</script>").encode()
    assert extract(page).ok


@pytest.mark.parametrize("text", [b"Just some plain text without any markup. " * 20, b'{"json": [1, 2, 3]}'])
def test_text_that_is_not_html_is_an_error(text: bytes) -> None:
    assert extract(text).error == "not an HTML document"


def test_unsupported_input_type_is_an_error() -> None:
    assert extract(None).error == "unsupported input type: NoneType"  # type: ignore[arg-type]


def test_page_without_article_text_is_an_error() -> None:
    result = extract("<html><head><title>Nothing here</title></head><body><nav>Home</nav></body></html>")
    assert result.body == ""
    assert result.error == "no article text found"


def test_deeply_nested_page_does_not_crash() -> None:
    depth = 20_000
    article = "<p>" + "deep text " * 50 + "</p>"
    page = "<html><body>" + "<div>" * depth + article + "</div>" * depth + "</body></html>"
    result = extract(page.encode())
    assert isinstance(result, Extraction)
    assert result.ok or result.error


def test_short_body_is_an_error_that_gives_the_word_count() -> None:
    page = "<html><body><article><p>Only seven words are in this body.</p></article></body></html>"
    assert extract(page).error == "body too short: 7 words (minimum 20)"
    assert extract(page, min_words=5).body == "Only seven words are in this body."


def test_latin1_declared_page_is_decoded_without_mojibake() -> None:
    result = extract(read_page("latin1_declared_article.html"), "https://jornal.example/cidade/onibus")
    assert result.ok, result.error
    # The page says iso-8859-1 but, like most such pages, uses windows-1252 quotes and dashes.
    for text in ("São Tomé das Letras", "Conceição Araújo", "“Não faz sentido", "ampliação – hoje"):
        assert text in result.body
    assert "Ã" not in result.body
    assert not any("\x80" <= char <= "\x9f" for char in result.body)
    assert result.title == "Prefeitura amplia horário dos ônibus noturnos"
    assert result.language == "pt"


def test_utf8_page_without_declaration_is_decoded_as_utf8() -> None:
    result = extract(read_page("utf8_undeclared_article.html"))
    assert result.ok, result.error
    assert "„Zażółć gęślą jaźń”" in result.body
    assert result.title == "Nowa linia tramwajowa do Fordonu otwarta"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_byte_order_mark_decides_the_encoding(encoding: str) -> None:
    page = story_page(paragraphs=(*STORY, "Der Bürgermeister sagte: „Grüße aus Köln“."))
    result = extract(page.encode(encoding))
    assert result.ok, result.error
    assert "„Grüße aus Köln“" in result.body


def test_http_charset_outranks_a_wrong_meta_declaration() -> None:
    russian = "Городской совет одобрил продление трамвайной линии на север после долгих споров."
    page = story_page('<meta charset="iso-8859-1">', paragraphs=(*STORY, russian)).encode("cp1251")
    result = extract(page, content_type="text/html; charset=windows-1251")
    assert russian in result.body


def test_string_input_is_used_as_is() -> None:
    result = extract(story_page('<meta charset="iso-8859-1">', paragraphs=(*STORY, "Ça coûte 5 €.")))
    assert "Ça coûte 5 €." in result.body


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ("By Jane Doe.", "Jane Doe"),
        ("by: Lee Min-ho |", "Lee Min-ho"),
        ("Maria Lopez; Staff Writer", "Maria Lopez"),
        ("Jane Doe; John Smith; Jane Doe", "Jane Doe; John Smith"),
        ("  Ana   Pérez ", "Ana Pérez"),
        ("Di Stefano Rossi", "Di Stefano Rossi"),
        ("Byron Ashe", "Byron Ashe"),
        ("", None),
        (None, None),
    ],
)
def test_author_is_normalised_lightly(found: str | None, expected: str | None) -> None:
    assert normalize_author(found) == expected


def test_words_are_counted_per_cjk_character() -> None:
    assert count_words("Tokyo 東京都 is big") == 6


def test_extractor_version_names_the_trafilatura_release() -> None:
    assert EXTRACTOR_VERSION.startswith(f"trafilatura-{trafilatura.__version__}+")


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        ("", "", (1.0, 1.0, 1.0)),
        ("", "one two three four five", (0.0, 0.0, 0.0)),
        ("one two three four five", "one two three four five", (1.0, 1.0, 1.0)),
        ("one two three four five six", "one two three four five", (2 / 3, 1.0, 0.8)),
        ("one two", "one two", (1.0, 1.0, 1.0)),
    ],
)
def test_aeb_score_follows_upstream_conventions(
    pred: str, truth: str, expected: tuple[float, float, float]
) -> None:
    assert score(pred, truth) == pytest.approx(expected)


def test_aeb_sample_scores_above_floor() -> None:
    root = corpus_dir()
    if not (root / GROUND_TRUTH_FILE).is_file():
        pytest.skip(f"AEB corpus not found at {root} (set NEWS_AEB_DIR to run this test)")
    corpus = load_corpus(root, limit=AEB_SAMPLE_PAGES)
    result = evaluate(lambda html, url: extract(html, url).body, corpus, warm_up=False)
    assert result["empty"] == 0
    assert result["f1"] >= AEB_SAMPLE_MIN_F1
    assert result["f1_mean"] >= AEB_SAMPLE_MIN_F1


GERMAN = ("<html><head><meta charset='{charset}'><title>Pjöngjang</title></head><body><article><p>"
          + "Der Außenminister sagte in Pjöngjang, die Sanktionen gegen Nordkorea würden verschärft. " * 4
          + "</p></article></body></html>")


def test_a_page_labelled_latin1_but_utf8_in_fact_stores_no_mojibake() -> None:
    page = GERMAN.format(charset="iso-8859-1").encode()
    result = extract(page, "https://x.example/a", content_type="text/html; charset=iso-8859-1")
    assert "Außenminister sagte in Pjöngjang" in result.body and "Ã" not in result.body


def test_invalid_utf8_bytes_become_replacement_characters_not_mojibake() -> None:
    page = GERMAN.format(charset="utf-8").encode().replace(b"sagte", b"sa\xffgte", 1)
    result = extract(page, "https://x.example/a", content_type="text/html; charset=utf-8")
    assert result.body.startswith("Der Außenminister sa\ufffdgte in Pjöngjang") and "Ã" not in result.body


def test_a_hundred_thousand_nested_elements_do_not_crash_extraction() -> None:
    page = b"<html><body>" + b"<div>" * 100_000 + b"<p>deep</p>" + b"</div>" * 100_000 + b"</body></html>"
    result = extract(page, "https://x.example/a")
    assert result.error == "no article text found"
