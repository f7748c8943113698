"""What the dashboard shows, built from what one peer holds: its status, its certificates and its ledger.

Nothing here asks another peer anything. A peer knows the other peers' ids,
monikers and weights (the validator set), whether its own links to them are
up, and what they signed in the decisions it holds (their model names and
answers); it does not know their phase or height, and the page says so
rather than guessing. Every list is bounded: the weight chart covers the
last :data:`WEIGHT_HEIGHTS` heights, the decisions the last
:data:`DECISIONS`, the ledger tail :data:`LEDGER_TAIL` entries and the
evidence :data:`EVIDENCE` items. Certificates are immutable once decided,
so what is read from them is cached per height (at most
:data:`CACHE_HEIGHTS` heights).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multillmn import canonical
from peers.ledger import entry_json, value_of_certificate

if TYPE_CHECKING:
    from peers.api import PeerHandle
    from peers.node import Node

__all__ = ["CACHE_HEIGHTS", "DECISIONS", "EVIDENCE", "LEDGER_TAIL", "Snapshots", "WEIGHT_HEIGHTS"]

WEIGHT_HEIGHTS = 64
"""Heights the weight chart covers (the latest ones)."""
DECISIONS = 8
"""Recent decided queries shown (newest first; a height may decide several), each with every answer."""
LEDGER_TAIL = 12
"""Latest ledger entries shown."""
EVIDENCE = 16
"""Latest evidence items shown (the count is of all of them)."""
CACHE_HEIGHTS = 2 * WEIGHT_HEIGHTS
"""Heights whose certificate summary is kept in memory."""
MAX_TEXT = 600
"""Characters of a question or an answer shown (the certificate holds the whole text)."""


@dataclass(frozen=True)
class _Height:
    """What the dashboard reads from one height's certificate: the weights in force and every query decided."""

    weights: dict[str, int]
    decisions: list[dict[str, Any]]


def _cut(text: Any) -> str:
    s = str(text) if text is not None else ""
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "…"


def _body(envelope: Any) -> dict[str, Any]:
    """The fields of a signed message as carried in a decided value (its signature was checked when the
    value was decided or the ledger accepted the certificate; the page shows it, it does not rely on it)."""
    try:
        body = canonical.unpack(envelope.body)
    except canonical.CanonicalError:
        return {}
    return body if isinstance(body, dict) else {}


def _read_height(cert: dict[str, Any]) -> _Height:
    raw_validators = cert.get("validators")
    validators: list[Any] = raw_validators if isinstance(raw_validators, list) else []
    weights = {str(v["peer_id"]): int(v["weight"]) for v in validators if isinstance(v, dict)}
    monikers = {str(v["peer_id"]): str(v.get("moniker", "")) for v in validators if isinstance(v, dict)}
    total = sum(weights.values())
    value = value_of_certificate(cert)
    if value is None:
        return _Height(weights=weights, decisions=[])
    # a value decides one query, or several (``outcomes()``, ADR 0020), each with its own answers and choice
    outcomes: tuple[Any, ...] = value.outcomes() if hasattr(value, "outcomes") else (value,)
    decisions = []
    for outcome in outcomes:
        winners = set(outcome.winners)
        answers = []
        for envelope in outcome.answers:
            a = _body(envelope)
            pid = str(a.get("peer", ""))
            answers.append({"peer_id": pid, "moniker": monikers.get(pid, ""), "model": a.get("model"),
                            "text": _cut(a.get("text")), "agreed": pid in winners, "weight": weights.get(pid, 0),
                            "signature": envelope.sig.hex()})
        decisions.append({
            "height": cert.get("height"), "round": cert.get("round"), "value_id": cert.get("value_id"),
            "question": _cut(_body(outcome.query).get("question")), "answer": _cut(outcome.answer),
            "agreed_weight": sum(weights.get(p, 0) for p in winners), "total_weight": total,
            "precommits": len(cert.get("precommits") or []), "answers": answers})
    return _Height(weights=weights, decisions=decisions)


