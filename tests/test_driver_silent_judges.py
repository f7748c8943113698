"""The proposer stops waiting for answerers that never judge (ADR 0022, ``SILENT_AFTER``), driven step by
step through the pure driver: six peers of weight 1, two of them colluders that answer "Lyon" and never send
a verdict, decided values folded from the ledger (:class:`Committed`), then one query proposed."""

from __future__ import annotations

from collections.abc import Sequence

from consensus import grouping
from consensus.chain import Chain
from consensus.driver import (
    SILENT_AFTER,
    Committed,
    Driver,
    DriverConfig,
    Embed,
    Embedded,
    Generated,
    GraceTimer,
    Rate,
    Rated,
    Received,
    Send,
    TimerFired,
)
from consensus.messages import Answer, Proposal, Query, Signed, Value, Verdict, query_id_of, sign
from tests.test_membership import CHAIN
from tests.test_membership import Net as MembershipNet
from tests.test_driver_verdict_wait import CFG, GRACE
from tests.test_verdicts_in_values import _sims, veto_net, verdict


class Network:
    """Six peers of weight 1; this driver is the proposer of height ``history + 1``; ``colluders`` are the
    first two other peers."""

    def __init__(self, history: int) -> None:
        self.net = veto_net([1] * 6)
        vs = self.net.genesis.validators
        self.rule = self.net.genesis.params.verdicts()
        self.me = next(i for i, k in enumerate(self.net.keys) if k.peer_id == vs.proposer(history + 1, 0))
        self.colluders = [i for i in range(6) if i != self.me][:2]
        self.driver = Driver(self.net.keys[self.me], Chain(vs, None, verdict_rule=self.rule), CFG)
        self.proposals: list[Proposal] = []
        self.now = 0

    def texts(self, lyon: Sequence[int], marseille: Sequence[int] = ()) -> list[str]:
        return ["Lyon" if i in lyon else "Marseille" if i in marseille else "Paris" for i in range(6)]

    def fold(self, lyon: Sequence[int], unheard: Sequence[int], absent: Sequence[int] = ()) -> None:
        """A contested value decided at the next height: ``lyon`` answer "Lyon", the others (but ``absent``)
        "Paris"; it carries the verdicts of every answerer but ``unheard`` (Paris judges reject Lyon)."""
        net, texts = self.net, self.texts(lyon)
        query = net.query(f"q{self.driver.core.height}?")
        peers = [i for i in range(6) if i not in absent]
        answers = [net.answer(query, i, texts[i]) for i in peers]
        judges = [p for p in peers if p not in unheard]
        verdicts = [verdict(net, j, query, [net.answer(query, i, texts[i]) for i in range(6)],
                            {i: (-800 if texts[i] == "Lyon" else 800) for i in peers if texts[i] != texts[j]})
                    for j in judges]
        g = net.genesis
        value = grouping.build_value(query.envelope, answers, _sims(answers), [1] * len(answers), 800,
                                     validators_hash=g.validators.set_hash(),
                                     next_validators_hash=g.validators.set_hash(), chain_id=g.chain_id,
                                     verdicts=sorted(verdicts, key=lambda v: v.signer), verdict_rule=self.rule,
                                     total_weight=6)
        height = self.driver.core.height
        self.feed(Committed(height, 0, value), self.now)
        assert self.driver.core.height == height + 1

    def feed(self, inp: object, now: int) -> None:
        """``inp`` at ``now``, the host answering every Embed and Rate at once (this judge rejects "Lyon")."""
        self.now = now
        queue = [inp]
        while queue:
            for effect in self.driver.handle(queue.pop(0), now):  # type: ignore[arg-type]
                if isinstance(effect, Embed):
                    queue.append(Embedded(effect.request, tuple(
                        tuple(1000 if ts[i] == ts[j] else 0 for i in range(len(ts)) for j in range(i + 1, len(ts)))
                        for _, ts in effect.groups)))
                elif isinstance(effect, Rate):
                    queue.append(Rated(effect.request, tuple((p, -1000 if t == "Lyon" else 1000)
                                                             for p, t in effect.answers)))
                elif isinstance(effect, Send) and isinstance(effect.signed.message, Proposal):
                    self.proposals.append(effect.signed.message)

    def ask(self, lyon: Sequence[int], start: int, marseille: Sequence[int] = ()) -> tuple[Signed[Query], int]:
        """A query answered by every peer (``lyon`` answer "Lyon", ``marseille`` "Marseille", the others
        "Paris"); the time its answer quorum (5 of 6) formed."""
        net, texts = self.net, self.texts(lyon, marseille)
        query = net.query(f"q{self.driver.core.height}?")
        self.feed(Received(query, query.signer), start)
        self.feed(Generated(query_id_of(query.envelope), texts[self.me], 5), start + 10)
        others = [i for i in range(6) if i != self.me]
        for t, i in enumerate(others):
            self.feed(Received(net.answer(query, i, texts[i]), None), start + 20 + 10 * t)
        return query, start + 20 + 10 * 3  # the fifth answer

    def verdict_of(self, query: Signed[Query], judge: int, lyon: Sequence[int],
                   marseille: Sequence[int] = ()) -> Signed[Verdict]:
        """``judge``'s verdict on ``query``'s answers of other texts: Lyon rejected, Paris approved, and
        Marseille approved by Paris judges; a Marseille judge rejects both others."""
        entry = self.driver.pool.get(query_id_of(query.envelope))
        assert entry is not None
        answers = [entry.answers[k.peer_id] for k in self.net.keys]
        texts = self.texts(lyon, marseille)
        own = texts[judge]
        return verdict(self.net, judge, query, answers, {
            i: (-1000 if texts[i] == "Lyon" or own == "Marseille" else 1000)
            for i in range(6) if texts[i] != own})


