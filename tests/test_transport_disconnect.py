"""``Transport.disconnect`` / ``reconnect`` (the testnet's disconnect perturbation): traffic stops both ways."""

from __future__ import annotations

import trio

from multillmn.identity import KeyPair
from peers.transport import Transport


async def _linked(a: Transport, b: Transport) -> bool:
    return a.connected_peers() == [b.peer_id] and b.connected_peers() == [a.peer_id]


async def _wait(pred: object, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not await pred():  # type: ignore[operator]
            await trio.sleep(0.02)


async def test_a_disconnected_transport_neither_sends_nor_receives_until_reconnected() -> None:
    ka, kb = KeyPair.generate(), KeyPair.generate()
    a = Transport(ka, ("127.0.0.1", 0), {kb.peer_id: None}, backoff_initial=0.05, backoff_max=0.2)
    b = Transport(kb, ("127.0.0.1", 0), {ka.peer_id: None}, backoff_initial=0.05, backoff_max=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        assert a.listen_port is not None and b.listen_port is not None
        a.set_address(kb.peer_id, ("127.0.0.1", b.listen_port))
        b.set_address(ka.peer_id, ("127.0.0.1", a.listen_port))
        await _wait(lambda: _linked(a, b))
        assert a.send_nowait(kb.peer_id, b"before")
        with trio.fail_after(5):
            assert await b.inbound.receive() == (ka.peer_id, b"before")

        a.disconnect()
        assert a.status()["disconnected"] is True

        async def cut() -> bool:
            sa, sb = a.statistics().peers[kb.peer_id], b.statistics().peers[ka.peer_id]
            return not (sa.connected or sa.inbound_connected or sb.connected or sb.inbound_connected)

        await _wait(cut)
        await trio.sleep(0.5)  # b keeps redialling a, which refuses it; a does not dial at all
        assert await cut()
        lost = a.statistics().peers[kb.peer_id].lost
        assert a.send_nowait(kb.peer_id, b"while cut")  # accepted and lost, as on a pulled cable
        assert a.statistics().peers[kb.peer_id].lost == lost + 1
        b.send_nowait(ka.peer_id, b"towards the cut peer")  # waits in b's queue: nothing reaches a
        await trio.sleep(0.3)
        assert a.inbound.statistics().current_buffer_used == 0

        a.reconnect()
        assert a.status()["disconnected"] is False
        await _wait(lambda: _linked(a, b))
        with trio.fail_after(5):
            assert await a.inbound.receive() == (kb.peer_id, b"towards the cut peer")  # delivered once linked
        assert a.send_nowait(kb.peer_id, b"after")
        with trio.fail_after(5):
            assert await b.inbound.receive() == (ka.peer_id, b"after")
        nursery.cancel_scope.cancel()