class Snapshots:
    """Builds the dashboard's JSON snapshot of one peer, at most once per ``min_interval_s`` (shared by every
    page and event stream, so many viewers cost one build)."""

    def __init__(self, peer: PeerHandle, *, min_interval_s: float = 0.5) -> None:
        self.peer = peer
        self.min_interval_s = min_interval_s
        self._heights: OrderedDict[int, _Height] = OrderedDict()
        self._last: dict[str, Any] | None = None
        self._built_at = float("-inf")
        self.builds = 0

    def get(self) -> dict[str, Any]:
        """The latest snapshot, rebuilt if older than ``min_interval_s``."""
        now = time.monotonic()
        if self._last is None or now - self._built_at >= self.min_interval_s:
            self._last = self.build()
            self._built_at = now
            self.builds += 1
        return self._last

    def _height(self, node: Node, height: int) -> _Height | None:
        cached = self._heights.get(height)
        if cached is not None:
            return cached
        cert = node.certificates.get(height)
        if cert is None:
            return None
        try:
            read = _read_height(cert)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        self._heights[height] = read
        while len(self._heights) > CACHE_HEIGHTS:
            self._heights.popitem(last=False)
        return read

    def build(self) -> dict[str, Any]:
        peer = self.peer
        me: dict[str, Any] = {"peer_id": peer.peer_id, "moniker": peer.moniker, "model": peer.model,
                              "phase": peer.phase, "uptime_s": round(time.monotonic() - peer.started, 1)}
        node = peer.node
        if node is None or peer.phase != "ready":
            return {"self": me, "peers": [], "weights": {"heights": [], "series": []}, "decisions": [],
                    "ledger": None, "at": time.time()}
        status = node.status()
        me.update(chain_id=status["chain_id"], height=status["height"], pending_queries=status["pending_queries"],
                  decided_heights=status["decided_heights"], weights_digest=status["weights_digest"],
                  total_weight=status["total_weight"], rejected_messages=status["rejected_messages"])
        top = status["height"] - 1  # the highest height this peer decided (or caught up to)
        heights: list[tuple[int, _Height]] = []
        for h in range(max(1, top - WEIGHT_HEIGHTS + 1), top + 1):
            read = self._height(node, h)
            if read is not None:
                heights.append((h, read))
        return {"self": me, "peers": self._peers(node, status, heights), "weights": self._weights(status, heights),
                "decisions": [d for _, read in reversed(heights) for d in read.decisions][:DECISIONS],
                "ledger": self._ledger(node), "at": time.time()}

    def _peers(self, node: Node, status: dict[str, Any], heights: list[tuple[int, _Height]]) -> list[dict[str, Any]]:
        models: dict[str, str] = {}
        for _, read in heights:  # the model each peer named in its latest signed answer
            for d in read.decisions:
                for a in d["answers"]:
                    models[str(a["peer_id"])] = str(a["model"])
        links = status["transport"].get("peers", {})
        total = status["total_weight"] or 1
        out = []
        for v in sorted(status["validators"], key=lambda v: (v["moniker"], v["peer_id"])):
            pid = v["peer_id"]
            is_self = pid == self.peer.peer_id
            link = links.get(pid, {})
            out.append({
                "peer_id": pid, "moniker": v["moniker"], "weight": v["weight"],
                "share": round(v["weight"] / total, 4), "self": is_self,
                "model": self.peer.model if is_self else models.get(pid),
                "phase": self.peer.phase if is_self else None,  # not known of another peer
                "height": status["height"] if is_self else None,
                "link": "self" if is_self else ("up" if link.get("connected") or link.get("inbound_connected")
                                                else "down"),
            })
        return out

    @staticmethod
    def _weights(status: dict[str, Any], heights: list[tuple[int, _Height]]) -> dict[str, Any]:
        """Every peer's weight at each height this peer holds a certificate for, then at the current height."""
        points = [(h, read.weights) for h, read in heights]
        points.append((status["height"], {v["peer_id"]: v["weight"] for v in status["validators"]}))
        monikers = {v["peer_id"]: v["moniker"] for v in status["validators"]}
        ids = sorted({pid for _, w in points for pid in w}, key=lambda p: (monikers.get(p, "~"), p))
        return {"heights": [h for h, _ in points],
                "series": [{"peer_id": pid, "moniker": monikers.get(pid, pid[:8]),
                            "weights": [w.get(pid) for _, w in points]} for pid in ids]}

    @staticmethod
    def _ledger(node: Node) -> dict[str, Any] | None:
        service = node.ledger
        if service is None:
            return None
        ledger = service.ledger
        total = len(ledger)
        tail = [entry_json(e) for e in ledger.page(max(0, total - LEDGER_TAIL), LEDGER_TAIL)]
        tail.reverse()
        for entry in tail:
            for key in ("question", "answer"):
                if key in entry:
                    entry[key] = _cut(entry[key])
        evidence = [{"kind": e.get("kind"), "peer_id": e.get("peer_id")} for e in ledger.evidence[-EVIDENCE:]]
        return {"entries": total, "state_hash": service.state_hash(), "tail": tail,
                "evidence": evidence, "evidence_count": len(ledger.evidence)}
