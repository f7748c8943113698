"""Answer similarity with all-MiniLM-L6-v2, answer normalisation and quantisation."""

from __future__ import annotations

import pytest

from peers.embedder import Embedder, normalise_answer, quantise

pytestmark = pytest.mark.models  # loads real model weights: not in `make test-fast`


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()


def test_paris_closer_to_paris_sentence_than_berlin(embedder: Embedder) -> None:
    s = embedder.similarities(["Paris", "The capital of France is Paris.", "Berlin"])
    assert s[0][1] > s[0][2]
    assert all(s[i][i] == 1.0 for i in range(3))
    assert all(s[i][j] == s[j][i] and -1.0 <= s[i][j] <= 1.0 for i in range(3) for j in range(3))


def test_equal_normalised_forms_are_exactly_one(embedder: Embedder) -> None:
    s = embedder.similarities(["The answer is Paris!", "paris", "  Paris. ", "Rome"])
    assert s[0][1] == s[1][2] == s[0][2] == 1.0
    assert s[0][3] < 1.0
    assert embedder.similarities([]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  The   Answer is: PARIS! ", "paris"),
        ("The capital of France is Paris.", "capital of france is paris"),
        ("An apple.", "apple"),
        ("a", "a"),
        ("Answer: 42", "42"),
        ("It weighs 3.5 kg", "it weighs 3.5 kg"),
        ("100°C", "100 c"),
        ("Theodore", "theodore"),
        ("", ""),
    ],
)
def test_normalise_answer(text: str, expected: str) -> None:
    assert normalise_answer(text) == expected


def test_quantise() -> None:
    assert quantise(1.0) == 1000
    assert quantise(0.9876) == 988
    assert quantise(-0.2504) == -250
    assert quantise(1.0000001) == 1000
    assert quantise(-3.0) == -1000
    assert isinstance(quantise(0.5), int)
    with pytest.raises(ValueError):
        quantise(float("nan"))


def test_embeddings_are_cached_by_normalised_text(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["The capital is Paris.", "Berlin", "the capital is paris"]
    first = embedder.similarities(texts)
    calls: list[list[str]] = []
    encode = embedder._model.encode
    monkeypatch.setattr(embedder._model, "encode", lambda inputs, **kw: calls.append(list(inputs)) or encode(inputs, **kw))
    again = embedder.similarities([*texts, "Lyon"])
    assert calls == [["lyon"]]  # only the new text reaches the model
    for i in range(3):
        for j in range(3):
            assert abs(again[i][j] - first[i][j]) < 1e-5
