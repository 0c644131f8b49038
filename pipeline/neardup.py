"""Near-duplicate signatures: MinHash over word shingles, LSH band keys, and the lookup of stored near copies."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from datasketch import MinHash
from sqlalchemy import Connection, text

from pipeline.settings import Settings

LOGGER = logging.getLogger(__name__)

MINHASH_SEED = 20261102  # fixed: every worker, every run and every stored signature must use the same permutations
MINHASH_FLAVOUR = "affine32"  # datasketch's permutation scheme; its values are uint32
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Scheme:
    """How bodies are turned into signatures and when two signatures are near copies.

    `shingle_words`, `permutations` and `bands` shape what is stored: signatures of another scheme are never
    compared (their band keys differ), and `python -m pipeline clusters sign` re-signs stored articles after a
    change. `threshold` only decides, so it can change at any time.
    """

    shingle_words: int = 5
    permutations: int = 64
    bands: int = 16
    threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.shingle_words < 1 or self.permutations < 1 or self.bands < 1:
            raise ValueError("shingle size, permutations and bands must be at least 1")
        if self.permutations % self.bands:
            raise ValueError(f"{self.bands} bands do not divide {self.permutations} permutations")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"the similarity threshold must be in (0, 1], got {self.threshold}")

    @property
    def rows(self) -> int:
        """Permutations per band."""
        return self.permutations // self.bands

    @property
    def name(self) -> str:
        """What identifies stored signatures of this scheme (the threshold is not part of them)."""
        return f"w{self.shingle_words}-p{self.permutations}-b{self.bands}-s{MINHASH_SEED}"


DEFAULT_SCHEME = Scheme()


def scheme_for(settings: Settings) -> Scheme:
    """The scheme the settings describe (NEWS_SHINGLE_WORDS, NEWS_MINHASH_PERMUTATIONS, NEWS_LSH_BANDS,
    NEWS_NEAR_DUPLICATE_THRESHOLD)."""
    return Scheme(settings.shingle_words, settings.minhash_permutations, settings.lsh_bands,
                  settings.near_duplicate_threshold)


@dataclass(frozen=True)
class Signature:
    """One body's MinHash values and the LSH band keys derived from them."""

    minhash: np.ndarray  # uint32, one value per permutation
    band_keys: tuple[int, ...]  # signed 64-bit, one per band

    def to_bytes(self) -> bytes:
        return self.minhash.astype("<u4", copy=False).tobytes()


def shingles(body: str, size: int) -> list[bytes]:
    """Overlapping runs of `size` words, lower-cased (Unicode word characters; punctuation and layout dropped).

    A body shorter than `size` words is one shingle.
    """
    words = _WORD.findall(unicodedata.normalize("NFC", body).lower())
    if len(words) <= size:
        return [" ".join(words).encode()]
    return [" ".join(gram).encode() for gram in zip(*(words[i:] for i in range(size)), strict=False)]


@cache
def _permutations(count: int) -> tuple[np.ndarray, np.ndarray]:
    # made once per process: building them is most of the cost of a fresh MinHash
    return MinHash(num_perm=count, seed=MINHASH_SEED, scheme=MINHASH_FLAVOUR).permutations


def sign(body: str, scheme: Scheme = DEFAULT_SCHEME) -> Signature:
    """The body's signature: one MinHash (crc32 of each shingle, pre-mixed by datasketch) and its band keys."""
    minhash = MinHash(num_perm=scheme.permutations, seed=MINHASH_SEED, hashfunc=zlib.crc32,
                      permutations=_permutations(scheme.permutations), scheme=MINHASH_FLAVOUR)
    minhash.update_batch(shingles(body, scheme.shingle_words))
    values = minhash.hashvalues.astype(np.uint32, copy=False)
    return Signature(values, band_keys(values, scheme))


def band_keys(values: np.ndarray, scheme: Scheme) -> tuple[int, ...]:
    """One signed 64-bit key per band: a hash of the scheme, the band's position and its MinHash values."""
    raw = values.astype("<u4", copy=False).tobytes()
    width = scheme.rows * 4
    prefix = scheme.name.encode()
    return tuple(
        int.from_bytes(hashlib.blake2b(raw[band * width:(band + 1) * width], digest_size=8,
                                       person=band.to_bytes(4, "big"), key=prefix).digest(), "big", signed=True)
        for band in range(scheme.bands)
    )


def similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Estimated Jaccard similarity of the two bodies' shingle sets: the share of equal MinHash values."""
    return float(np.count_nonzero(first == second)) / len(first)


def from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


@dataclass(frozen=True)
class StoredSignature:
    """A stored article's signature, as found by a band-key lookup, with the band keys it shares."""

    article_id: int
    cluster_id: int
    minhash: np.ndarray
    band_keys: frozenset[int]


