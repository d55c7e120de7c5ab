"""Exact and near-duplicate text detection, within one list of texts and between two.

Texts are first normalised (:func:`normalize`: Unicode NFKC, case folding, runs of whitespace to
one space).  Two texts are **exact** duplicates when their normalised forms are equal, and
**near** duplicates when they differ but the Jaccard similarity of their character n-gram sets
(:func:`shingles`, n = 3 by default, which suits Korean, where one syllable is one character)
reaches a threshold.  Candidates come from MinHash locality-sensitive hashing (``datasketch``'s
``MinHash`` / ``MinHashLSH``; Broder, 1997, "On the resemblance and containment of documents";
the setting of Lee et al., 2022, "Deduplicating Training Data Makes Language Models Better") and
every candidate is then verified with the exact Jaccard similarity, so a reported pair really
reaches the threshold; LSH may miss a few pairs near the threshold (its false negatives).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, ``str.casefold`` and whitespace runs collapsed to one space (stripped)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, n: int = 3) -> set[str]:
    """The set of character ``n``-grams of ``normalize(text)``; a shorter non-empty text is its own shingle."""
    norm = normalize(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i:i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class Pair:
    """``dup`` duplicates ``first``: ``kind`` is ``"exact"`` or ``"near"``; ``similarity`` the Jaccard (1.0 if exact)."""

    first: int
    dup: int
    kind: str
    similarity: float


class _Index:
    """Unique normalised texts with their shingle sets, and an LSH index over them."""

    def __init__(self, texts: Sequence[Optional[str]], threshold: Optional[float], ngram: int, num_perm: int):
        self.first: dict[str, int] = {}     # normalised text -> index of its first occurrence
        self.norm: list[Optional[str]] = []
        for i, text in enumerate(texts):
            norm = normalize(text) if text else None
            self.norm.append(norm or None)
            if norm and norm not in self.first:
                self.first[norm] = i
        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        self.sets: dict[str, set[str]] = {}
        self.hashes: dict[str, object] = {}
        self.lsh = None
        if threshold is not None and self.first:
            if not 0 < threshold <= 1:
                raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
            keys = list(self.first)
            with self.lsh.insertion_session() as session:
                for key, mh in zip(keys, self._minhashes(keys)):
                    session.insert(key, mh)

    def _minhashes(self, keys: list[str]) -> list:
        """MinHash signatures of ``keys`` (seed 1, datasketch's SHA-1 of each UTF-8 shingle), computed once per key.
        (CRC-32 is three times faster but, being linear, finds a third fewer near pairs on short Korean texts.)"""
        from datasketch import MinHash

        todo = [k for k in dict.fromkeys(keys) if k not in self.hashes]
        for key in todo:
            self.sets.setdefault(key, shingles(key, self.ngram))
        made = MinHash.bulk([[s.encode("utf-8") for s in self.sets[k]] for k in todo], num_perm=self.num_perm,
                            seed=1)
        self.hashes.update(zip(todo, made))
        return [self.hashes[k] for k in keys]

    def near(self, key: str, mh) -> list[tuple[str, float]]:
        """Indexed texts (other than ``key``) whose Jaccard with ``key`` reaches the threshold."""
        own = self.sets[key]
        found = []
        for other in self.lsh.query(mh):
            if other != key:
                sim = jaccard(own, self.sets[other])
                if sim >= self.threshold:
                    found.append((other, sim))
        return found


def find_duplicates(texts: Sequence[Optional[str]], threshold: Optional[float] = 0.8, ngram: int = 3,
                    num_perm: int = 128) -> list[Pair]:
    """Duplicates within ``texts``: for each text that repeats an earlier one, the earliest it repeats.

    Args:
        texts: the texts in order (``None`` or empty ones are ignored).
        threshold: Jaccard similarity of character ``ngram`` sets at which two texts are near
            duplicates; ``None`` finds exact duplicates only.
        ngram: shingle length in characters.  num_perm: MinHash permutations (more: fewer misses, slower).

    Returns:
        :class:`Pair` list sorted by ``dup``: an exact pair for every occurrence after the first of
        a normalised text; a near pair for the first occurrence of a text that is near an earlier
        (different) text, pointing at the earliest such text.  Later exact copies of that text
        point at its own first occurrence, so each index is a ``dup`` at most once.

    Raises:
        ValueError: a threshold outside (0, 1].
    """
    index = _Index(texts, threshold, ngram, num_perm)
    pairs = [Pair(index.first[n], i, "exact", 1.0) for i, n in enumerate(index.norm)
             if n is not None and index.first[n] != i]
    if index.lsh is not None:
        keys = list(index.first)
        for key, mh in zip(keys, index._minhashes(keys)):
            me = index.first[key]
            earlier = [(index.first[o], sim) for o, sim in index.near(key, mh) if index.first[o] < me]
            if earlier:
                first, sim = min(earlier)
                pairs.append(Pair(first, me, "near", sim))
    return sorted(pairs, key=lambda p: p.dup)


def find_shared(left: Sequence[Optional[str]], right: Sequence[Optional[str]], threshold: Optional[float] = 0.8,
                ngram: int = 3, num_perm: int = 128) -> list[Pair]:
    """Texts of ``right`` that duplicate a text of ``left`` (exact, else near), e.g. dev rows also in train.

    Returns:
        :class:`Pair` list sorted by ``dup`` with ``first`` an index into ``left`` (its earliest
        exact copy, else its most similar near text, ties to the earliest) and ``dup`` an index
        into ``right``; at most one pair per ``right`` index.

    Raises:
        ValueError: a threshold outside (0, 1].
    """
    index = _Index(left, threshold, ngram, num_perm)
    pairs: list[Pair] = []
    queries: dict[str, list[int]] = {}
    for j, text in enumerate(right):
        norm = normalize(text) if text else ""
        if not norm:
            continue
        if norm in index.first:
            pairs.append(Pair(index.first[norm], j, "exact", 1.0))
        elif index.lsh is not None:
            queries.setdefault(norm, []).append(j)
    if queries:
        keys = list(queries)
        for key, mh in zip(keys, index._minhashes(keys)):
            found = index.near(key, mh)
            if found:
                other, sim = max(found, key=lambda f: (f[1], -index.first[f[0]]))
                pairs.extend(Pair(index.first[other], j, "near", sim) for j in queries[key])
    return sorted(pairs, key=lambda p: p.dup)


def clusters(n: int, pairs: Sequence[Pair]) -> list[list[int]]:
    """Connected components of ``0..n-1`` under ``pairs`` (union-find), each sorted, ordered by first member."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        a, b = root(p.first), root(p.dup)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])
