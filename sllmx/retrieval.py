"""BM25 retrieval over Korean morphemes, for the prompting baselines: few-shot examples chosen by similarity
(``selection=similar``) and retrieval-augmented prompts (``eval.rag``).

- :func:`tokenize`: text → BM25 terms.  Korean text is split into morphemes by Kiwi and only content
  morphemes are kept, so "환불은" and "환불을" both give the term "환불" (whitespace tokens would not match).
- :func:`load_corpus`: ``train`` (the train answers), a folder of .txt/.md files (one passage per paragraph) or
  a .jsonl file (one passage per line) → :class:`Passage` list; bad input is a one-line :class:`SllmxError`.
- :class:`BM25Retriever`: a ``bm25s`` index of the tokenised passages; ``search(query, k)`` → top-k
  ``(index, score)``, deterministic.

Sources: S. Robertson and H. Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", Foundations
and Trends in Information Retrieval 3(4), 2009 (BM25, k1 and b); bm25s (X. H. Lù, 2024,
https://github.com/xhluca/bm25s; its default "lucene" variant of BM25, Kamphuis et al., ECIR 2020); Kiwi
(kiwipiepy, https://github.com/bab2min/kiwipiepy; its part-of-speech tags follow the Sejong tag set).

A library-layer module: it imports only the standard library, third-party packages and :mod:`sllmx.errors`;
bm25s and kiwipiepy are imported when first needed, so importing this module is cheap.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sllmx.data.readers import TEXT_SUFFIXES, paragraphs, read_text, text_files
from sllmx.errors import SllmxError

__all__ = ["Passage", "tokenize", "load_corpus", "BM25Retriever"]

#: Hangul syllables, jamo and compatibility jamo: text holding any of them goes to Kiwi
HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
#: a word/number token of non-Korean text: letters and digits of any script (no underscores)
WORD = re.compile(r"[^\W_]+")
#: Kiwi tags (Sejong tag set; the part before "-": "VV-I" is an irregular verb stem) kept as terms, as their
#: lower-cased forms: general/proper/bound nouns, verb and adjective stems, roots, foreign words, numbers, hanja
CONTENT_TAGS = frozenset({"NNG", "NNP", "NNB", "VV", "VA", "XR", "SL", "SN", "SH"})
#: Kiwi's tags for things it recognises whole (URL, e-mail, hashtag, mention, serial such as 2024-01-05): their
#: letters and digits are kept, split like non-Korean text
WHOLE_TAGS = frozenset({"W_URL", "W_EMAIL", "W_HASHTAG", "W_MENTION", "W_SERIAL"})

_kiwi_lock = threading.Lock()
_kiwi_instance: Any = None


@dataclass(frozen=True)
class Passage:
    """One retrievable passage.

    Attributes:
        text: the passage as it will be shown in a prompt.
        source: where it came from: ``"train:12"`` (row 12, counted from 0, of the train answers),
            ``"docs/a.md#3"`` (the 3rd passage, counted from 1, of that file; the path relative to the
            corpus folder), ``"corpus.jsonl:7"`` (line 7, counted from 1, of that file).
    """

    text: str
    source: str


def _kiwi() -> Any:
    """The process's Kiwi instance, built on first use (≈1.5 s, plus ≈1.5 s on its first ``tokenize``)."""
    global _kiwi_instance
    if _kiwi_instance is None:
        with _kiwi_lock:
            if _kiwi_instance is None:
                from kiwipiepy import Kiwi

                _kiwi_instance = Kiwi()
    return _kiwi_instance


def tokenize(text: str) -> list[str]:
    """Terms of ``text`` for BM25.

    Text with Hangul is split into morphemes by Kiwi (``Kiwi().tokenize``); the content morphemes are kept,
    lower-cased: nouns (NNG, NNP, NNB), verb and adjective stems (VV, VA; also their irregular forms VV-I ...),
    roots (XR), foreign words (SL), numbers (SN), hanja (SH), and the letters/digits of URLs, e-mail addresses,
    hashtags, mentions and serials.  Particles (J*), endings (E*), affixes, auxiliaries and punctuation are
    dropped, so "환불은"/"환불을" → ``["환불"]`` and "신청할"/"신청하고" → ``["신청"]``.

    Other text is split into lower-cased runs of letters and digits (``[^\\W_]+``).  The Latin words and
    numbers of Korean text are split the same way (Kiwi's "3.5" → ``["3", "5"]``, "iPhone" → ``["iphone"]``), so
    the same word gives the same terms in Korean and non-Korean text.

    One Kiwi instance per process, built lazily (the first Korean text costs about 3 s); thread-safe.

    Args:
        text: any text; ``None`` or ``""`` → ``[]``.

    Returns:
        The terms in text order (repeats kept: BM25 counts them).
    """
    if not text:
        return []
    if not HANGUL.search(text):
        return WORD.findall(text.lower())
    terms: list[str] = []
    for token in _kiwi().tokenize(text):
        tag = token.tag.split("-", 1)[0]
        if tag in CONTENT_TAGS or tag in WHOLE_TAGS:
            if HANGUL.search(token.form):
                terms.append(token.form.lower())
            else:
                terms.extend(WORD.findall(token.form.lower()))
    return terms


