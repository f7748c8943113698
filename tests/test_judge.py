"""Judging close calls: which pairs, both orders, and the runner scoring with its judge."""

from __future__ import annotations

from dataclasses import replace

import trio

from collections.abc import Sequence

from consensus.driver import judge_pairs
from consensus.grouping import pair_index
from consensus.scores import JudgeResult, score_answers
from multillmn.config import PeerConfig
from multillmn.identity import PeerId
from peers.engine import ScriptedEngine
from peers.judge import Judge, ScriptedJudge, judge_pair
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
