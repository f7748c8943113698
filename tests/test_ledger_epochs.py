"""The ledger's committee follows the epochs: one hashgraph (segment) per epoch (ADR 0017).

Four genesis peers with an epoch of 4 heights; a fifth peer's join and the
fourth peer's leave are committed at height 1, so the set changes at height
5. Five :class:`LedgerService` peers gossip over in-memory links in virtual
time and are handed the certificates of heights 1 to 9 (built on a chain of
real values, as the node would post them): segment 0 (genesis set) orders
heights 1-4 and seals, segment 1 (the leaver out, the joiner in) orders 5-8
and seals, segment 2 holds 9. Every peer ends with the same entries and
state hash; the leaver creates no event from epoch 1 on, the joiner creates
events only from epoch 1 on; a restart from the store gives the same state.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from consensus import grouping
from consensus.chain import Chain
from consensus.validators import ValidatorSet
from consensus.messages import Answer, Envelope, Join, Leave, Query, Signed, Value, VerifiedCache, Vote, query_id_of, sign
from dag import StoreError, sign_event
from dag.event import encode_event
from dag.messages import DagEvents
from multillmn.certificate import build_certificate
from multillmn.genesis import Genesis, Params
from multillmn.identity import KeyPair, PeerId
from peers.ledger import MAX_OPEN_SEGMENTS, LedgerService, check_store
from peers.wire import decode_message
from tests.test_ledger_admission import _Links

KEYS = [KeyPair.from_seed(bytes([i + 91]) * 32) for i in range(5)]
GENESIS = Genesis.build("epochs", [(f"peer{i}", k.public_key, 1) for i, k in enumerate(KEYS[:4])],
                        Params(epoch_length=4, models=("m",)))
BY_ID = {k.peer_id: k for k in KEYS}
LEAVER, JOINER = KEYS[3].peer_id, KEYS[4].peer_id
LAST = 9


def _value(chain: Chain, height: int, joins: tuple[Signed[Join], ...] = (),
           leaves: tuple[Signed[Leave], ...] = ()) -> Value:
    vs = chain.validators_at(height)
    entry = BY_ID[vs.ids[0]]
    query = sign(Query(entry=entry.peer_id, question=f"q{height}?", nonce=height.to_bytes(16, "big"),
                       max_tokens=8, created_ms=0), entry)
    answers = [sign(Answer(query_id=query_id_of(query.envelope), peer=p, model="m", text="Paris", gen_ms=50),
                    BY_ID[p]) for p in vs.ids]
    commit: tuple[Envelope, ...] = ()
    if height > 1:
        assert chain.last_set is not None
        commit = tuple(sign(Vote(chain_id=GENESIS.chain_id, type="precommit", height=height - 1, round=0,
                                 value_id=chain.last_value_id, voter=p), BY_ID[p]).envelope
                       for p in chain.last_set.ids)
    return grouping.build_value(
        query.envelope, answers, [1000] * grouping.pair_count(len(answers)), [vs.weight_of(p) for p in vs.ids],
        GENESIS.params.similarity_threshold, validators_hash=vs.set_hash(),
        next_validators_hash=chain.validators_at(height + 1).set_hash(), chain_id=GENESIS.chain_id,
        joins=[j.envelope for j in joins], leaves=[x.envelope for x in leaves], last_commit=commit)


def _history() -> tuple[list[dict[str, Any]], dict[int, ValidatorSet]]:
    """Certificates of heights 1..LAST (join and leave committed at 1, effective at 5) and the set of each."""
    chain = GENESIS.chain()
    joiner = KEYS[4]
    join = sign(Join(chain_id=GENESIS.chain_id, peer_id=joiner.peer_id, public_key=joiner.public_key,
                     moniker="joiner", address="10.0.0.5:26656", model="m", created_ms=1), joiner)
    leave = sign(Leave(chain_id=GENESIS.chain_id, peer_id=LEAVER, created_ms=2), KEYS[3])
    certs = []
    sets = {}
    for h in range(1, LAST + 1):
        value = _value(chain, h, (join,), (leave,)) if h == 1 else _value(chain, h)
        assert chain.check_extras(value, h) is None
        vs = sets[h] = chain.validators_at(h)
        precommits = tuple(sign(Vote(chain_id=GENESIS.chain_id, type="precommit", height=h, round=0,
                                     value_id=value.value_id(), voter=p), BY_ID[p]) for p in vs.ids)
        certs.append(json.loads(json.dumps(build_certificate(GENESIS, h, 0, value, precommits, validators=vs))))
        chain.apply(h, value)
    assert LEAVER in sets[4] and LEAVER not in sets[5]
    assert JOINER not in sets[4] and JOINER in sets[5]
    return certs, sets


CERTS, SETS = _history()


def _entries(svc: LedgerService) -> list[tuple[str, bytes]]:
    return [(e.type, e.tx) for e in svc.ledger.page(0, 1000)]


NEWCOMER = KeyPair.from_seed(bytes([99]) * 32)


async def _run(paths: list[Path | None], *, hook: bool = False, feed: bool = True, snapshot_every: int = 256,
               newcomer: bool = False, wrong_hook: bool = False) -> list[LedgerService]:
    """Five services (a sixth with nothing, ``newcomer``) gossiping until all hold heights 1..LAST alike;
    ``feed``: every member posts each certificate as its node would."""
    keys = KEYS + [NEWCOMER] * newcomer
    ids = [k.peer_id for k in keys]
    links = _Links(ids)
    svcs = [LedgerService.open(k, GENESIS, links.endpoint(k.peer_id), paths[i] if i < len(paths) else None,
                               sync_interval_ms=50, snapshot_every=snapshot_every)
            for i, k in enumerate(keys)]
    public = {k.peer_id: k.public_key for k in keys}

    async def dispatch(svc: LedgerService) -> None:
        cache = VerifiedCache()
        async for peer, payload in links.channels[svc.key.peer_id][1]:
            svc.handle(peer, decode_message(payload, public.get, cache=cache))

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for svc in svcs:
                nursery.start_soon(dispatch, svc)
                await nursery.start(svc.run)
            for h, cert in enumerate(CERTS if feed else [], start=1):
                for svc in svcs:
                    svc.submit_certificate(h, cert)
                    if hook and h == 3:  # the node's chain knows epoch 1's set at 5 - delay
                        wrong = wrong_hook and svc is svcs[0]  # a bug's set: the ledger's own chain decides
                        svc.set_epoch_validators(1, SETS[4] if wrong else SETS[5])
                await trio.sleep(1.0)  # about a height's pace: each certificate is ordered before the next
            while not all(s.highest_height() == LAST and s.current == 2 for s in svcs) \
                    or len({s.state_hash() for s in svcs}) != 1:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    return svcs


@pytest.mark.parametrize("hook,snapshot_every,wrong_hook", [(True, 256, False), (False, 5, False), (True, 256, True)],
                         ids=["node-hook", "ledger-only", "wrong-hook"])
async def test_the_committee_changes_at_the_epoch_boundary(autojump_clock: trio.testing.MockClock, tmp_path: Path,
                                                           hook: bool, snapshot_every: int, wrong_hook: bool) -> None:
    paths: list[Path | None] = [tmp_path / f"peer{i}.sqlite" for i in range(5)]
    svcs = await _run(paths, hook=hook, snapshot_every=snapshot_every, wrong_hook=wrong_hook)
    entries = [_entries(s) for s in svcs]
    assert all(e == entries[0] for e in entries)
    assert [t for t, _ in entries[0]].count("certificate") == LAST
    for svc in svcs:
        assert svc.sealed(0) and svc.sealed(1) and not svc.sealed(2)
        seg0, seg1 = svc.segment(0), svc.segment(1)
        assert seg0 is not None and seg1 is not None
        assert set(seg0.validators.ids) == {k.peer_id for k in KEYS[:4]}
        assert set(seg1.validators.ids) == {k.peer_id for k in KEYS[:3]} | {JOINER}
        assert seg1.validators == SETS[5]  # the set (and weights) in force at the first height
        assert seg0.height(LEAVER) > 0 and seg1.height(LEAVER) == 0  # the leaver stops in epoch 1
        assert seg0.height(JOINER) == 0 and seg1.height(JOINER) > 0  # the joiner starts in epoch 1
        assert all(ev.epoch == 1 for ev in seg1)
    leaver, joiner = svcs[3], svcs[4]
    assert leaver.observer and not joiner.observer
    stats = [s.statistics()["segments"] for s in svcs]
    assert len({(st[0]["applied"], st[1]["applied"]) for st in stats}) == 1  # every peer sealed at one event
    # segments hold at most MAX_OPEN_SEGMENTS unsealed
    assert all(sum(not x["sealed"] for x in st.values()) <= MAX_OPEN_SEGMENTS for st in stats)

    state = svcs[0].state_hash()
    orders = {e: svcs[0].segment(e).order_hashes() for e in range(3)}  # type: ignore[union-attr]
    for i, k in enumerate(KEYS):  # the stores were closed when the services stopped
        again = LedgerService.open(k, GENESIS, None, paths[i])
        try:
            assert again.state_hash() == state and again.current == 2 and _entries(again) == entries[0]
            assert again.sealed(0) and again.sealed(1)
            for e in range(2):
                got = again.segment(e)
                assert got is not None and got.order_hashes()[:len(orders[e])] == orders[e][:len(got.order_hashes())]
        finally:
            again.close()


def test_events_of_an_epoch_not_open_are_refused_and_sealed_ones_ignored() -> None:
    ids = [k.peer_id for k in KEYS]
    links = _Links(ids)
    svc = LedgerService.open(KEYS[0], GENESIS, links.endpoint(ids[0]), None)
    stray = sign_event(KEYS[1], seq=0, self_parent=None, other_parent=None, timestamp=1, epoch=2)
    msg = sign(DagEvents(sender=ids[1], events=(encode_event(stray),), epoch=2), KEYS[1])
    svc.handle(ids[1], msg)
    assert svc.segment(2) is None and svc.rejects.snapshot().get("dag", 0) == 1
    # the next epoch opens only with its set (from the node), and no further
    svc.set_epoch_validators(2, SETS[9])
    assert svc.segment(2) is None
    svc.set_epoch_validators(1, SETS[5])
    assert svc.segment(1) is not None and svc.current == 0
    # a certificate of epoch 1 waits for its segment; one of a peer outside epoch 1's set is not queued
    assert svc.submit_certificate(5, CERTS[4]) is not None
    leaver = LedgerService.open(KEYS[3], GENESIS, links.endpoint(ids[3]), None)
    leaver.set_epoch_validators(1, SETS[5])
    assert leaver.submit_certificate(5, CERTS[4]) is None


def _schema1(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE events (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, creator TEXT NOT NULL,
                                 seq INTEGER NOT NULL, body BLOB NOT NULL);
            CREATE TABLE consensus_order (position INTEGER PRIMARY KEY,
                                          event_hash BLOB NOT NULL UNIQUE REFERENCES events(hash));
            INSERT INTO meta VALUES ('schema', 1);
        """)


