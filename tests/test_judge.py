"""Judging close calls: which pairs, both orders, and the runner scoring with its judge."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import trio

from collections.abc import Sequence

from consensus.driver import judge_pairs
from consensus.grouping import pair_index
from consensus.scores import JudgeResult, score_answers
from multillmn.config import PeerConfig
from multillmn.identity import PeerId
from peers.engine import ScriptedEngine
from peers.judge import Judge, ScriptedJudge, VerifyingJudge, judge_pair, per_mille_yes, verify_messages, verify_prompt
from peers.llm import Generator, ModelSpec
from tests.conftest import make_net
from tests.test_node import _wait_height, running

Q = "What is the capital of France?"


def judge_close_calls(judge: Judge, question: str, peers: Sequence[PeerId], texts: Sequence[str],
                      sims: Sequence[int], threshold: int, band: int, max_pairs: int = 6, *,
                      contested_winners: Sequence[int] = (), own: int | None = None) -> list[JudgeResult]:
    """What a peer does: the driver picks the pairs, the host's judge plays each in both orders."""
    pairs = judge_pairs(len(peers), sims, threshold, band, contested_winners=contested_winners, own=own,
                        max_pairs=max_pairs)
    return [judge_pair(judge, question, peers[i], texts[i], peers[j], texts[j]) for i, j in pairs]


def test_close_pairs_are_those_near_the_threshold() -> None:
    sims = [990, 805, 700, 500, 880, 760]  # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3) of 4 answers
    assert judge_pairs(4, sims, 800, 50) == [(0, 2), (2, 3)]  # closest first
    assert judge_pairs(4, sims, 800, 100) == [(0, 2), (2, 3), (1, 3), (0, 3)]
    assert judge_pairs(4, sims, 800, 0) == []
    assert sims[pair_index(4, 2, 3)] == 760


def test_both_orders_cancel_a_judge_that_always_prefers_the_first_answer() -> None:
    fair = judge_pair(ScriptedJudge({Q: "Paris"}), Q, "a", "Berlin", "b", "Paris")
    assert (fair.a_first, fair.b_first, fair.winner()) == ("b", "b", "b")
    biased = judge_pair(ScriptedJudge({Q: "Paris"}, always_first=True), Q, "a", "Berlin", "b", "Paris")
    assert (biased.a_first, biased.b_first, biased.winner()) == ("a", "b", None)


def test_a_contested_decision_judges_every_loser_against_the_winner_first() -> None:
    texts = ["Paris", "Berlin", "Paris", "Lyon"]
    sims = [0, 1000, 0, 0, 0, 0]  # nothing near the threshold
    judge = ScriptedJudge({Q: "Paris"})
    assert judge_close_calls(judge, Q, ["p0", "p1", "p2", "p3"], texts, sims, 800, 100) == []
    results = judge_close_calls(judge, Q, ["p0", "p1", "p2", "p3"], texts, sims, 800, 100, contested_winners=[0, 2])
    assert [(r.a, r.b, r.winner()) for r in results] == [("p0", "p1", "p0"), ("p0", "p3", "p0")]
    assert judge_close_calls(judge, Q, ["p0", "p1"], texts[:2], [0], 800, 0, contested_winners=[0]) == []


def test_a_judge_recuses_itself_from_games_with_its_own_answer() -> None:
    texts = ["Paris", "Berlin", "Paris", "Lyon"]
    sims = [0, 1000, 0, 0, 0, 0]
    judge = ScriptedJudge({Q: "Paris"})
    games = judge_close_calls(judge, Q, ["p0", "p1", "p2", "p3"], texts, sims, 800, 100, contested_winners=[0, 2],
                              own=2)  # p2 said Paris, as the winner p0 did: no game is left for it
    assert games == []
    games = judge_close_calls(judge, Q, ["p0", "p1", "p2", "p3"], texts, sims, 800, 100, contested_winners=[0, 2],
                              own=1)
    assert [(r.a, r.b) for r in games] == [("p0", "p3")]


def test_closest_calls_are_judged_first_and_bounded() -> None:
    texts = ["Paris", "Berlin", "Lyon", "Paris."]
    sims = [790, 700, 810, 600, 650, 805]
    results = judge_close_calls(ScriptedJudge({Q: "Paris"}), Q, ["p0", "p1", "p2", "p3"], texts, sims, 800, 100,
                                max_pairs=2)
    assert [(r.a, r.b) for r in results] == [("p2", "p3"), ("p0", "p1")]  # |805-800| < |790-800|
    assert results[1].winner() == "p0" and results[0].winner() == "p3"


class CountingJudge(ScriptedJudge):
    calls = 0

    def prefer(self, question: str, first: str, second: str) -> int | None:
        CountingJudge.calls += 1
        return super().prefer(question, first, second)


