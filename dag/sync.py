"""Gossip about gossip, pure: what a peer knows, and what to send a peer that knows less.

A sync is a pull. The puller sends its :func:`known_vector` (for each
creator, how many seqs of its chain it holds); the other side answers with
:func:`events_missing`: every event it holds that the vector does not cover,
parents before children, so the puller can insert them in order
(:func:`receive`).

A count cannot tell two branches of a fork apart. For a creator known to
have forked, the vector reports its first fork seq and the sender sends
every event from its own first fork seq on, so both sides exchange all
branches from there (the receiver drops duplicates). A fork neither side
has seen yet shows up as a missing parent on the receiving side; the puller
then asks :func:`ancestors_missing` for those hashes, which sends them with
their ancestors while treating their creators as unknown to the puller.
Honest creators never need this second message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dag.event import Event
from dag.hashgraph import Hashgraph, InsertError, MissingParent
from multillmn.identity import PeerId, is_peer_id

__all__ = ["SyncError", "Received", "known_vector", "check_vector", "events_missing", "ancestors_missing",
           "receive"]

MAX_WANTED = 4096


class SyncError(ValueError):
    """A peer sent a malformed known-vector or request."""


@dataclass
class Received:
    """What :func:`receive` did with a batch of events."""

    ordered: list[Event] = field(default_factory=list)
    inserted: list[Event] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)
    pending: list[Event] = field(default_factory=list)
    rejected: list[tuple[Event, str]] = field(default_factory=list)


def known_vector(hashgraph: Hashgraph) -> dict[PeerId, int]:
    """Per validator, the seqs held (highest seq + 1; the first fork seq for a known forker); 0s omitted."""
    out: dict[PeerId, int] = {}
    for v in hashgraph.validators:
        fork = hashgraph.first_fork_seq(v.peer_id)
        h = hashgraph.height(v.peer_id) if fork is None else fork
        if h:
            out[v.peer_id] = h
    return out


def check_vector(vector: object) -> dict[PeerId, int]:
    """Validate a vector received from a peer (a map of peer id to non-negative integer)."""
    if not isinstance(vector, Mapping):
        raise SyncError("a known-vector is a map of peer id to count")
    out: dict[PeerId, int] = {}
    for k, v in vector.items():
        if not is_peer_id(k):
            raise SyncError(f"known-vector key {k!r} is not a peer id")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
            raise SyncError(f"known-vector count for {k} must be an integer in [0, 2^62)")
        out[k] = v
    return out


def _topo(hashgraph: Hashgraph, events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda e: hashgraph.topo_index(e.hash))


def events_missing(hashgraph: Hashgraph, their_vector: Mapping[PeerId, int]) -> list[Event]:
    """The events ``hashgraph`` holds beyond ``their_vector``, in topological order (parents first)."""
    vector = check_vector(their_vector)
    picked: list[Event] = []
    for v in hashgraph.validators:
        start = vector.get(v.peer_id, 0)
        fork = hashgraph.first_fork_seq(v.peer_id)
        if fork is not None:
            start = min(start, fork)
        picked.extend(hashgraph.events_by(v.peer_id, start))
    return _topo(hashgraph, picked)


def ancestors_missing(hashgraph: Hashgraph, wanted: Iterable[bytes],
                      their_vector: Mapping[PeerId, int]) -> list[Event]:
    """The ``wanted`` events held here and their ancestors the puller may lack, parents first.

    An ancestor counts as held by the puller if its seq is below the vector,
    except for the creators of the wanted events (the puller lacks one of
    their events at a seq it claims, so it holds another branch).
    """
    vector = check_vector(their_vector)
    want = list(wanted)
    if len(want) > MAX_WANTED or not all(isinstance(h, bytes) and len(h) == 32 for h in want):
        raise SyncError(f"wanted must be at most {MAX_WANTED} 32-byte hashes")
    roots = [e for e in (hashgraph.get(h) for h in want) if e is not None]
    for e in roots:
        vector[e.creator] = 0
    seen: dict[bytes, Event] = {}
    stack = list(roots)
    while stack:
        e = stack.pop()
        if e.hash in seen or e.seq < vector.get(e.creator, 0):
            continue
        seen[e.hash] = e
        for p in (e.self_parent, e.other_parent):
            if p is not None and p not in seen:
                parent = hashgraph.get(p)
                if parent is not None:
                    stack.append(parent)
    return _topo(hashgraph, seen.values())


def receive(hashgraph: Hashgraph, events: Iterable[Event]) -> Received:
    """Insert a batch (any order); retry events whose parents arrive later in the batch.

    ``missing`` lists parent hashes still absent (ask :func:`ancestors_missing`),
    ``pending`` the events waiting for them, ``rejected`` invalid events with reasons.
    """
    out = Received()
    todo = list(events)
    while todo:
        waiting: list[Event] = []
        for ev in todo:
            if ev.hash in hashgraph:
                continue
            try:
                ordered = hashgraph.insert(ev)
            except MissingParent:
                waiting.append(ev)
                continue
            except InsertError as exc:
                out.rejected.append((ev, str(exc)))
                continue
            out.inserted.append(ev)
            out.ordered.extend(ordered)
        if len(waiting) == len(todo):
            break
        todo = waiting
    else:
        waiting = []
    out.pending = waiting
    missing: dict[bytes, None] = {}
    waiting_hashes = {w.hash for w in waiting}
    for ev in waiting:
        for p in (ev.self_parent, ev.other_parent):
            if p is not None and p not in hashgraph and p not in waiting_hashes:
                missing[p] = None
    out.missing = list(missing)
    return out
