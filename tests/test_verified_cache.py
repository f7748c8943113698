"""The verified-signature cache: repeats skip Ed25519, anything else is still checked."""

from __future__ import annotations

import pytest

from consensus.messages import Answer, Envelope, MessageError, VerifiedCache, open_envelope
from tests.conftest import make_net


def test_cached_envelope_skips_verification_but_others_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net([1, 1])
    answer = net.answer(net.query(), 1, "Paris")
    keys = net.genesis.validators.public_key_of
    cache = VerifiedCache()
    calls: list[int] = []
    import consensus.messages as messages

    real = messages.verify_signature
    monkeypatch.setattr(messages, "verify_signature", lambda *a: calls.append(1) or real(*a))
    open_envelope(Answer, answer.envelope, keys, cache)
    open_envelope(Answer, answer.envelope, keys, cache)
    assert len(calls) == 1 and len(cache) == 1
    forged = Envelope(body=answer.envelope.body, sig=bytes(64))
    with pytest.raises(MessageError, match="bad signature"):
        open_envelope(Answer, forged, keys, cache)  # same body, other signature: verified, refused
    assert len(cache) == 1


def test_cache_is_bounded_and_forgets_the_oldest() -> None:
    net = make_net([1])
    q = net.query()
    cache = VerifiedCache(capacity=2)
    answers = [net.answer(q, 0, t) for t in ("a", "b", "c")]
    for a in answers:
        cache.add(Answer.KIND, a.envelope)
    assert len(cache) == 2
    assert not cache.check(Answer.KIND, answers[0].envelope)
    assert cache.check(Answer.KIND, answers[2].envelope)
    assert not cache.check("vote", answers[2].envelope)  # the kind is part of the key


def test_a_hit_returns_the_decoded_message_without_decoding_again(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_net([1, 1])
    answer = net.answer(net.query(), 1, "Paris")
    keys = net.genesis.validators.public_key_of
    cache = VerifiedCache()
    first = open_envelope(Answer, answer.envelope, keys, cache)
    import consensus.messages as messages

    decoded: list[int] = []
    real = messages._from_body
    monkeypatch.setattr(messages, "_from_body", lambda *a: decoded.append(1) or real(*a))
    again = open_envelope(Answer, answer.envelope, keys, cache)
    assert again.message is first.message and not decoded
    with pytest.raises(MessageError, match="unknown peer"):  # the signer must still be a validator
        open_envelope(Answer, answer.envelope, lambda peer: None, cache)
    own = net.answer(net.query(), 0, "Lyon")
    cache.add(Answer.KIND, own.envelope)  # as a runner adds what it signed itself: no message kept
    verified: list[int] = []
    monkeypatch.setattr(messages, "verify_signature", lambda *a: verified.append(1) or True)
    assert open_envelope(Answer, own.envelope, keys, cache).message.text == "Lyon"
    assert decoded == [1] and not verified  # decoded, as nothing was kept for it; not verified again