# -- corpora ----------------------------------------------------------------------------------------------

def _text_file_passages(path: Path, name: str) -> list[Passage]:
    return [Passage(p, f"{name}#{n}") for n, p in enumerate(paragraphs(read_text(path, "corpus file")), 1)]


def _jsonl_passages(path: Path, field: str) -> list[Passage]:
    passages = []
    for number, line in enumerate(read_text(path, "corpus file").splitlines(), 1):
        if not line.strip():
            continue
        where = f"corpus file {path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SllmxError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise SllmxError(f"{where}: not a JSON object (got {type(row).__name__}); each line needs a "
                             f"{field!r} field")
        if field not in row:
            keys = ", ".join(map(repr, list(row)[:8])) or "none"
            raise SllmxError(f"{where}: no {field!r} field (its fields: {keys}); set the corpus field to the one "
                             f"holding the passage text")
        value = row[field]
        if not isinstance(value, str):
            raise SllmxError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
        if not value.strip():
            raise SllmxError(f"{where}: field {field!r} is empty")
        passages.append(Passage(value, f"{path.name}:{number}"))
    return passages


def load_corpus(source: str, train_answers: Optional[list[str]] = None, field: str = "text") -> list[Passage]:
    """The passages of a retrieval corpus.

    Args:
        source: ``"train"``: one passage per train answer, ``Passage(train_answers[i], f"train:{i}")`` (answers
            that are empty or only white space are left out; the others keep their row number ``i``);
            a folder: every .txt and .md file under it (recursive, case-insensitive suffix, sorted by the path
            relative to the folder), each split into passages at blank lines (paragraphs, stripped; empty ones
            dropped), sources ``"<relative path>#<n>"`` with n counted from 1 within the file;
            a single .txt/.md file: the same, source ``"<file name>#<n>"``;
            a .jsonl file: one passage per non-blank line, the string in ``field``, source
            ``"<file name>:<line>"`` (lines counted from 1).
        train_answers: the train split's answers; required (non-empty) when ``source == "train"``, else unused.
        field: the JSONL field holding the passage (default ``"text"``).

    Returns:
        The passages, in file and line order (at least one).

    Raises:
        SllmxError: one line naming the file (and the line and field): ``train`` without answers; a missing
            path; a folder with no .txt/.md files; a file that is not UTF-8; a JSONL line that is not JSON or
            not an object, that lacks ``field``, or whose ``field`` is not a string or is empty; a file of
            another type; a corpus with no passages.
    """
    if source == "train":
        if not train_answers:
            raise SllmxError("corpus 'train': the train split has no answers to retrieve from")
        passages = []
        for i, answer in enumerate(train_answers):
            if not isinstance(answer, str):
                raise SllmxError(f"corpus 'train': train answer {i} is {type(answer).__name__}, not a string")
            if answer.strip():
                passages.append(Passage(answer, f"train:{i}"))
        if not passages:
            raise SllmxError("corpus 'train': every train answer is empty")
        return passages

    path = Path(source).expanduser()
    if not path.exists():
        raise SllmxError(f"corpus {source}: no such file or folder (give 'train', a folder of .txt/.md files or a "
                         f".jsonl file)")
    if path.is_dir():
        files = text_files(source, "corpus folder")
        passages = [q for p, name in files for q in _text_file_passages(p, name)]
        if not passages:
            raise SllmxError(f"corpus folder {source}: its {len(files)} .txt/.md files hold no text (empty corpus)")
        return passages
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        passages = _jsonl_passages(path, field)
    elif suffix in TEXT_SUFFIXES:
        passages = _text_file_passages(path, path.name)
    else:
        raise SllmxError(f"corpus file {source}: unknown type {path.suffix or '(no suffix)'!r} (give 'train', a "
                         f"folder of .txt/.md files or a .jsonl file)")
    if not passages:
        raise SllmxError(f"corpus file {source}: no passages in it (empty corpus)")
    return passages


# -- retrieval --------------------------------------------------------------------------------------------