def _hear_honest_judges(n: Network, query: Signed[Query], lyon: Sequence[int], at: int,
                        marseille: Sequence[int] = ()) -> None:
    for j in range(6):
        if j != n.me and j not in lyon:
            n.feed(Received(n.verdict_of(query, j, lyon, marseille), None), at)


def test_after_silent_after_contested_decisions_without_their_verdicts_the_colluders_are_not_waited_for() -> None:
    n = Network(SILENT_AFTER)
    c = n.colluders
    for _ in range(SILENT_AFTER):
        n.fold(c, unheard=c)
    query, quorum = n.ask(c, 1000)
    _hear_honest_judges(n, query, c, quorum + 10)
    assert len(n.proposals) == 1, "every judge not heard is silent: proposed before the grace period ends"
    assert n.now < quorum + GRACE
    value = n.proposals[0].value
    assert value.answer == "Paris" and len(value.verdicts) == 4


def test_one_decision_short_of_silent_the_proposer_still_waits_the_grace_period() -> None:
    n = Network(SILENT_AFTER - 1)
    c = n.colluders
    for _ in range(SILENT_AFTER - 1):
        n.fold(c, unheard=c)
    query, quorum = n.ask(c, 1000)
    _hear_honest_judges(n, query, c, quorum + 10)
    assert not n.proposals
    n.feed(TimerFired(GraceTimer(SILENT_AFTER, 0)), quorum + GRACE)  # the old rule: omission rule, nothing pending
    assert len(n.proposals) == 1 and n.proposals[0].value.answer == "Paris"


def test_silence_counts_consecutive_contested_decisions_only() -> None:
    n = Network(3 * SILENT_AFTER)
    c = n.colluders
    for _ in range(SILENT_AFTER - 1):
        n.fold(c, unheard=c)
    n.fold(c, unheard=[])  # their verdicts carried once: the count starts again
    for _ in range(SILENT_AFTER - 1):
        n.fold(c, unheard=c)
    n.fold([], unheard=range(6))  # unanimous: no verdict needed, nothing counted
    assert n.driver.silent_judges() == []
    n.fold(c, unheard=c)
    assert n.driver.silent_judges() == sorted(n.net.keys[i].peer_id for i in c)


def test_one_verdict_from_a_silent_peer_restores_the_wait() -> None:
    n = Network(SILENT_AFTER)
    c = n.colluders
    old = n.net.query("an old question?")
    for _ in range(SILENT_AFTER):
        n.fold(c, unheard=c)
    # colluder c[0] judges once, on a query this peer never saw: it is waited for again
    answers = [n.net.answer(old, i, t) for i, t in enumerate(n.texts(c))]
    n.feed(Received(verdict(n.net, c[0], old, answers, {}), None), 900)
    query, quorum = n.ask(c, 1000)
    _hear_honest_judges(n, query, c, quorum + 10)
    assert not n.proposals, "c[0] judges: its verdict is waited for until the grace period ends"
    n.feed(TimerFired(GraceTimer(SILENT_AFTER + 1, 0)), quorum + GRACE)
    assert len(n.proposals) == 1 and len(n.proposals[0].value.verdicts) == 4