def test_a_schema_1_store_gives_one_clear_line_and_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _schema1(path)
    before = path.read_bytes()
    for attempt in (lambda: check_store(path, GENESIS), lambda: LedgerService.open(KEYS[0], GENESIS, None, path)):
        with pytest.raises(StoreError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and "schema version 1" in message and "move the file aside" in message
        assert f"mv {path} {path}.v1" in message
    assert path.read_bytes() == before  # nothing rewritten: the operator's data stays as it was


async def test_a_peer_with_nothing_walks_the_sealed_segments_from_restarted_peers(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """After a run, every peer restarts from its store and a sixth peer, outside every set and with an empty
    store, pulls segment 0, seals it, pulls segment 1, ... and reaches the same entries and state."""
    paths: list[Path | None] = [tmp_path / f"peer{i}.sqlite" for i in range(5)]
    first = await _run(paths, snapshot_every=7)
    state, entries = first[0].state_hash(), _entries(first[0])
    again = await _run(paths, feed=False, newcomer=True)
    newcomer = again[-1]
    assert newcomer.state_hash() == state and _entries(newcomer) == entries
    assert newcomer.sealed(0) and newcomer.sealed(1) and newcomer.current == 2
    assert newcomer.observer and newcomer.created == 0


async def test_a_member_restarted_from_its_store_after_the_boundary_catches_up(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """A member stops during epoch 0 (its store holds part of segment 0), the others go on through epoch 1;
    restarted from its store, it finishes segment 0, seals it where the others did, and reaches their state."""
    ids = [k.peer_id for k in KEYS]
    links = _Links(ids)
    public = {k.peer_id: k.public_key for k in KEYS}
    path = tmp_path / "peer1.sqlite"

    def start(i: int) -> LedgerService:
        return LedgerService.open(KEYS[i], GENESIS, links.endpoint(ids[i]), path if i == 1 else None,
                                  sync_interval_ms=50, snapshot_every=3)

    svcs = [start(i) for i in range(5)]
    scopes: dict[int, trio.CancelScope] = {}

    async def serve(i: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scopes[i]:
            async with trio.open_nursery() as inner:
                await inner.start(svcs[i].run)
                task_status.started()
                cache = VerifiedCache()
                async for peer, payload in links.channels[ids[i]][1]:
                    svcs[i].handle(peer, decode_message(payload, public.get, cache=cache))

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                await nursery.start(serve, i)
            for h, cert in enumerate(CERTS, start=1):
                if h == 3:
                    while svcs[1].highest_height() < 2:
                        await trio.sleep(0.1)
                    scopes[1].cancel()  # stopped: its store is closed, what it was sent waits in its channel
                for i, svc in enumerate(svcs):
                    if i != 1 or h < 3:
                        svc.submit_certificate(h, cert)
                await trio.sleep(1.0)
            others = [s for i, s in enumerate(svcs) if i != 1]
            while not all(s.highest_height() == LAST and s.current == 2 for s in others):
                await trio.sleep(0.1)
            assert svcs[1].store is None  # closed
            svcs[1] = start(1)
            assert svcs[1].current == 0 and 2 <= svcs[1].highest_height() < 4
            await nursery.start(serve, 1)
            while not (svcs[1].highest_height() == LAST and svcs[1].current == 2
                       and len({s.state_hash() for s in svcs}) == 1):
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert _entries(svcs[1]) == _entries(svcs[0])
    applied = [(s.statistics()["segments"][0]["applied"], s.statistics()["segments"][1]["applied"]) for s in svcs]
    assert len(set(applied)) == 1  # it sealed both segments at the same events as everyone
