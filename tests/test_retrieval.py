"""sllmx.retrieval: Kiwi morpheme terms, corpora (train answers, a folder, JSONL) and BM25 search (bm25s)."""

import json
import math

import pytest

from sllmx import retrieval
from sllmx.errors import SllmxError
from sllmx.retrieval import BM25Retriever, Passage, load_corpus, tokenize

#: short customer-support policies; the queries below phrase them with other particles and endings
POLICIES = [
    "배송은 결제 완료 후 보통 2~3일이 걸립니다.",
    "환불은 상품 수령 후 7일 이내에 신청할 수 있습니다.",
    "배송이 지연되는 경우 문자로 안내해 드립니다.",
    "주소 변경은 상품이 출고되기 전까지만 가능합니다.",
    "교환은 같은 상품의 다른 색상이나 사이즈로만 가능합니다.",
    "주문 취소는 마이페이지의 주문 내역에서 직접 할 수 있습니다.",
    "포인트는 구매 확정 다음 날 적립됩니다.",
    "영수증은 이메일로 발송되며 다시 요청할 수 있습니다.",
]
#: query -> index of the policy that answers it
QUERIES = {
    "환불을 신청하고 싶어요": 1,
    "배송이 왜 이렇게 지연되나요": 2,
    "주소를 변경하고 싶습니다": 3,
    "사이즈 교환이 되나요": 4,
    "주문을 취소하려면 어떻게 하나요": 5,
    "포인트가 언제 적립돼요?": 6,
    "영수증을 다시 받고 싶어요": 7,
}


def whitespace(text):
    return (text or "").lower().split()


@pytest.fixture(scope="module")
def policies():
    return BM25Retriever([Passage(t, f"policies.jsonl:{i + 1}") for i, t in enumerate(POLICIES)])


# -- BM25 over Korean morphemes ---------------------------------------------------------------------------

@pytest.mark.parametrize("query,expected", list(QUERIES.items()))
def test_korean_query_finds_its_policy_first(policies, query, expected):
    hits = policies.search(query, 3)
    assert hits[0][0] == expected, (query, hits)
    assert hits[0][1] > hits[1][1] >= 0  # a clear winner, not a tie broken by index


def test_whitespace_tokens_would_miss_what_morphemes_find(monkeypatch):
    """The same corpus and queries with whitespace tokens: "환불은" never matches "환불을", so queries fail."""
    monkeypatch.setattr(retrieval, "tokenize", whitespace)
    plain = BM25Retriever([Passage(t, str(i)) for i, t in enumerate(POLICIES)])
    refund = plain.search("환불을 신청하고 싶어요", 3)
    assert refund[0][0] != 1 and refund[0][1] == 0.0  # no shared token at all: index order, not the refund policy
    missed = [q for q, expected in QUERIES.items() if plain.search(q, 1)[0][0] != expected]
    assert len(missed) >= 3, missed


# -- tokenize ---------------------------------------------------------------------------------------------

def test_particles_and_endings_are_dropped():
    assert tokenize("환불은") == tokenize("환불을") == tokenize("환불이") == ["환불"]
    terms = tokenize("환불은 상품 수령 후 7일 이내에 신청할 수 있습니다.")
    assert {"환불", "상품", "수령", "7", "이내", "신청"} <= set(terms)
    assert not {"은", "에", "습니다", ".", "ᆯ", "하"} & set(terms)
    # verb stems (irregular ones too) and adjective stems, not their endings
    assert tokenize("주소를 바꾸고 싶어요") == ["주소", "바꾸"]
    assert {"걷", "춥"} <= set(tokenize("걸어서 갔는데 추웠다"))


def test_latin_words_and_numbers_are_kept_lowercased():
    assert tokenize("Hello, World! Refund in 7 days (v2.5)") == ["hello", "world", "refund", "in", "7", "days",
                                                               "v2", "5"]
    assert tokenize("") == [] and tokenize("?! ...") == [] and tokenize(None) == []


def test_mixed_korean_and_english_text():
    terms = tokenize("iPhone 15 Pro의 배송이 3.5일 지연됐어요! Order A-1234")
    assert terms[:3] == ["iphone", "15", "pro"]
    assert {"배송", "지연", "order", "a", "1234"} <= set(terms)
    assert not {"의", "이", "!", "iPhone", "Pro"} & set(terms)
    # a Latin word or a number gives the same terms in Korean and in English text
    assert [t for t in tokenize("버전 3.5 iPhone") if t.isascii()] == tokenize("version 3.5 iPhone")[1:]