def test_a_silent_peers_excuse_does_not_cover_a_rejection_still_pending() -> None:
    """Silent colluders (1/3) on "Lyon", one honest peer alone on "Marseille" rejecting "Paris": the colluders'
    verdicts could still lift the rejection of "Paris" above 1/3, so the old waits apply."""
    n = Network(SILENT_AFTER)
    c = n.colluders
    for _ in range(SILENT_AFTER):
        n.fold(c, unheard=c)
    lone = next(i for i in range(6) if i not in (n.me, *c))
    query, quorum = n.ask(c, 1000, marseille=[lone])
    _hear_honest_judges(n, query, c, quorum + 10, marseille=[lone])
    assert not n.proposals
    n.feed(TimerFired(GraceTimer(SILENT_AFTER + 1, 0)), quorum + GRACE)
    assert not n.proposals
    n.feed(TimerFired(GraceTimer(SILENT_AFTER + 1, 0)), quorum + GRACE + GRACE // 2)
    assert len(n.proposals) == 1 and n.proposals[0].value.answer == "Paris"


def test_silent_peers_above_a_third_are_not_excused_the_omission_rule_holds() -> None:
    n = Network(2 * SILENT_AFTER)
    a, b = n.colluders
    third = next(i for i in range(6) if i not in (n.me, a, b))
    for _ in range(SILENT_AFTER):
        n.fold([a, b], unheard=[a, b])
    for _ in range(SILENT_AFTER):  # b does not answer; a and a third peer answer, and never judge (2 of 6)
        n.fold([a, third], unheard=[a, third], absent=[b])
    assert n.driver.silent_judges() == sorted(n.net.keys[i].peer_id for i in (a, b, third))
    lyon = [a, b]  # three silent peers, half the weight; the third on the right side (no rejection pending)
    query, quorum = n.ask(lyon, 2000)
    for j in range(6):
        if j not in (n.me, a, b, third):
            n.feed(Received(n.verdict_of(query, j, lyon), None), quorum + 10)
    assert not n.proposals
    n.feed(TimerFired(GraceTimer(2 * SILENT_AFTER + 1, 0)), quorum + GRACE)
    n.feed(TimerFired(GraceTimer(2 * SILENT_AFTER + 1, 0)), quorum + GRACE + GRACE // 2)
    assert not n.proposals, "half the weight unheard: no valid value, silent or not"
    n.feed(Received(n.verdict_of(query, third, lyon), None), quorum + GRACE + GRACE // 2 + 10)
    assert len(n.proposals) == 1 and len(n.proposals[0].value.verdicts) == 4  # a and b unheard: exactly 1/3


def test_the_silence_table_holds_current_validators_only() -> None:
    net = MembershipNet(n=5)
    chain = net.chain
    chain.verdict_rule = veto_net([1]).genesis.params.verdicts()
    vs = chain.validators_at(1)
    leaver, me = vs.ids[3], vs.ids[0]
    driver = Driver(net.keys[me], chain, DriverConfig(chain_id=CHAIN))

    def contested(height: int, **extras: object) -> Value:
        """Height ``height``'s value as the membership tests build it, but split: the leaver and one other
        member answer "Lyon", the rest "Paris" (3 of 5: contested), and no verdict is carried."""
        base = net.value(height, **extras)  # type: ignore[arg-type]
        at = chain.validators_at(height)
        ids = at.ids
        entry = net.keys[ids[0]]
        query = sign(Query(entry=entry.peer_id, question=f"q{height}?", nonce=height.to_bytes(16, "big"),
                           max_tokens=8, created_ms=0), entry)
        answers = [sign(Answer(query_id=query_id_of(query.envelope), peer=p, model="m",
                               text="Lyon" if p in ids[3:5] else "Paris", gen_ms=5), net.keys[p]) for p in ids]
        return grouping.build_value(
            query.envelope, answers, _sims(answers), [at.weight_of(p) for p in ids], 800,
            validators_hash=base.validators_hash, next_validators_hash=base.next_validators_hash, chain_id=CHAIN,
            leaves=list(base.leaves), last_commit=base.last_commit)

    for h in range(1, 5):
        extras = {"leaves": [net.leave(leaver)]} if h == 1 else {}
        driver.handle(Committed(h, 0, contested(h, **extras)), h)
        stays = h < 4  # a leave committed at height 1 takes effect at the boundary, height 5
        assert (leaver in driver.validators) == stays
        assert driver.statistics()["judge_silence"] == len(driver.validators) == (5 if stays else 4)
    assert leaver not in driver.silent_judges() and len(driver.silent_judges()) == 4  # all missed 4 in a row
