"""``POST /v1/membership/join|leave`` over ASGI: accepted requests, and every bad one refused with its reason."""

from __future__ import annotations

import base64

import httpx
import trio

from consensus.messages import Envelope, Join, Leave, sign
from multillmn.identity import KeyPair
from peers.api import PeerHandle, create_app
from tests.test_node_membership import GENESIS, KEYS, ask_until, network


def _json(envelope: Envelope) -> dict[str, str]:
    return {"body": base64.b64encode(envelope.body).decode(), "sig": base64.b64encode(envelope.sig).decode()}


async def test_join_and_leave_requests_over_http() -> None:
    async with network() as nodes:
        member, joiner = nodes[0], nodes[4]
        handle = PeerHandle(member.key.peer_id, "peer0", "m", phase="ready", node=member)
        app = create_app(handle)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
            with trio.fail_after(60):
                await ask_until(nodes[:4], 1)
                join = joiner.join_request()
                digest = member.driver.chain.weights_digest()

                async def post(kind: str, body: object) -> httpx.Response:
                    return await client.post(f"/v1/membership/{kind}", json=body)

                forged = Envelope(body=join.envelope.body, sig=bytes(64))
                cases = [
                    ("join", _json(forged), 422, "bad-signature"),
                    ("join", {"body": "%%%%", "sig": "A" * 88}, 422, "malformed"),
                    ("join", {"body": base64.b64encode(b"\x81\xa1x\x01").decode(), "sig": "A" * 86 + "=="}, 422,
                     "malformed"),
                    ("join", {"body": "abcd"}, 422, "sig"),  # a missing field: pydantic names it
                    ("join", _json(sign(join.message.model_copy(update={"model": "gpt-9"}), joiner.key).envelope),
                     422, "unknown-model"),
                    ("join", _json(sign(join.message.model_copy(update={"chain_id": "other"}), joiner.key).envelope),
                     422, "wrong-chain"),
                    ("join", _json(sign(Join(chain_id=GENESIS.chain_id, peer_id=KEYS[1].peer_id,
                                             public_key=KEYS[1].public_key, moniker="dup", address="10.0.0.9:1",
                                             model="m", created_ms=1), KEYS[1]).envelope), 422, "already-member"),
                    ("leave", _json(sign(Leave(chain_id=GENESIS.chain_id, peer_id=joiner.key.peer_id, created_ms=1),
                                         joiner.key).envelope), 422, "bad-signature"),  # not a member: no key
                ]
                for kind, body, status, code in cases:
                    r = await post(kind, body)
                    assert r.status_code == status and code in r.text, (kind, code, r.text)
                ok = await post("join", _json(join.envelope))
                assert ok.status_code == 202 and ok.json()["peer_id"] == joiner.key.peer_id
                assert "boundary" in ok.json()["note"]
                again = sign(join.message.model_copy(update={"created_ms": join.message.created_ms + 1}), joiner.key)
                r = await post("join", _json(again.envelope))
                assert r.status_code == 422 and r.json()["code"] == "already-requested"
                status = (await client.get("/v1/status")).json()
                refused = status["membership"]["requests_refused"]
                assert refused == {"bad-signature": 2, "malformed": 2, "unknown-model": 1, "wrong-chain": 1,
                                   "already-member": 1, "already-requested": 1}
                assert member.driver.chain.weights_digest() == digest  # nothing committed changed
                stranger = KeyPair.from_seed(b"\x33" * 32)
                leave = sign(Leave(chain_id=GENESIS.chain_id, peer_id=stranger.peer_id, created_ms=1), stranger)
                assert (await post("leave", _json(leave.envelope))).json()["code"] == "bad-signature"
                await ask_until(nodes[:4], 3)  # committed: waiting for its boundary, or in the set already
                pending = [j["peer_id"] for j in member.status()["membership"]["pending_joins"]]
                assert joiner.key.peer_id in pending or joiner.key.peer_id in member.driver.chain.members_from(
                    member.height)
