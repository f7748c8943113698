"""The broadcast core (peers/broadcast/_core.py) alone and in the deterministic in-memory network.

Network scenarios run :class:`peers.broadcast._simnet.SimNet`: peers on a
plane, seeded jitter, virtual time. A failing scenario names its seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest

from peers.broadcast import (
    MAX_ANNOUNCERS,
    MAX_EXCLUDED,
    MAX_GRAFT_IDS,
    MAX_IHAVE_IDS,
    MAX_PEER_ID_LEN,
    MSG_ID_LEN,
    BroadcastConfig,
    Broadcaster,
    Deliver,
    FrameError,
    Gossip,
    Graft,
    IHave,
    Exclude,
    Prune,
    Schedule,
    Send,
    Suspect,
    arrival_times,
    build_tree,
    decode,
    encode,
    max_frame_len,
    max_latency,
    message_id,
)
from peers.broadcast._core import _ParentTimer
from peers.broadcast._simnet import SimNet, fake_validate, make_payload
from multillmn.canonical import pack

PEERS = [f"p{i:03d}" for i in range(8)]


def _core(me: str = "p000", config: BroadcastConfig | None = None) -> Broadcaster:
    b = Broadcaster(me, fake_validate, config or BroadcastConfig.for_tests())
    b.set_members(PEERS)
    return b


def _sends(effects: list[object]) -> list[tuple[str, object]]:
    return [(e.to, decode(e.frame, max_payload=1 << 20)) for e in effects if isinstance(e, Send)]


# --- frames -----------------------------------------------------------------------------


def test_frames_round_trip() -> None:
    mid = message_id(b"x")
    for frame in (Gossip("p1", b"payload", 3), IHave((("p1", mid), ("p2", mid))), Graft("p1", (mid,)),
                  Prune("p1"), Suspect("p2"), Exclude(7, ("p1", "p2")), Exclude(0, ())):
        assert decode(encode(frame), max_payload=100) == frame
    assert len(mid) == MSG_ID_LEN
    biggest = IHave(tuple(("x" * MAX_PEER_ID_LEN, mid) for _ in range(MAX_IHAVE_IDS)))
    assert len(encode(biggest)) <= max_frame_len(100)
    assert decode(encode(biggest), max_payload=100) == biggest
    widest = Exclude(2**32 - 1, tuple(f"{i:0{MAX_PEER_ID_LEN}d}" for i in range(MAX_EXCLUDED)))
    assert len(encode(widest)) <= max_frame_len(100) and decode(encode(widest), max_payload=100) == widest


@pytest.mark.parametrize("value", [
    [], [9], [1, "p", b"x"], [1, "p", b"x", -1], [1, "p", b"x", 256], [1, "", b"x", 0], [1, "p" * 129, b"x", 0],
    [1, "p", "text", 0], [1, "p", b"x" * 101, 0], [2, [["p", b"short"]]], [2, [["p", b"0" * 16, 1]]],
    [2, [["p", b"0" * 16]] * (MAX_IHAVE_IDS + 1)], [3, "p", [b"0" * 16] * (MAX_GRAFT_IDS + 1)], [3, "p"],
    [4], [4, 5], [True, "p"], ["1", "p"], {"k": 1}, [2, [[["deep"]]]],
    [5], [5, ""], [5, 3], [6, 1], [6, -1, []], [6, 2**32, []], [6, 1, ["b", "a"]], [6, 1, ["a", "a"]],
    [6, 1, ["p"] * (MAX_EXCLUDED + 1)], [6, 1, [""]], [6, "1", []],
])
def test_malformed_frames_raise_frame_error_only(value: object) -> None:
    with pytest.raises(FrameError):
        decode(pack(value), max_payload=100)


def test_random_bytes_raise_frame_error_only() -> None:
    rng = random.Random(4)
    good = encode(Gossip("p001", b"payload" * 3, 2))
    for _ in range(3000):
        data = bytearray(good if rng.random() < 0.5 else os.urandom(rng.randint(0, 64)))
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode(bytes(data), max_payload=100)
        except FrameError:
            pass


# --- one core, step by step ---------------------------------------------------------------


def test_config_validate() -> None:
    BroadcastConfig().validate()
    BroadcastConfig.for_tests().validate()
    for bad in (dict(fanout=0), dict(lazy_delay_s=0.0), dict(graft_timeout_s=float("inf")), dict(exclude_score=5),
                dict(max_seen=0), dict(max_stored=10, max_seen=5), dict(exclude_delay_s=0.0), dict(max_excluded=0),
                dict(max_excluded=MAX_EXCLUDED + 1), dict(max_suspects_per_peer=0)):
        with pytest.raises(ValueError):
            replace(BroadcastConfig(), **bad).validate()  # type: ignore[arg-type]


def test_broadcast_pushes_to_tree_children_and_schedules_digests() -> None:
    b = _core()
    payload = make_payload("p000", b"hello")
    effects = b.broadcast(payload, 0.0)
    sends = _sends(effects)
    assert not [e for e in effects if isinstance(e, Deliver)]  # no Deliver of one's own payload
    assert sorted(to for to, _ in sends) == list(b.tree_children("p000"))
    assert 1 <= len(sends) <= b.config.fanout
    assert all(f == Gossip("p000", payload, 1) for _, f in sends)
    (flush,) = [e for e in effects if isinstance(e, Schedule)]
    digests = _sends(b.fire(flush.timer, flush.delay_s))
    assert digests and all(isinstance(f, IHave) for _, f in digests)
    assert {to for to, _ in digests}.isdisjoint(b.tree_children("p000"))
    assert b.fire(flush.timer, 1.0) == []  # a timer fires once
    with pytest.raises(ValueError):
        b.broadcast(make_payload("p001", b"not mine"), 0.0)


def test_receive_delivers_once_relays_and_prunes_duplicates() -> None:
    b = _core("p003")
    payload = make_payload("p000", b"m")
    effects = b.receive("p001", encode(Gossip("p000", payload, 1)), 0.0)
    assert [e for e in effects if isinstance(e, Deliver)] == [Deliver(payload, "p000", message_id(payload))]
    relayed = sorted(to for to, f in _sends(effects) if isinstance(f, Gossip))
    assert relayed == sorted(set(b.tree_children("p000")) - {"p001"})
    again = b.receive("p002", encode(Gossip("p000", payload, 2)), 0.1)
    assert _sends(again) == [("p002", Prune("p000"))]
    assert b.statistics()["duplicates"] == 1


def test_ihave_then_graft_then_next_announcer_and_score() -> None:
    b = _core("p003")
    payload = make_payload("p000", b"lost")
    mid = message_id(payload)
    (sched,) = b.receive("p005", encode(IHave((("p000", mid),))), 0.0)
    assert isinstance(sched, Schedule) and sched.delay_s == b.config.graft_timeout_s
    assert b.receive("p006", encode(IHave((("p000", mid),))), 0.01) == []  # second announcer remembered
    first = b.fire(sched.timer, 0.25)
    assert [(to, f) for to, f in _sends(first)] in ([("p005", Graft("p000", (mid,)))],
                                                    [("p006", Graft("p000", (mid,)))])
    tried = _sends(first)[0][0]
    (retry,) = [e for e in first if isinstance(e, Schedule)]
    second = b.fire(retry.timer, 0.5)
    other = ({"p005", "p006"} - {tried}).pop()
    assert _sends(second) == [(other, Graft("p000", (mid,)))]
    assert b.score(tried) < 0  # the unanswered graft
    delivered = b.receive(other, encode(Gossip("p000", payload, 3)), 0.6)
    assert any(isinstance(e, Deliver) for e in delivered)
    (retry2,) = [e for e in second if isinstance(e, Schedule)]
    assert b.fire(retry2.timer, 0.75) == []  # stale: received meanwhile
    assert b.statistics()["missing"] == 0


def test_graft_is_answered_and_makes_the_link_eager_prune_stops_it() -> None:
    b = _core("p000")
    payload = make_payload("p000", b"one")
    b.broadcast(payload, 0.0)
    outsider = next(p for p in PEERS[1:] if p not in b.tree_children("p000"))
    answer = b.receive(outsider, encode(Graft("p000", (message_id(payload),))), 0.1)
    assert _sends(answer) == [(outsider, Gossip("p000", payload, 1))]
    assert b.receive(outsider, encode(Graft("p000", (message_id(payload),))), 0.2) == []  # served once
    second = make_payload("p000", b"two")
    assert outsider in [to for to, _ in _sends(b.broadcast(second, 1.0))]
    b.receive(outsider, encode(Prune("p000")), 1.1)
    assert outsider not in [to for to, _ in _sends(b.broadcast(make_payload("p000", b"three"), 2.0))]


def test_invalid_and_mislabelled_payloads_are_rejected_and_scored() -> None:
    b = _core("p003")
    forged = bytearray(make_payload("p000", b"body"))
    forged[5] ^= 1
    assert b.receive("p001", encode(Gossip("p000", bytes(forged), 1)), 0.0) == []
    assert b.receive("p002", encode(Gossip("p001", make_payload("p000", b"x"), 1)), 0.0) == []
    stats = b.statistics()
    assert stats["rejected_invalid-payload"] == 1 and stats["rejected_origin-mismatch"] == 1
    assert b.score("p001") < 0 and b.score("p002") < 0
    assert stats["seen"] == 0


def test_hostile_input_never_raises_and_is_counted() -> None:
    b = _core("p003")
    rng = random.Random(9)
    junk = [b"", b"\xc1", os.urandom(40), pack([1, "p000", b"x", 0, 1]), pack([2, [["zz", b"0" * 16]]]),
            b"\x00" * (max_frame_len(b.config.max_payload) + 1), pack([3, "nobody", []]), pack([4, "nobody"])]
    for data in junk:
        assert b.receive("p001", data, 0.0) == []
    assert b.receive("stranger", encode(Prune("p000")), 0.0) == []
    assert b.receive("p003", encode(Prune("p000")), 0.0) == []  # from myself
    for _ in range(500):
        assert isinstance(b.receive("p001", bytes(rng.randrange(256) for _ in range(rng.randint(0, 30))), 0.0),
                          list)
    assert b.fire(object(), 0.0) == []
    stats = b.statistics()
    for reason in ("malformed", "oversized", "not-member", "ihave-origin", "graft-origin", "prune-origin"):
        assert stats[f"rejected_{reason}"] >= 1, reason


# --- bounds under a flood from one hostile peer ----------------------------------------------


def _within_bounds(b: Broadcaster) -> None:
    c, s = b.config, b.statistics()
    assert s["seen"] <= c.max_seen
    assert s["stored"] <= c.max_stored and s["stored_bytes"] <= c.max_stored_bytes
    assert s["missing"] <= c.max_missing
    assert s["lazy_queue"] <= c.max_lazy
    assert s["served"] <= c.max_served
    assert s["scores"] <= len(b.members) and s["views"] <= len(b.members)
    assert s["grafted_links"] <= len(b.members) * c.max_grafted
    assert s["pruned_links"] <= len(b.members) ** 2
    assert s["excluded_relays"] <= len(b.members) * c.max_excluded
    assert s["suspects_pending"] <= c.max_excluded and s["watched"] <= c.max_missing


def test_flood_from_one_hostile_peer_keeps_every_table_bounded() -> None:
    b = _core("p003")
    hostile = "p007"
    rng = random.Random(13)
    schedules: list[Schedule] = []
    now = 0.0
    for i in range(400):  # fake digests
        entries = tuple((rng.choice(PEERS), os.urandom(16)) for _ in range(MAX_IHAVE_IDS))
        schedules += [e for e in b.receive(hostile, encode(IHave(entries)), now) if isinstance(e, Schedule)]
        now += 0.001
    assert b.statistics()["missing"] <= b.config.max_missing_per_peer
    for i in range(3000):  # bogus frames of every kind, oversized ones, validly signed floods
        kind = i % 8
        if kind == 0:
            frame = encode(Gossip(rng.choice(PEERS), os.urandom(rng.randint(1, 200)), 1))
        elif kind == 1:
            frame = os.urandom(max_frame_len(b.config.max_payload) + 1)
        elif kind == 2:
            frame = encode(Graft(rng.choice(PEERS), tuple(os.urandom(16) for _ in range(MAX_GRAFT_IDS))))
        elif kind == 3:
            frame = encode(Prune(rng.choice(PEERS)))
        elif kind == 6:
            frame = encode(Suspect(rng.choice(PEERS)))
        elif kind == 7:  # its own tree's exclusions, as often as it likes
            frame = encode(Exclude(i, tuple(sorted(rng.sample(PEERS, 5)))))
        elif kind == 4:  # the hostile peer's own, validly "signed" messages: a flood of real traffic
            frame = encode(Gossip(hostile, make_payload(hostile, os.urandom(64)), 1))
        else:
            frame = encode(Gossip(hostile, make_payload(hostile, os.urandom(b.config.max_payload - 200)), 1))
        for e in b.receive(hostile, frame, now):
            if isinstance(e, Schedule):
                schedules.append(e)
        now += 0.001
        if i % 100 == 0:
            _within_bounds(b)
    for e in schedules:  # let every timer fire: grafts to the liar go unanswered
        b.fire(e.timer, now + 1)
    _within_bounds(b)
    stats = b.statistics()
    assert stats["rejected_oversized"] == 375 and stats["rejected_invalid-payload"] >= 300
    assert stats["rejected_exclude-refused"] > 300  # at most one EXCLUDE per exclude_delay_s / 2
    assert all(not b.exclusions(p) for p in PEERS if p not in (hostile, b.me))  # it speaks for its own tree only
    assert len(b.exclusions(b.me)) <= b.config.max_suspects_per_peer  # and has my tree drop its own parents
    assert stats["rejected_missing-full"] > 0
    assert b.score(hostile) <= b.config.exclude_score


def test_many_announcers_are_capped() -> None:
    b = _core("p003")
    mid = os.urandom(16)
    for p in PEERS:
        if p != "p003":
            b.receive(p, encode(IHave((("p000", mid),))), 0.0)
    assert len(b._missing[mid].announcers) <= MAX_ANNOUNCERS  # noqa: SLF001


# --- the in-memory network --------------------------------------------------------------------


def _run(net: SimNet, origins: list[str], rounds: int) -> list[dict[str, float]]:
    """Broadcast once from each origin per round (one at a time); per round: worst delivery ratio over the
    honest peers, max latency, duplicates per delivery, grafts."""
    honest = [p for p in net.ids if net.behaviour(p) == "honest"]
    out = []
    for r in range(rounds):
        dup0, graft0 = net.total("duplicates"), net.total("grafts_sent")
        ids = []
        for o in origins:
            ids.append(net.broadcast(o, f"round {r} from {o}".encode()))
            net.run()
        delivered = sum(len(net.records[i].delivered) - 1 for i in ids)
        out.append({
            "ratio": min(len(set(net.records[i].delivered) & set(honest)) / len(honest) for i in ids),
            "max_latency": max(max(t - net.records[i].start for p, t in net.records[i].delivered.items()
                                   if p in honest) for i in ids),
            "dups": (net.total("duplicates") - dup0) / delivered,
            "grafts": net.total("grafts_sent") - graft0,
        })
    return out


def test_healthy_network_delivers_everything_without_duplicates() -> None:
    net = SimNet(24, seed=1)
    origins = net.ids[:6]
    rounds = _run(net, origins, 3)
    assert all(r["ratio"] == 1.0 for r in rounds)
    assert all(r["dups"] <= 0.2 for r in rounds[1:]), rounds
    assert net.unknown_deliveries == 0
    for o in origins:  # the origin sends at most fan-out full copies per broadcast (relaying others' is extra)
        own = net.nodes[o].tree_children(o)
        assert len(own) <= net.config.fanout
    origin = net.ids[0]
    before = net.nodes[origin].statistics()
    net.broadcast(origin, b"count me")
    after = net.nodes[origin].statistics()
    assert 1 <= after["sent_gossip"] - before["sent_gossip"] <= net.config.fanout
    net.run()


@pytest.mark.parametrize("seed", [3, 4])
def test_a_quarter_of_relays_dropping(seed: int) -> None:
    net = SimNet(32, seed=seed)
    bad = random.Random(seed).sample(net.ids[1:], 8)
    net.behaviours = dict.fromkeys(bad, "drop")
    origins = [p for p in net.ids if p not in bad][:6]
    healthy = _run(SimNet(32, seed=seed), origins, 1)[0]["max_latency"]
    rounds = _run(net, origins, 5)
    assert all(r["ratio"] == 1.0 for r in rounds), f"seed {seed}: {rounds}"
    first, last = rounds[0], rounds[-1]
    assert first["grafts"] > 0  # the repair did work
    assert last["grafts"] <= first["grafts"] // 10, f"seed {seed}: later broadcasts still graft: {rounds}"
    assert last["max_latency"] < first["max_latency"]
    assert last["max_latency"] <= 2.5 * healthy, f"seed {seed}: {last} vs healthy {healthy}"
    assert all(r["dups"] <= 0.2 for r in rounds[2:]), rounds
    # the droppers are scored down by someone they failed
    scored = {b for b in bad if any(net.nodes[p].score(b) < 0 for p in net.ids if p not in bad)}
    assert len(scored) >= len(bad) // 2


def test_corrupting_relays_cannot_stop_delivery() -> None:
    seed = 6
    net = SimNet(32, seed=seed)
    bad = random.Random(seed).sample(net.ids[1:], 8)
    net.behaviours = dict.fromkeys(bad, "corrupt")
    origins = [p for p in net.ids if p not in bad][:6]
    rounds = _run(net, origins, 4)
    assert all(r["ratio"] == 1.0 for r in rounds), rounds
    assert net.total("rejected_invalid-payload") > 0
    assert net.unknown_deliveries == 0  # nothing corrupted was ever delivered
    excluded = {b for b in bad if any(net.nodes[p].score(b) <= net.config.exclude_score
                                      for p in net.ids if p not in bad)}
    assert excluded, "no corrupting relay was scored out"
    assert rounds[-1]["grafts"] <= rounds[0]["grafts"] // 5


def test_hostile_peer_in_the_network_cannot_stop_delivery_or_grow_tables() -> None:
    config = BroadcastConfig.for_tests()
    net = SimNet(16, seed=8, config=config)
    hostile = net.ids[5]
    net.behaviours = {hostile: "drop"}
    rng = random.Random(8)
    for to in net.ids:
        if to == hostile:
            continue
        for _ in range(20):
            entries = tuple((rng.choice(net.ids), os.urandom(16)) for _ in range(MAX_IHAVE_IDS))
            net.inject(hostile, to, encode(IHave(entries)))
            net.inject(hostile, to, os.urandom(64))
    origins = [p for p in net.ids if p != hostile][:4]
    rounds = _run(net, origins, 3)
    assert all(r["ratio"] == 1.0 for r in rounds)
    for p in net.ids:
        _within_bounds(net.nodes[p])


def test_same_seed_same_run() -> None:
    def once() -> tuple[object, ...]:
        net = SimNet(16, seed=2)
        net.behaviours = {net.ids[3]: "drop"}
        _run(net, net.ids[:3], 2)
        return tuple(sorted(net.frames_sent.items())), net.now
    assert once() == once()


def test_a_silent_tree_parent_is_routed_around_for_that_origin() -> None:
    b = _core("p003")
    origin = next(o for o in PEERS if o != "p003" and b._view(o).parent not in (None, o))  # noqa: SLF001
    silent = b._view(origin).parent  # noqa: SLF001
    payload = make_payload(origin, b"never forwarded")
    mid = message_id(payload)
    announcer = next(p for p in PEERS if p not in ("p003", origin, silent))
    (sched,) = b.receive(announcer, encode(IHave(((origin, mid),))), 0.0)
    sends = _sends(b.fire(sched.timer, 0.25))
    assert sends == [(announcer, Graft(origin, (mid,)))]  # not blamed yet: it may only be late
    assert b.score(silent) == 0
    effects = b.receive(announcer, encode(Gossip(origin, payload, 2)), 0.3)
    (check,) = [e for e in effects if isinstance(e, Schedule) and isinstance(e.timer, _ParentTimer)]
    # judged silent, not late, only past the silence timeout plus the round trip to it
    assert check.delay_s == b.config.silence_timeout_s + b.matrix.get("p003", silent) + b.matrix.get(silent, "p003")
    sends = _sends(b.fire(check.timer, 0.3 + check.delay_s))  # still nothing from it: silent
    assert (origin, Suspect(silent)) in sends  # told to the origin, which owns the tree
    (replacement,) = [to for to, f in sends if f == Graft(origin, ())]  # subscribe to the new parent
    assert replacement != silent and b._view(origin).parent == replacement  # noqa: SLF001
    assert b.score(silent) < 0
    assert b.statistics()["failed_parents"] == 1
    # the replacement, on its side, now pushes that origin's messages to us
    r = _core(replacement)
    assert "p003" not in r.tree_children(origin)
    r.receive("p003", encode(Graft(origin, ())), 0.6)
    payload = make_payload(origin, b"next")
    if replacement == origin:  # the silent relay's slot at the origin was freed for us
        pushed = r.broadcast(payload, 0.4)
    else:
        pushed = r.receive(origin, encode(Gossip(origin, payload, 1)), 0.4)
    assert "p003" in [to for to, _ in _sends(pushed)]


# --- exclusions: an origin's tree around the relays its members saw fail ----------------------


def _relay_and_child(b: Broadcaster, origin: str) -> tuple[str, str]:
    tree = b.base_tree(origin)
    relay = next(n for n in sorted(tree) if tree[n] and n != origin)
    return relay, tree[relay][0]


def test_an_origin_excludes_only_a_reporters_own_parent_and_tells_every_member() -> None:
    net = SimNet(40, seed=5)
    origin = net.ids[0]
    o = net.nodes[origin]
    relay, child = _relay_and_child(o, origin)
    stranger = next(p for p in net.ids if p not in (origin, relay, child))
    assert o.receive(child, encode(Suspect(stranger)), 0.0) == []  # not its parent: refused
    assert o.receive(stranger, encode(Suspect(relay)), 0.0) == []  # not the stranger's parent either
    assert o.statistics()["rejected_suspect-not-parent"] == 2
    (publish,) = o.receive(child, encode(Suspect(relay)), 0.0)
    assert isinstance(publish, Schedule) and publish.delay_s == o.config.exclude_delay_s
    assert o.receive(child, encode(Suspect(relay)), 0.01) == []  # already pending
    sends = _sends(o.fire(publish.timer, 0.25))
    assert sorted(to for to, _ in sends) == [p for p in net.ids if p != origin]  # directly, to everyone
    assert {f for _, f in sends} == {Exclude(1, (relay,))}
    assert o.exclusions(origin) == {relay}
    assert o.view_tree(origin, {relay})[relay] == ()  # a leaf now; its children hang elsewhere
    assert o.fire(publish.timer, 0.3) == []  # once


def test_one_hostile_peer_excludes_at_most_a_few_honest_relays_each_its_own_parent() -> None:
    net = SimNet(60, seed=7)
    origin = net.ids[0]
    o = net.nodes[origin]
    arrival = arrival_times(o.base_tree(origin), origin, net.latency)
    hostile = max(arrival, key=lambda n: (arrival[n], n))  # deep in the tree: many parents to walk up
    accepted = 0
    now = 0.0
    for _ in range(3 * o.config.max_suspects_per_peer):
        for target in net.ids:  # it accuses everyone; only its current parent can count
            if target not in (origin, hostile):
                for e in o.receive(hostile, encode(Suspect(target)), now):
                    if isinstance(e, Schedule):
                        o.fire(e.timer, now + e.delay_s)
        now += 1.0
        if len(o.exclusions(origin)) == accepted:
            break
        accepted = len(o.exclusions(origin))
    assert 1 <= len(o.exclusions(origin)) <= o.config.max_suspects_per_peer
    assert o.statistics()["rejected_suspect-full"] + o.statistics()["rejected_suspect-not-parent"] > 0


def test_exclude_is_taken_from_its_origin_only_fresh_and_moves_my_parent() -> None:
    net = SimNet(40, seed=5)
    origin = net.ids[0]
    relay, me = _relay_and_child(net.nodes[origin], origin)
    b = net.nodes[me]
    hostile = next(p for p in net.ids if p not in (origin, relay, me))
    assert b.receive(hostile, encode(Exclude(1, (relay,))), 0.0) == []  # speaks for the hostile peer's tree only
    assert b.exclusions(origin) == frozenset() and b._view(origin).parent == relay  # noqa: SLF001
    effects = b.receive(origin, encode(Exclude(1, (relay,))), 0.0)
    new = b._view(origin).parent  # noqa: SLF001
    assert b.exclusions(origin) == {relay} and new not in (relay, None)
    if new != origin:
        assert _sends(effects) == [(new, Graft(origin, ()))]  # so an old PRUNE there does not cut me off
    assert b.receive(origin, encode(Exclude(1, (relay,))), 1.0) == []  # not newer
    assert b.receive(origin, encode(Exclude(2, ())), 0.1) == []  # too soon after the last (< exclude_delay_s / 2)
    assert b.statistics()["rejected_exclude-stale"] == 1 and b.statistics()["rejected_exclude-refused"] == 1
    assert _sends(b.receive(origin, encode(Exclude(3, ())), 2.0)) == [(relay, Graft(origin, ()))]
    assert b.exclusions(origin) == frozenset() and b._view(origin).parent == relay  # noqa: SLF001


def _settled_vs_offline(n: int, seed: int, rounds: int) -> list[float]:
    """Per round, the worst over 3 origins of (max delivery latency) / (offline tree avoiding the droppers)."""
    net = SimNet(n, seed=seed)
    bad = set(random.Random(seed).sample(net.ids[3:], n // 4))
    net.behaviours = dict.fromkeys(bad, "drop")
    honest = [p for p in net.ids if p not in bad]
    out = []
    for r in range(rounds):
        worst = 0.0
        for o in net.ids[:3]:
            record = net.records[net.broadcast(o, f"round {r}".encode())]
            net.run()
            assert set(honest) <= set(record.delivered), f"seed {seed}: round {r} missed some"
            latency = max(t - record.start for p, t in record.delivered.items() if p in honest)
            offline = max_latency(build_tree(o, net.ids, net.latency, net.config.fanout, avoid=bad), o, net.latency)
            worst = max(worst, latency / offline)
        out.append(worst)
    for o in net.ids[:3]:  # the origins excluded droppers, and few honest relays (late ones, in round 1)
        excluded = net.nodes[o].exclusions(o)
        assert excluded & bad and len(excluded - bad) <= 2, (o, sorted(excluded - bad))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_quarter_dropping_settles_within_the_bound_of_the_offline_tree(seed: int) -> None:
    """The gap of issue 13: repaired paths used to follow whichever digest neighbour answered first (1.5-1.7x
    the offline tree here, 2.5x at 1,000 peers); with exclusions the origin's tree is rebuilt around the
    droppers its members reported, and every member follows it."""
    ratios = _settled_vs_offline(64, seed, 5)
    assert ratios[0] > 2  # the first round pays the repairs
    assert max(ratios[-2:]) <= 1.25, f"seed {seed}: {[round(r, 2) for r in ratios]}"


def test_a_grafted_origin_is_pruned_once_the_tree_parent_delivers() -> None:
    """The origin that answered a graft pushes to us from then on; when our tree parent's copy comes too, the
    origin's is the duplicate to stop (it used to be exempt: up to max_grafted extra copies per broadcast)."""
    b = _core("p003")
    origin = next(o for o in PEERS if o != "p003" and b._view(o).parent not in (None, o))  # noqa: SLF001
    parent = b._view(origin).parent  # noqa: SLF001
    payload = make_payload(origin, b"twice")
    b.receive(origin, encode(Gossip(origin, payload, 1)), 0.0)  # the grafted origin first
    assert _sends(b.receive(parent, encode(Gossip(origin, payload, 2)), 0.01)) == [(origin, Prune(origin))]
    other = make_payload(origin, b"again")
    b.receive(parent, encode(Gossip(origin, other, 2)), 0.1)  # the tree parent first
    assert _sends(b.receive(origin, encode(Gossip(origin, other, 1)), 0.11)) == [(origin, Prune(origin))]
    third = make_payload(origin, b"third")
    stranger = next(p for p in PEERS if p not in ("p003", origin, parent))
    b.receive(stranger, encode(Gossip(origin, third, 3)), 0.2)
    assert _sends(b.receive(parent, encode(Gossip(origin, third, 2)), 0.21)) == [(stranger, Prune(origin))]
