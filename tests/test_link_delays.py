"""``[p2p] link_delays_ms`` on real loopback transports: a peer's messages to a named destination are held for
its delay, those to the others for ``link_delay_ms`` only (the daemon's :func:`peers.daemon.link_shaper`)."""

from __future__ import annotations

from dataclasses import replace

import trio

from multillmn.config import PeerConfig
from multillmn.identity import KeyPair
from peers.daemon import link_shaper
from peers.transport import Transport

KEYS = [KeyPair.from_seed(bytes([40 + i]) * 32) for i in range(3)]
FAST = {"backoff_initial": 0.02, "backoff_max": 0.2, "handshake_timeout": 2.0}


def test_link_shaper_follows_the_config() -> None:
    far, near = KEYS[1].peer_id, KEYS[2].peer_id
    cfg = replace(PeerConfig(), link_delay_ms=30, link_loss=0.25, link_delays_ms=((far, 400),))
    shaper = link_shaper(cfg)
    assert (shaper.condition(far).delay_s, shaper.condition(far).loss) == (0.4, 0.25)
    assert (shaper.condition(near).delay_s, shaper.condition(near).loss) == (0.03, 0.25)
    assert link_shaper(PeerConfig()).condition(far).delay_s == 0.0


async def test_a_per_destination_delay_holds_messages_to_that_peer_only(nursery: trio.Nursery) -> None:
    a, far, near = KEYS
    cfg = replace(PeerConfig(), link_delay_ms=60, link_delays_ms=((far.peer_id, 400),))
    transports = [Transport(k, ("127.0.0.1", 0), {o.peer_id: None for o in KEYS if o is not k},
                            shaper=link_shaper(cfg) if k is a else None, **FAST)  # type: ignore[arg-type]
                  for k in KEYS]
    for t in transports:
        await nursery.start(t.run)
    for t in transports:
        for o in transports:
            if o is not t:
                assert o.listen_port is not None
                t.set_address(o.peer_id, ("127.0.0.1", o.listen_port))
    with trio.fail_after(10):
        while len(transports[0].connected_peers()) < 2:
            await trio.sleep(0.01)
    arrived: dict[str, float] = {}

    async def wait_for(t: Transport) -> None:
        sender, payload = await t.inbound.receive()
        assert (sender, payload) == (a.peer_id, b"ping")
        arrived[t.peer_id] = trio.current_time() - t0

    t0 = trio.current_time()
    with trio.fail_after(5):
        async with trio.open_nursery() as waiting:
            for t in transports[1:]:
                waiting.start_soon(wait_for, t)
            assert transports[0].broadcast_nowait(b"ping") == 2
    print({"far": arrived[far.peer_id], "near": arrived[near.peer_id]})
    assert arrived[far.peer_id] >= 0.4
    assert 0.06 <= arrived[near.peer_id] < 0.3
