"""news-ingest: feeds to clean, deduplicated, topic-tagged PostgreSQL rows."""

from pipeline.models import Article, Extraction, FeedEntry, FetchResult, ParsedFeed, TopicHit
from pipeline.settings import Settings

__all__ = ["Article", "Extraction", "FeedEntry", "FetchResult", "ParsedFeed", "Settings", "TopicHit"]