class BM25Retriever:
    """BM25 over :func:`tokenize`'s terms of each passage (bm25s, numpy backend).

    The passages are tokenised here and indexed as term ids (``bm25s.BM25(k1, b).index((ids, vocab))``, a
    vocabulary in first-seen order so the index is the same in every process); bm25s's own English tokenizer
    and stemmer are not used.  Scoring is bm25s's default ``method="lucene"``: for each query term t,
    ``idf(t) · tf / (tf + k1 · (1 - b + b · |d| / avgdl))`` with ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``,
    summed over the query's terms (repeats count again).  Scores are never negative; a passage sharing no term
    with the query scores 0.

    Args:
        passages: the corpus (at least one; a passage with no terms, e.g. ``""``, is allowed and scores 0).
        k1: term-frequency saturation (default 1.5; Robertson & Zaragoza 2009 suggest 1.2–2.0).
        b: document-length normalisation, 0 (none) to 1 (full) (default 0.75).

    Raises:
        SllmxError: no passages, or k1 < 0, or b outside [0, 1].
    """

    def __init__(self, passages: list[Passage], k1: float = 1.5, b: float = 0.75):
        if not passages:
            raise SllmxError("retrieval: the corpus has no passages to index")
        if k1 < 0:
            raise SllmxError(f"retrieval: BM25 k1={k1} must be 0 or more")
        if not 0 <= b <= 1:
            raise SllmxError(f"retrieval: BM25 b={b} must be between 0 and 1")
        self.passages = list(passages)
        self.k1 = float(k1)
        self.b = float(b)
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in tokenize(p.text)] for p in self.passages]
        self._vocab = vocab
        self._bm25: Any = None
        if vocab:  # with no term at all every score is 0 (and bm25s cannot index an empty vocabulary)
            import bm25s

            self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            # a copy: newer bm25s (0.3) adds an empty token "" to the vocabulary it is given (tokenize never yields it)
            self._bm25.index((ids, dict(vocab)), show_progress=False)

    def __len__(self) -> int:
        return len(self.passages)

    def scores(self, query: str) -> Any:
        """The BM25 score of every passage for ``query``: a float32 numpy array of shape ``(len(passages),)``.
        Query terms absent from the corpus add nothing; a query with no terms scores 0 everywhere."""
        import numpy as np

        ids = [self._vocab[t] for t in tokenize(query or "") if t in self._vocab]
        if self._bm25 is None or not ids:
            return np.zeros(len(self.passages), dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: str, k: int, exclude: Optional[set[int]] = None) -> list[tuple[int, float]]:
        """The top-k passages for ``query``.

        Args:
            query: the text to match (tokenised by :func:`tokenize`; ``""``/``None`` → every score 0).
            k: how many to return; capped at the number of passages not excluded; ``k <= 0`` → ``[]``.
            exclude: indices into ``passages`` never returned (e.g. the train row the query comes from).

        Returns:
            ``[(index into passages, BM25 score), ...]``, best first; equal scores in index order, so the
            result is deterministic.  Passages scoring 0 still fill the k slots (in index order), so the
            caller always gets ``min(k, len(passages) - len(excluded))`` results.
        """
        import numpy as np

        scores = self.scores(query)
        keep = np.ones(len(scores), dtype=bool)
        for i in exclude or ():
            if 0 <= i < len(scores):
                keep[i] = False
        candidates = np.flatnonzero(keep)
        k = min(int(k), len(candidates))
        if k <= 0:
            return []
        # best score first, ties by the lower index (lexsort: the last key is the primary one)
        order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [(int(i), float(scores[i])) for i in order]


class DenseRetriever(BM25Retriever):
    """Dense retrieval with a local embedding model: cosine similarity of mean-pooled last hidden states.

    The model is any Hugging Face encoder or decoder folder already on disk (``transformers.AutoModel``,
    ``local_files_only=True``: nothing is downloaded), chosen by the user (``method.embedding_model=PATH``,
    ``eval.rag_embedding_model=PATH``); sllmx ships none.  Each text (at most ``max_length`` tokens) is embedded
    as the mean of its tokens' last hidden states (padding masked), L2-normalised; a passage's score is the dot
    product with the query's, in [-1, 1].  Mean pooling is Sentence-BERT's default (Reimers & Gurevych, 2019);
    a model trained for embeddings (e5, bge, KoSimCSE) retrieves far better than a chat model's states.

    Args:
        passages: the corpus (at least one).
        model_path: the model folder.
        batch_size: texts per forward pass (default 16).  max_length: tokens per text (default 256).

    Raises:
        SllmxError: an empty corpus, or a folder transformers cannot load.
    """

    def __init__(self, passages: list[Passage], model_path: str, batch_size: int = 16, max_length: int = 256):
        import os

        if not passages:
            raise SllmxError("the retrieval corpus is empty")
        if not os.path.isdir(model_path):
            raise SllmxError(f"embedding model {model_path}: no such folder (give a local model folder; nothing is "
                             "downloaded)")
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
            self._model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise SllmxError(f"embedding model {model_path}: cannot be loaded ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0]})") from None
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.passages, self.model_path = list(passages), model_path
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self._matrix = self.embed([p.text for p in self.passages])

    def embed(self, texts: list[str]) -> Any:
        """L2-normalised mean-pooled embeddings: a float32 numpy array of shape ``(len(texts), hidden size)``."""
        import numpy as np
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self._tokenizer([t or " " for t in texts[start:start + self.batch_size]], padding=True,
                                      truncation=True, max_length=self.max_length, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)

    def scores(self, query: str) -> Any:
        """Cosine similarity of every passage to ``query``: float32, shape ``(len(passages),)``."""
        return self._matrix @ self.embed([query or ""])[0]