def find_candidates(conn: Connection, scheme: Scheme, keys: Iterable[int]) -> list[StoredSignature]:
    """Stored signatures of this scheme sharing at least one band key with `keys`: one indexed query (a
    probe of article_bands' primary key per key), whatever the number of keys."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    found: dict[int, tuple[int, bytes, set[int]]] = {}
    # the band probe first, on its own: without it a planner lacking statistics (a young table) may probe the
    # band index once per stored signature instead of once per key
    for row in conn.execute(text(
        "WITH hit AS MATERIALIZED ("
        "  SELECT band_key, article_id FROM article_bands WHERE band_key = ANY(CAST(:keys AS bigint[]))) "
        "SELECT hit.band_key, hit.article_id, a.cluster_id, s.minhash FROM hit "
        "JOIN article_signatures s ON s.article_id = hit.article_id "
        "JOIN articles a ON a.id = hit.article_id "
        "WHERE s.scheme = :scheme"
    ), {"keys": wanted, "scheme": scheme.name}):
        found.setdefault(int(row.article_id), (int(row.cluster_id), row.minhash, set()))[2].add(int(row.band_key))
    return [StoredSignature(article_id, cluster_id, from_bytes(minhash), frozenset(shared))
            for article_id, (cluster_id, minhash, shared) in found.items()]


def store_signatures(conn: Connection, scheme: Scheme, signed: Sequence[tuple[int, Signature]]) -> None:
    """Insert or replace the signatures and band keys of these articles, in one statement. An article whose
    body changed loses the band keys it no longer has."""
    if not signed:
        return
    conn.execute(text(
        "WITH new AS ("
        "  SELECT n.article_id, n.minhash, CAST(n.band_keys AS bigint[]) AS band_keys "
        "  FROM unnest(CAST(:ids AS bigint[]), CAST(:minhashes AS bytea[]), CAST(:band_keys AS text[])) "
        "    AS n(article_id, minhash, band_keys)), "
        "gone AS ("
        "  DELETE FROM article_bands b USING article_signatures s JOIN new ON new.article_id = s.article_id, "
        "    unnest(s.band_keys) AS k(key) "
        "  WHERE b.band_key = k.key AND b.article_id = s.article_id AND NOT (k.key = ANY(new.band_keys))), "
        "signature AS ("
        "  INSERT INTO article_signatures (article_id, scheme, minhash, band_keys) "
        "  SELECT article_id, :scheme, minhash, band_keys FROM new "
        "  ON CONFLICT (article_id) DO UPDATE SET scheme = excluded.scheme, minhash = excluded.minhash, "
        "    band_keys = excluded.band_keys "
        "  WHERE (article_signatures.scheme, article_signatures.minhash) "
        "    IS DISTINCT FROM (excluded.scheme, excluded.minhash)) "
        "INSERT INTO article_bands (band_key, article_id) "
        "SELECT k.key, new.article_id FROM new, unnest(new.band_keys) AS k(key) ON CONFLICT DO NOTHING"
    ), {"scheme": scheme.name, "ids": [article_id for article_id, _ in signed],
        "minhashes": [signature.to_bytes() for _, signature in signed],
        "band_keys": ["{" + ",".join(map(str, signature.band_keys)) + "}" for _, signature in signed]})


def lock_keys(conn: Connection, keys: Iterable[int]) -> None:
    """Take transaction-level advisory locks on these signed 64-bit keys in one round trip, in sorted order
    (WITH ORDINALITY keeps it), so batches locking overlapping keys cannot deadlock."""
    conn.execute(text(
        "SELECT count(pg_advisory_xact_lock(k.key)) FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS k(key, n)"
    ), {"keys": sorted(set(keys))})


def sign_stored(conn: Connection, scheme: Scheme = DEFAULT_SCHEME, limit: int = 500) -> int:
    """Sign up to `limit` stored articles that have no signature of this scheme (articles stored before
    migration 0003, or signed under another scheme); returns how many. Cluster ids are left as they are:
    the signatures only let later copies find these articles."""
    rows = conn.execute(text(
        "SELECT a.id, a.body FROM articles a LEFT JOIN article_signatures s ON s.article_id = a.id "
        "WHERE s.article_id IS NULL OR s.scheme <> :scheme ORDER BY a.id LIMIT :limit"
    ), {"scheme": scheme.name, "limit": limit}).all()
    signed = [(int(row.id), sign(row.body, scheme)) for row in rows]
    lock_keys(conn, (key for _, signature in signed for key in signature.band_keys))  # as a load would
    store_signatures(conn, scheme, signed)
    if signed:
        LOGGER.info("signed %d stored articles (ids %d to %d) with %s", len(signed), signed[0][0], signed[-1][0],
                    scheme.name)
    return len(signed)