def test_text_without_hangul_never_builds_kiwi(monkeypatch):
    def no_kiwi():
        raise AssertionError("Kiwi was used for text without Hangul")

    monkeypatch.setattr(retrieval, "_kiwi", no_kiwi)
    assert tokenize("Delivery is DELAYED, sorry") == ["delivery", "is", "delayed", "sorry"]
    with pytest.raises(AssertionError):
        tokenize("배송")


# -- load_corpus ------------------------------------------------------------------------------------------

def test_a_folder_is_split_into_paragraphs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("# 환불\n\n환불은 7일 이내.\n두 번째 줄.\n   \n\n\n교환은 불가.\n", encoding="utf-8")
    (tmp_path / "sub" / "a.txt").write_text("배송 안내\r\n\r\n지연 시 문자 발송", encoding="utf-8")
    (tmp_path / "a.TXT").write_text("\n\n대문자 확장자\n", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("not,a,passage\n", encoding="utf-8")
    (tmp_path / "empty.md").write_text("\n  \n", encoding="utf-8")
    passages = load_corpus(str(tmp_path))
    assert passages == [
        Passage("대문자 확장자", "a.TXT#1"),
        Passage("# 환불", "b.md#1"),
        Passage("환불은 7일 이내.\n두 번째 줄.", "b.md#2"),
        Passage("교환은 불가.", "b.md#3"),
        Passage("배송 안내", "sub/a.txt#1"),
        Passage("지연 시 문자 발송", "sub/a.txt#2"),
    ]


def test_a_jsonl_file_gives_one_passage_per_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "환불 규정", "id": 1}\n\n{"text": "배송 규정"}\n', encoding="utf-8")
    assert load_corpus(str(path)) == [Passage("환불 규정", "corpus.jsonl:1"), Passage("배송 규정", "corpus.jsonl:3")]
    other = tmp_path / "faq.jsonl"
    other.write_text(json.dumps({"body": "교환 규정", "text": 3}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_corpus(str(other), field="body") == [Passage("교환 규정", "faq.jsonl:1")]


def test_train_answers_keep_their_row_numbers():
    assert load_corpus("train", ["환불은 7일 이내", "  ", "배송은 2일"]) == [
        Passage("환불은 7일 이내", "train:0"), Passage("배송은 2일", "train:2")]


def jsonl(tmp_path, *lines):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("make,words", [
    (lambda tmp: ("train", None), ["train"]),
    (lambda tmp: ("train", []), ["train"]),
    (lambda tmp: ("train", ["", " \n"]), ["train", "empty"]),
    (lambda tmp: (str(tmp / "nowhere"), None), ["nowhere", "no such file"]),
    (lambda tmp: ((tmp / "empty_dir").mkdir() or str(tmp / "empty_dir"), None), ["empty_dir", ".txt", ".md"]),
    (lambda tmp: (jsonl(tmp, '{"text": "ok"}', '{"text": "broken'), None), ["corpus.jsonl", "line 2", "not JSON"]),
    (lambda tmp: (jsonl(tmp, '["text"]'), None), ["corpus.jsonl", "line 1", "'text'", "object"]),
    (lambda tmp: (jsonl(tmp, '{"text": "ok"}', '{"txt": "typo"}'), None), ["corpus.jsonl", "line 2", "'text'",
                                                                          "'txt'"]),
    (lambda tmp: (jsonl(tmp, '{"text": 12}'), None), ["corpus.jsonl", "line 1", "'text'", "int", "string"]),
    (lambda tmp: (jsonl(tmp, '{"text": "a"}', "", '{"text": "  "}'), None), ["corpus.jsonl", "line 3", "'text'",
                                                                             "empty"]),
    (lambda tmp: ((tmp / "c.csv").write_text("a,b\n") and str(tmp / "c.csv"), None), ["c.csv", "'.csv'"]),
    (lambda tmp: (jsonl(tmp, "", "  "), None), ["corpus.jsonl", "empty corpus"]),
    (lambda tmp: ((tmp / "d").mkdir() or (tmp / "d" / "a.md").write_text("\n\n") and str(tmp / "d"), None),
     ["d", "empty corpus"]),
    (lambda tmp: ((tmp / "bad.md").write_bytes(b"\xff\xfe\x00bad") and str(tmp / "bad.md"), None),
     ["bad.md", "UTF-8"]),
])
def test_a_bad_corpus_is_one_line_naming_file_line_and_field(tmp_path, make, words):
    source, answers = make(tmp_path)
    with pytest.raises(SllmxError) as info:
        load_corpus(source, answers)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


# -- search -----------------------------------------------------------------------------------------------

def test_k_is_capped_and_zero_scores_fill_the_slots(policies):
    hits = policies.search("환불을 신청하고 싶어요", 100)
    assert len(hits) == len(POLICIES) and sorted(i for i, _ in hits) == list(range(len(POLICIES)))
    assert hits[0][0] == 1 and [i for i, s in hits if s == 0.0] == [0, 2, 3, 4, 5, 6, 7]
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert policies.search("환불", 0) == [] and policies.search("환불", -2) == []


def test_excluded_passages_are_never_returned(policies):
    hits = policies.search("환불을 신청하고 싶어요", 3, exclude={1})
    assert [i for i, _ in hits] == [0, 2, 3]
    # only two passages left: k is capped at them
    assert [i for i, _ in policies.search("배송", 5, exclude={0, 1, 3, 4, 5, 6})] == [2, 7]
    assert policies.search("배송", 5, exclude=set(range(len(POLICIES)))) == []
    assert len(policies.search("배송", 3, exclude={99, -1})) == 3  # indices outside the corpus change nothing


def test_ties_are_broken_by_the_lower_index():
    texts = ["교환 안내", "환불 규정 안내", "배송 안내", "환불 규정 안내", "환불 규정 안내"]
    index = BM25Retriever([Passage(t, str(i)) for i, t in enumerate(texts)])
    first = index.search("환불 규정이 궁금해요", 5)
    assert [i for i, _ in first] == [1, 3, 4, 0, 2]
    assert first[0][1] == first[1][1] == first[2][1] > 0 and first[3][1] == first[4][1] == 0.0
    assert all(index.search("환불 규정이 궁금해요", 5) == first for _ in range(3))


@pytest.mark.parametrize("query", ["", None, "은는이가을를", "!!!", "전혀 없는 단어 xyzzy"])
def test_a_query_with_no_known_term_gets_the_first_k(policies, query):
    assert policies.search(query, 3) == [(0, 0.0), (1, 0.0), (2, 0.0)]


def test_passages_without_terms_are_indexed_and_score_zero():
    index = BM25Retriever([Passage("", "train:0"), Passage("...", "train:1"), Passage("환불 규정", "train:2")])
    assert index.search("환불", 3) == [(2, pytest.approx(index.search("환불", 1)[0][1])), (0, 0.0), (1, 0.0)]
    only_empty = BM25Retriever([Passage("", "a"), Passage("?", "b")])
    assert only_empty.search("환불", 5) == [(0, 0.0), (1, 0.0)]


def test_scores_follow_the_bm25_formula_with_k1_and_b():
    """bm25s's lucene BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b |d| / avgdl))."""
    docs = ["apple banana", "apple apple cherry date", "egg"]
    lengths, avgdl = [2, 4, 1], 7 / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    for k1, b in [(1.5, 0.75), (0.9, 0.0), (2.0, 1.0)]:
        index = BM25Retriever([Passage(t, str(i)) for i, t in enumerate(docs)], k1=k1, b=b)
        expected = {i: idf * tf / (tf + k1 * (1 - b + b * lengths[i] / avgdl)) for i, tf in [(0, 1), (1, 2)]}
        hits = dict(index.search("Apple?", 3))
        assert hits[0] == pytest.approx(expected[0], rel=1e-5) and hits[1] == pytest.approx(expected[1], rel=1e-5)
        assert hits[2] == 0.0


def test_bad_index_arguments_are_user_errors():
    with pytest.raises(SllmxError, match="no passages"):
        BM25Retriever([])
    with pytest.raises(SllmxError, match="b=1.5"):
        BM25Retriever([Passage("a", "x")], b=1.5)
    with pytest.raises(SllmxError, match="k1=-1"):
        BM25Retriever([Passage("a", "x")], k1=-1)