async def test_the_runner_scores_close_calls_with_its_own_judge() -> None:
    net = make_net([1, 1, 1, 1])
    engines = [ScriptedEngine({Q: t}) for t in ("Paris", "Paris", "Berlin", "Lyon")]
    for e in engines:
        e.judge = CountingJudge({Q: "Paris"})
    cfg = replace(PeerConfig.for_tests(), judge_band=800)  # similarity 0 and 1000 both count as close
    async with running(net, engines, cfg=cfg) as nodes:
        with trio.fail_after(20):
            decision = await nodes[0].submit(Q)
            await _wait_height(nodes, 2)
            while len(nodes[0].driver.scores.vectors) < 4:
                await trio.sleep(0.02)
    # every pair is close; a peer recuses itself from games with its own answer's group, so the Paris
    # peers judge 1 pair (Berlin-Lyon), the others 3 each; both orders
    assert CountingJudge.calls == 2 * (1 + 1 + 3 + 3)
    vector = nodes[0].driver.scores.vectors[(1, net.keys[0].peer_id)].message
    answers = decision.answers
    sims = [1000 if a.text == b.text else 0 for i, a in enumerate(answers) for b in answers[i + 1:]]
    winners = [i for i, a in enumerate(answers) if a.peer in decision.value.winners]  # 2 of 4: contested
    judged = judge_close_calls(ScriptedJudge({Q: "Paris"}), Q, [a.peer for a in answers], [a.text for a in answers],
                               sims, 800, 800, contested_winners=winners, own=0)
    expected = score_answers([a.peer for a in answers], sims, winners, judge_results=judged)
    assert vector.scores == expected
    assert expected != score_answers([a.peer for a in answers], sims, winners)  # the judge mattered


# --- the verifying judge (issue 15): P("yes") to "is the proposed answer correct?" -------------

@pytest.fixture(scope="module", params=["llama-chat", "gemma3-few-shot"])
def tiny_generator(request: pytest.FixtureRequest) -> Generator:
    from tests.test_generation_batch import byte_tokenizer, random_model

    arch, style = request.param.split("-", 1)
    tokenizer = byte_tokenizer()
    spec = ModelSpec(f"tiny-{arch}", None, False, "chat" if style == "chat" else "few-shot", style == "few-shot")
    return Generator(spec, random_model(arch, tokenizer, seed=3), tokenizer)


ANSWERS = ["Paris", "The capital of France is Berlin.", "It is Lyon, I think, or maybe Marseille.", "no"]


def _reference_yes(judge: VerifyingJudge, question: str, answer: str) -> int:
    """The score from one unpadded forward pass over the whole vocabulary, computed here independently."""
    g = judge.generator
    ids = torch.tensor([judge.prompt_ids(question, answer)])
    with torch.inference_mode():
        probs = torch.softmax(g.model(input_ids=ids).logits[0, -1].double(), dim=-1)
    yes = sum(float(probs[g.tokenizer.convert_tokens_to_ids(t)]) for t in ("y", "Y"))
    no = sum(float(probs[g.tokenizer.convert_tokens_to_ids(t)]) for t in ("n", "N"))
    return round(1000 * yes / (yes + no))


def test_verifying_judge_scores_a_batch_as_each_answer_alone(tiny_generator: Generator) -> None:
    judge = VerifyingJudge(tiny_generator)
    together = judge.yes_scores(Q, ANSWERS)
    alone = [_reference_yes(judge, Q, a) for a in ANSWERS]
    assert all(abs(a - b) <= 1 for a, b in zip(together, alone)), (together, alone)
    assert len({len(judge.prompt_ids(Q, a)) for a in ANSWERS}) > 1  # the batch was padded
    if tiny_generator.spec.prompt_style == "chat":  # (the tiny Gemma's last window is the same text)
        assert len(set(together)) > 1


def test_verifying_judge_caches_per_question_and_answer(tiny_generator: Generator) -> None:
    judge = VerifyingJudge(tiny_generator, cache_size=3)
    first = judge.yes_scores(Q, ANSWERS[:2])
    calls = 0
    forward = tiny_generator.model.forward

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    tiny_generator.model.forward = counting
    try:
        assert judge.yes_scores(Q, list(reversed(ANSWERS[:2]))) == list(reversed(first))
        assert calls == 0
        judge.yes_scores(Q, ANSWERS)  # two new answers: one batched pass; the cache keeps 3
        assert calls == 1
        assert len(judge._cache) == 3
    finally:
        del tiny_generator.model.forward


def test_verification_prompts_end_where_the_verdict_starts() -> None:
    text = verify_prompt("What is 2 + 2?", "It is  4.")
    assert text.endswith("Question: What is 2 + 2?\nProposed answer: It is 4.\n"
                         "Is the proposed answer correct? Answer yes or no.")
    assert text.count(" yes\n\n") == 2 and text.count(" no\n\n") == 2
    messages = verify_messages("What is 2 + 2?", "4")
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ["No", "Yes", "No", "Yes"]


def test_per_mille_yes() -> None:
    assert per_mille_yes(-1.0, -1.0) == 500
    assert per_mille_yes(math.log(0.3), math.log(0.1)) == 750
    assert per_mille_yes(0.0, -200.0) == 1000 and per_mille_yes(-200.0, 0.0) == 0
    assert per_mille_yes(-math.inf, -math.inf) == 500


@pytest.mark.models
def test_bundled_verifying_judges_score_in_a_batch_as_alone() -> None:
    from peers.llm import default_cache_dir, resolve_model

    for name in ("smollm2", "gemma3"):
        judge = VerifyingJudge(Generator.load(resolve_model(name), default_cache_dir(), threads=1))
        together = judge.yes_scores(Q, ANSWERS)
        alone = [VerifyingJudge(judge.generator).yes_score(Q, a) for a in ANSWERS]
        assert all(abs(a - b) <= 1 for a, b in zip(together, alone)), (name, together, alone)
