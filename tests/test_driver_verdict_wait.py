"""The proposer of a split waits a little past the grace period for judges that could still reject a side
(ADR 0022), driven step by step through the pure driver: no network, no clock but the one given."""

from __future__ import annotations

from consensus.chain import Chain
from consensus.driver import (
    Driver,
    DriverConfig,
    Embed,
    Embedded,
    Generated,
    GraceTimer,
    Rate,
    Rated,
    Received,
    Schedule,
    Send,
    TimerFired,
)
from consensus.messages import Proposal, Signed, Verdict, query_id_of
from consensus.state_machine import Timeouts
from tests.test_verdicts_in_values import Split, verdict

GRACE = 200
CFG = DriverConfig(timeouts=Timeouts(3000, 100, 100, 50), answer_grace_ms=GRACE, answer_wait_ms=5000, tick_ms=1000,
                   judge=True)


class Proposer:
    """The proposer of height 1 in a 2-2 split, its host answering every Embed and Rate at once."""

    def __init__(self) -> None:
        self.split = Split()
        net = self.split.net
        vs = net.genesis.validators
        self.me = next(i for i, k in enumerate(net.keys) if k.peer_id == vs.proposer(1, 0))
        self.driver = Driver(net.keys[self.me], Chain(vs, None, verdict_rule=net.genesis.params.verdicts()), CFG)
        self.texts = {a.signer: a.message.text for a in self.split.answers}
        self.proposals: list[Proposal] = []
        self.timers: list[int] = []  # when the grace timers scheduled are due

    def feed(self, inp: object, now: int) -> None:
        queue = [inp]
        while queue:
            for effect in self.driver.handle(queue.pop(0), now):  # type: ignore[arg-type]
                if isinstance(effect, Embed):
                    queue.append(Embedded(effect.request, tuple(
                        tuple(1000 if ts[i] == ts[j] else 0 for i in range(len(ts)) for j in range(i + 1, len(ts)))
                        for _, ts in effect.groups)))
                elif isinstance(effect, Rate):  # the proposer's judge knows "right" is right
                    queue.append(Rated(effect.request, tuple(
                        (p, 1000 if t == self.split.right else -1000 if effect.own == self.split.right else 0)
                        for p, t in effect.answers)))
                elif isinstance(effect, Send) and isinstance(effect.signed.message, Proposal):
                    self.proposals.append(effect.signed.message)
                elif isinstance(effect, Schedule) and isinstance(effect.timer, GraceTimer):
                    self.timers.append(now + effect.delay_ms)

    def to_quorum(self) -> None:
        """The query, this peer's answer and two others' (a quorum of three): the height starts at t=30."""
        s = self.split
        q = s.query
        self.feed(Received(q, q.signer), 0)
        self.feed(Generated(query_id_of(q.envelope), self.texts[s.net.keys[self.me].peer_id], 5), 10)
        others = [i for i in range(4) if i != self.me]
        for t, i in ((20, others[0]), (30, others[1])):
            self.feed(Received(s.answers[i], None), t)
        self.feed(Received(s.answers[others[2]], None), 40)  # the fourth: every answer is in

    def verdict_of(self, judge: int) -> Signed[Verdict]:
        """Judge ``judge``'s verdict on the other side: -1000 on the wrong answer, +1000 on the right one."""
        s = self.split
        entry = self.driver.pool.get(query_id_of(s.query.envelope))
        assert entry is not None
        answers = [entry.answers[k.peer_id] for k in s.net.keys]  # the proposer's own answer as it signed it
        mine = answers[judge].message.text
        ratings = {i: (1000 if a.message.text == s.right else -1000) for i, a in enumerate(answers)
                   if a.message.text != mine}
        return verdict(s.net, judge, s.query, answers, ratings)


def _right_side_judges(p: Proposer) -> list[int]:
    """The peers other than the proposer that answered the right text (at least one of two)."""
    return [j for j in p.split.of[p.split.right] if j != p.me]


def test_the_proposer_waits_past_the_grace_for_a_judge_that_could_still_reject() -> None:
    p = Proposer()
    p.to_quorum()
    late = _right_side_judges(p)[0]  # a judge of the right side: with its verdict the wrong side is rejected
    for j in range(4):
        if j not in (p.me, late):
            p.feed(Received(p.verdict_of(j), None), 50)
    assert not p.proposals
    p.feed(TimerFired(GraceTimer(1, 0)), 30 + GRACE)  # the grace is over; the omission rule holds (3 of 4 heard)
    assert not p.proposals, "a judge not yet heard could still reject a side: wait"
    assert max(p.timers) == 30 + GRACE + GRACE // 2
    p.feed(Received(p.verdict_of(late), None), 30 + GRACE + 20)  # heard in the extra wait
    assert len(p.proposals) == 1 and p.proposals[0].value.answer == p.split.right


def test_the_extra_wait_is_bounded_and_the_omission_rule_still_decides() -> None:
    p = Proposer()
    p.to_quorum()
    late = _right_side_judges(p)[0]
    for j in range(4):
        if j not in (p.me, late):
            p.feed(Received(p.verdict_of(j), None), 50)
    p.feed(TimerFired(GraceTimer(1, 0)), 30 + GRACE)
    assert not p.proposals
    p.feed(TimerFired(GraceTimer(1, 0)), 30 + GRACE + GRACE // 2)  # the late judge never speaks
    assert len(p.proposals) == 1
    carried = len(p.proposals[0].value.verdicts)
    assert carried == 3  # all but the late judge: under 1/3 of the weight left out


def test_no_extra_wait_once_nobody_unheard_could_change_the_outcome() -> None:
    p = Proposer()
    p.to_quorum()
    wrong_side = [j for j in p.split.of[p.split.wrong] if j != p.me]
    # Every judge but one wrong-side judge: the wrong side is rejected by the right side's two judges already,
    # and the one missing judge (1/4 of the weight) cannot reject the right side alone.
    missing = wrong_side[0]
    for j in range(4):
        if j not in (p.me, missing):
            p.feed(Received(p.verdict_of(j), None), 50)
    p.feed(TimerFired(GraceTimer(1, 0)), 30 + GRACE)
    assert len(p.proposals) == 1 and p.proposals[0].value.answer == p.split.right
