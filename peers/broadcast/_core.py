"""The broadcast core: per-origin trees with Plumtree repair and relay scoring, pure and sans-I/O.

``Broadcaster.broadcast / receive / fire -> [effect]``; effects are
:class:`Send` (a frame to one peer), :class:`Deliver` (a validated payload of
another origin, once) and :class:`Schedule` (call :meth:`Broadcaster.fire`
with the timer after a delay). Time is the ``now`` argument; nothing here
sleeps, reads a clock, opens a socket or draws a random number.

Protocol (Plumtree, Leitão et al. 2007, with trees from a latency matrix):

* **Eager push along the origin's tree.** Every peer computes the same tree
  for an origin (:func:`~peers.broadcast._trees.build_tree` over the
  committee and the latency matrix) and pushes a new payload of that origin
  to its children there, plus peers that grafted onto it, minus peers that
  pruned it.
* **Lazy digests.** Each peer also sends IHAVE digests (batched, after
  ``lazy_delay_s``) to its lazy neighbours: a fixed overlay of about
  ``lazy_degree`` peers (a ring ordered by the hash of the peer ids, with
  chords), so every peer hears of every message from several others.
* **GRAFT**: a digest of a message not received within ``graft_timeout_s``
  makes the peer ask an announcer (best score, then nearest) for it; the
  announcer sends it and pushes that origin's later messages eagerly. No
  answer within the timeout plus the round trip to it (by the matrix): the
  next announcer, and the silent one is scored down, a penalty refunded if
  its copy comes in after all (late, as a loaded peer is, is not silent).
* **PRUNE**: a payload received twice eagerly prunes the link it came in
  on the second time (the slower path) for that origin, unless the second
  copy came from the tree parent: then the first sender's link is pruned,
  so the eager links settle on the tree.
* **Silent parents and the origin's exclusions.** A message that arrives
  other than from the tree parent (a graft, a link off the tree) starts a
  check: if the parent has not forwarded it ``silence_timeout_s`` plus the
  round trip to it later, it is silent, not merely late. The peer scores it down, moves itself (with its
  subtree) to the best other parent in its view
  (:func:`~peers.broadcast._trees.reparent`; an empty GRAFT there) and tells
  the origin (SUSPECT). The origin owns its tree: it acts on a report only
  if the accused is the reporter's parent in its published tree, at most
  ``max_suspects_per_peer`` times per reporter, and after
  ``exclude_delay_s`` sends its list of excluded relays (EXCLUDE, with an
  epoch) directly to every member. Every member then follows the origin's
  tree rebuilt around them (:func:`~peers.broadcast._trees.reroute`: the
  excluded relays become leaves, their children's subtrees re-attached
  greedily), the same at every peer that heard the list. An EXCLUDE
  speaks only for its sender's own tree (the authenticated link says who).
* **Scores** (gossipsub v1.1's idea): a peer's score rises with first
  deliveries and falls for invalid payloads, malformed frames, unanswered
  grafts and for being the tree parent that did not forward. A peer at or
  below ``exclude_score`` is the last choice to graft from and its digests
  open no new repairs. (It is not taken out of trees by score: views change
  only with the origin's list and the parents seen failing for that origin,
  so they cannot flap as a score crosses the threshold and back.)

**A new latency matrix** (:meth:`Broadcaster.adopt_matrix`: the host's
snapshot, its trees built ahead) switches every origin's view at once; a
peer whose parent changed sends it an empty GRAFT, and a peer drops the
PRUNEs of its new children: peers switch at slightly different moments,
and a PRUNE sent while their trees differed must not keep a tree link
silent afterwards (issue 13's testnet outliers).

Every payload is checked by ``validate`` (the origin's signature: it returns
the origin's peer id or None) before it is delivered, stored or relayed, and
its id is recomputed locally. Bounds on everything a remote peer can grow
are in :class:`BroadcastConfig` (``max_*``) and the frame limits in
:mod:`peers.broadcast._frames`; each is enforced at insertion and
:meth:`Broadcaster.statistics` reports the sizes.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from peers.broadcast._frames import (
    MAX_EPOCH, MAX_EXCLUDED, MAX_GRAFT_IDS, MAX_IHAVE_IDS, Exclude, Frame, FrameError, Gossip, Graft, IHave, Prune,
    Suspect, decode, encode, kind_name, max_frame_len, message_id,
)
from peers.broadcast._trees import LatencyMatrix, Routed, Tree, reparent

__all__ = [
    "BroadcastConfig", "Broadcaster", "Deliver", "Effect", "MAX_ANNOUNCERS", "SCORE_MAX", "SCORE_MIN", "Schedule",
    "Send",
]

SCORE_MIN: Final = -100
SCORE_MAX: Final = 100
MAX_ANNOUNCERS: Final = 8
"""Announcers remembered per missing message (the first ones)."""
_SCORE_DELIVERY: Final = 1  # first delivery of a valid message through a peer
_SCORE_INVALID: Final = -50  # a payload that fails validation, or whose origin is not the one claimed
_SCORE_MALFORMED: Final = -10  # a frame that does not decode
_SCORE_SILENT: Final = -10  # an unanswered graft, or the tree parent that did not forward a message others had


@dataclass(frozen=True)
class BroadcastConfig:
    """Settings of one peer's broadcast core; every bound is on a table a remote peer can grow."""

    fanout: int = 3  # children per node in a tree (upload bound)
    lazy_degree: int = 6  # lazy neighbours that get IHAVE digests
    lazy_delay_s: float = 0.05  # digests are batched for this long
    graft_timeout_s: float = 0.25  # wait this long after a digest before grafting (and between grafts, plus the RTT)
    silence_timeout_s: float = 0.5  # a tree parent is silent if its copy is this late (plus its RTT), not merely late
    switch_grace_s: float = 3.0  # no parent is judged silent this long after a new matrix (peers switch apart)
    max_grafted: int = 6  # peers that may graft onto this one per origin beyond its tree children
    exclude_score: int = -20  # a peer at or below this score relays for nobody in our view
    max_payload: int = 1 << 20  # bytes of one payload
    max_members: int = 4096  # committee size accepted by set_members
    max_seen: int = 65536  # message ids remembered as received (oldest forgotten first)
    max_stored: int = 1024  # payloads kept to answer grafts (oldest dropped first)
    max_stored_bytes: int = 64 << 20  # their total size
    max_missing: int = 1024  # announced but not received message ids
    max_missing_per_peer: int = 128  # of which first announced by one peer
    max_lazy: int = 4096  # digests waiting to be sent
    max_served: int = 8192  # (peer, id) grafts answered, remembered so a repeated graft is not answered again
    exclude_delay_s: float = 0.25  # an origin batches the relays reported to it this long before it sends EXCLUDE
    max_excluded: int = 256  # relays one origin's tree may exclude (at most MAX_EXCLUDED)
    max_suspects_per_peer: int = 4  # reports from one peer an origin acts on (each about that peer's own parent)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work."""
        if self.fanout < 1 or self.lazy_degree < 0 or self.max_grafted < 0:
            raise ValueError("fanout must be >= 1, lazy_degree and max_grafted >= 0")
        for name in ("lazy_delay_s", "graft_timeout_s", "silence_timeout_s", "switch_grace_s", "exclude_delay_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        if not SCORE_MIN < self.exclude_score < 0:
            raise ValueError(f"exclude_score must be in ({SCORE_MIN}, 0)")
        for name in ("max_payload", "max_members", "max_seen", "max_stored", "max_stored_bytes", "max_missing",
                     "max_missing_per_peer", "max_lazy", "max_served", "max_excluded", "max_suspects_per_peer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_excluded > MAX_EXCLUDED:
            raise ValueError(f"max_excluded must not exceed {MAX_EXCLUDED}")
        if self.max_stored > self.max_seen:
            raise ValueError("max_stored must not exceed max_seen")

    @classmethod
    def default(cls) -> BroadcastConfig:
        return cls()

    @classmethod
    def for_tests(cls) -> BroadcastConfig:
        """Small tables, so floods reach the bounds quickly."""
        return replace(cls(), max_payload=4096, max_members=64, max_seen=512, max_stored=128,
                       max_stored_bytes=1 << 18, max_missing=64, max_missing_per_peer=16, max_lazy=256,
                       max_served=256)


@dataclass(frozen=True)
class Send:
    """Send ``frame`` to peer ``to``."""

    to: str
    frame: bytes


@dataclass(frozen=True)
class Deliver:
    """A validated payload of another origin, delivered once."""

    payload: bytes
    origin: str
    msg_id: bytes


@dataclass(frozen=True)
class Schedule:
    """Call :meth:`Broadcaster.fire` with ``timer`` after ``delay_s``."""

    delay_s: float
    timer: object


Effect = Send | Deliver | Schedule


@dataclass(frozen=True)
class _FlushTimer:
    generation: int


@dataclass(frozen=True)
class _GraftTimer:
    msg_id: bytes
    attempt: int


@dataclass(frozen=True)
class _ExcludeTimer:
    generation: int


@dataclass(frozen=True)
class _ParentTimer:
    msg_id: bytes


@dataclass
class _Missing:
    origin: str
    first: str  # the peer whose digest created the entry (per-peer bound)
    announcers: list[str]
    tried: list[str] = field(default_factory=list)
    attempt: int = 0


@dataclass
class _View:
    key: tuple[int, int, int, int]
    parent: str | None
    children: tuple[str, ...]


class Broadcaster:
    """One peer's broadcast core (see the module docstring)."""

    def __init__(self, me: str, validate: Callable[[bytes], str | None],
                 config: BroadcastConfig = BroadcastConfig(), *, matrix: LatencyMatrix | None = None) -> None:
        config.validate()
        self.me = me
        self.config = config
        self._validate = validate
        self.matrix = matrix if matrix is not None else LatencyMatrix()
        self._max_frame = max_frame_len(config.max_payload)
        self._members: tuple[str, ...] = (me,)
        self._member_set: frozenset[str] = frozenset(self._members)
        self._members_key = b""
        self._members_version = 0
        self._lazy_peers: tuple[str, ...] = ()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._store: OrderedDict[bytes, tuple[str, bytes, int, str]] = OrderedDict()  # origin, payload, hops, from
        self._stored_bytes = 0
        self._missing: dict[bytes, _Missing] = {}
        self._missing_by_peer: Counter[str] = Counter()
        self._lazy: list[tuple[str, bytes, str]] = []
        self._flush_generation = 0
        self._flush_pending = False
        self._served: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._scores: dict[str, int] = {}
        self._excluded: frozenset[str] = frozenset()
        self._excluded_version = 0
        self._grafted: dict[str, set[str]] = {}
        self._pruned: dict[str, set[str]] = {}
        self._views: dict[str, _View] = {}
        self._failed: dict[str, set[str]] = {}  # per origin: parents that did not forward its message to us
        self._watch: OrderedDict[bytes, tuple[str, str]] = OrderedDict()  # msg id -> (origin, tree parent to hear)
        self._exclusions: dict[str, tuple[int, frozenset[str]]] = {}  # per origin: its last EXCLUDE (epoch, relays)
        self._exclude_heard: dict[str, float] = {}  # per origin: when its last EXCLUDE was taken
        self._my_epoch = 0
        self._my_pending: set[str] = set()  # relays reported to me, not yet in my EXCLUDE
        self._suspects_from: Counter[str] = Counter()  # reports acted on, by reporter
        self._exclude_generation = 0
        self._regraft: dict[str, str] = {}  # origins whose tree parent changed in my view: the new parent
        self._adopted_at = -math.inf  # when the last matrix was adopted (adopt_matrix)
        self._late: OrderedDict[tuple[bytes, str], None] = OrderedDict()  # (msg id, peer): graft unanswered, scored
        self._stats: Counter[str] = Counter()

    # --- membership and latency (from the host) -----------------------------------------

    def set_members(self, members: Iterable[str]) -> None:
        """The committee (``me`` included or not). State about peers outside it is dropped."""
        ids = sorted(set(members) | {self.me})
        if len(ids) > self.config.max_members:
            raise ValueError(f"{len(ids)} members exceed max_members={self.config.max_members}")
        self._members = tuple(ids)
        self._member_set = frozenset(ids)
        self._members_key = hashlib.blake2b("\x00".join(ids).encode(), digest_size=16).digest()
        self._members_version += 1
        self._lazy_peers = self._overlay()
        self._views = {o: v for o, v in self._views.items() if o in self._member_set}  # keys differ now: recomputed
        self._failed = {o: peers & self._member_set for o, peers in self._failed.items() if o in self._member_set}
        for table in (self._grafted, self._pruned):
            for origin in [o for o in table if o not in self._member_set]:
                del table[origin]
            for peers in table.values():
                peers &= self._member_set
        self._scores = {p: s for p, s in self._scores.items() if p in self._member_set}
        self._exclusions = {o: (e, r & self._member_set) for o, (e, r) in self._exclusions.items()
                            if o in self._member_set}
        self._exclude_heard = {o: t for o, t in self._exclude_heard.items() if o in self._member_set}
        self._my_pending &= self._member_set
        self._suspects_from = Counter({p: c for p, c in self._suspects_from.items() if p in self._member_set})
        self._update_excluded()

    def set_latency(self, a: str, b: str, seconds: float) -> None:
        """One-way latency estimate from ``a`` to ``b`` (``b`` to ``a`` too unless set); unknown pairs:
        :data:`~peers.broadcast._trees.DEFAULT_LATENCY_S`."""
        self.matrix.set(a, b, seconds)

    def adopt_matrix(self, matrix: LatencyMatrix, now: float) -> list[Effect]:
        """Build trees from ``matrix`` from now on (a host's snapshot, its trees possibly computed ahead, with a
        :attr:`~peers.broadcast._trees.LatencyMatrix.version` not below the current one). Every origin's view is
        recomputed now; an empty GRAFT goes to each new parent (:meth:`_view`). For ``switch_grace_s`` no parent is
        judged silent: another peer may still forward on the old tree, or have switched already."""
        if matrix.version < self.matrix.version:
            raise ValueError("the adopted matrix must not be older than the current one")
        self.matrix = matrix
        self._adopted_at = now
        self._stats["matrix_changes"] += 1
        return self.refresh()

    def refresh(self) -> list[Effect]:
        """Recompute every origin's view now (cheap when the trees are cached) and return the empty GRAFTs to
        the new parents, so a parent that changed with the matrix or the committee pushes to this peer before
        the next message rather than after a repair."""
        for origin in self._members:
            self._view(origin)
        return self._regrafts([])

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    @property
    def members_key(self) -> bytes:
        """The committee's digest the trees are cached under (:meth:`LatencyMatrix.tree`)."""
        return self._members_key

    def score(self, peer: str) -> int:
        return self._scores.get(peer, 0)

    def lazy_peers(self) -> tuple[str, ...]:
        return self._lazy_peers

    def _overlay(self) -> tuple[str, ...]:
        """Lazy neighbours: a ring ordered by hashed peer id, at offsets 1, m^(1/h), m^(2/h)... both ways (symmetric)."""
        ring = sorted(self._members, key=lambda p: (hashlib.blake2b(p.encode(), digest_size=8).digest(), p))
        m = len(ring)
        half = max(1, self.config.lazy_degree // 2)
        if self.config.lazy_degree == 0 or m <= 1:
            return ()
        offsets = sorted({max(1, round(m ** (j / half))) for j in range(half)})
        i = ring.index(self.me)
        peers = {ring[(i + k) % m] for k in offsets} | {ring[(i - k) % m] for k in offsets}
        peers.discard(self.me)
        return tuple(sorted(peers))

    # --- trees ----------------------------------------------------------------------------

    def _view(self, origin: str) -> _View:
        """My parent and children in my view of ``origin``'s tree: the tree without the relays the origin
        excluded, those I saw fail for it, and the peers I scored down (see :func:`~peers.broadcast._trees.reroute`)."""
        failed = self._failed.get(origin, set())
        epoch, published = self._exclusions.get(origin, (0, frozenset()))
        key = (self._members_version, self.matrix.version, len(failed), epoch)
        old = self._views.get(origin)
        if old is not None and old.key == key:
            return old
        routed = self.routed(origin, published)  # the origin's tree: the same at every peer that heard it
        parent = routed.parent.get(self.me)
        if parent is not None and parent != origin and parent in failed:
            # the origin has not (yet) taken it out: I alone move, with my subtree, to the best other parent
            parent = reparent(routed.tree, routed.arrival, self.me, self.matrix.get, self.config.fanout,
                              failed | published) or parent
        view = _View(key, parent, routed.tree.get(self.me, ()))
        self._views[origin] = view
        if old is not None:
            if parent is not None and parent != old.parent:
                # a new parent (a new matrix or committee, a failure, the origin's list): ask it to push to me, as
                # it may hold a PRUNE of mine from when it was not my parent (peers adopt a new matrix at
                # slightly different moments, so that PRUNE may even be newer than its own switch)
                self._regraft[origin] = parent
            pruned = self._pruned.get(origin)
            if pruned:
                pruned -= set(view.children) - set(old.children)  # a new child's old PRUNE was about another tree
        return view

    def view_tree(self, origin: str, avoid: Iterable[str] = ()) -> Tree:
        """``origin``'s tree without the relays of ``avoid`` (:func:`~peers.broadcast._trees.reroute`)."""
        return self.routed(origin, avoid).tree

    def routed(self, origin: str, avoid: Iterable[str] = ()) -> Routed:
        return self.matrix.view(origin, self._members, self.config.fanout, self._members_key, frozenset(avoid))

    def exclusions(self, origin: str) -> frozenset[str]:
        """The relays ``origin``'s tree excludes, as it last told this peer (this peer's own list for ``me``)."""
        return self._exclusions.get(origin, (0, frozenset()))[1]

    def base_tree(self, origin: str) -> Tree:
        """``origin``'s tree as every peer with the same members and matrix computes it (no exclusions)."""
        return self.matrix.tree(origin, self._members, self.config.fanout, self._members_key)

    def tree_children(self, origin: str) -> tuple[str, ...]:
        """This peer's children in its view of ``origin``'s tree."""
        return self._view(origin).children

    def _eager_targets(self, origin: str, exclude: str | None) -> list[str]:
        targets = set(self._view(origin).children) | self._grafted.get(origin, set())
        targets -= self._pruned.get(origin, set())
        targets.discard(origin)
        targets.discard(self.me)
        if exclude is not None:
            targets.discard(exclude)
        return sorted(targets)

    def _rtt(self, peer: str) -> float:
        """The round trip to ``peer`` by the matrix, at most 2 s: what a timeout waits on top of its slack."""
        return min(self.matrix.get(self.me, peer) + self.matrix.get(peer, self.me), 2.0)

    # --- scores ---------------------------------------------------------------------------

    def _adjust(self, peer: str | None, delta: int) -> None:
        if peer is None or peer == self.me or peer not in self._member_set:
            return
        old = self._scores.get(peer, 0)
        new = min(SCORE_MAX, max(SCORE_MIN, old + delta))
        self._scores[peer] = new
        if (old <= self.config.exclude_score) != (new <= self.config.exclude_score):
            self._update_excluded()

    def _update_excluded(self) -> None:
        excluded = frozenset(p for p, s in self._scores.items() if s <= self.config.exclude_score)
        if excluded != self._excluded:
            self._excluded = excluded
            self._excluded_version += 1

    # --- sending --------------------------------------------------------------------------

    def _send(self, to: str, frame: Frame) -> Send:
        data = encode(frame)
        kind = kind_name(frame)
        self._stats[f"sent_{kind}"] += 1
        self._stats[f"sent_{kind}_bytes"] += len(data)
        return Send(to, data)

    def _reject(self, reason: str) -> None:
        self._stats[f"rejected_{reason}"] += 1
        self._stats["rejected"] += 1

    def _remember(self, msg_id: bytes, origin: str, payload: bytes, hops: int, sender: str) -> None:
        self._seen[msg_id] = None
        while len(self._seen) > self.config.max_seen:
            self._seen.popitem(last=False)
        self._store[msg_id] = (origin, payload, hops, sender)
        self._stored_bytes += len(payload)
        while len(self._store) > self.config.max_stored or self._stored_bytes > self.config.max_stored_bytes:
            _, (_, old, _, _) = self._store.popitem(last=False)
            self._stored_bytes -= len(old)

    def _spread(self, origin: str, msg_id: bytes, payload: bytes, hops: int, sender: str | None) -> list[Effect]:
        """Eager push to the tree (and grafted) children; queue the digest for the lazy neighbours."""
        effects: list[Effect] = [self._send(to, Gossip(origin, payload, hops))
                                 for to in self._eager_targets(origin, sender)]
        if len(self._lazy) >= self.config.max_lazy:
            self._reject("lazy-full")
        elif self._lazy_peers:
            self._lazy.append((origin, msg_id, sender or self.me))
            if not self._flush_pending:
                self._flush_pending = True
                self._flush_generation += 1
                effects.append(Schedule(self.config.lazy_delay_s, _FlushTimer(self._flush_generation)))
        return effects

    # --- the three entry points -----------------------------------------------------------

    def broadcast(self, payload: bytes, now: float) -> list[Effect]:
        """Start spreading this peer's own ``payload`` (no :class:`Deliver` for it). ``ValueError`` if it does
        not validate as this peer's or is too large."""
        if len(payload) > self.config.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_payload={self.config.max_payload}")
        if self._validate(payload) != self.me:
            raise ValueError("the payload does not validate as this peer's")
        msg_id = message_id(payload)
        if msg_id in self._seen:
            return []
        self._remember(msg_id, self.me, payload, 0, self.me)
        self._stats["broadcasts"] += 1
        return self._spread(self.me, msg_id, payload, 1, None)

    def receive(self, sender: str, frame: bytes, now: float) -> list[Effect]:
        """A frame from ``sender`` (an authenticated link). Never raises for what the frame holds; every
        refusal is counted in :meth:`statistics` (``rejected_<reason>``)."""
        if sender not in self._member_set or sender == self.me:
            self._reject("not-member")
            return []
        if len(frame) > self._max_frame:
            self._reject("oversized")
            self._adjust(sender, _SCORE_MALFORMED)
            return []
        try:
            decoded = decode(frame, max_payload=self.config.max_payload)
        except FrameError:
            self._reject("malformed")
            self._adjust(sender, _SCORE_MALFORMED)
            return []
        self._stats[f"received_{kind_name(decoded)}"] += 1
        if isinstance(decoded, Gossip):
            return self._regrafts(self._on_gossip(sender, decoded))
        if isinstance(decoded, IHave):
            return self._on_ihave(sender, decoded)
        if isinstance(decoded, Graft):
            return self._regrafts(self._on_graft(sender, decoded))
        if isinstance(decoded, Suspect):
            return self._on_suspect(sender, decoded)
        if isinstance(decoded, Exclude):
            return self._on_exclude(sender, decoded, now)
        return self._on_prune(sender, decoded)

    def fire(self, timer: object, now: float) -> list[Effect]:
        """A timer this core scheduled is due; stale or unknown timers are ignored."""
        if isinstance(timer, _FlushTimer):
            if not self._flush_pending or timer.generation != self._flush_generation:
                return []
            return self._flush()
        if isinstance(timer, _GraftTimer):
            return self._regrafts(self._graft(timer))
        if isinstance(timer, _ParentTimer):
            return self._regrafts(self._parent_check(timer, now))
        if isinstance(timer, _ExcludeTimer):
            return self._publish_exclusions(timer)
        return []

    # --- frames ---------------------------------------------------------------------------

    def _on_gossip(self, sender: str, frame: Gossip) -> list[Effect]:
        msg_id = message_id(frame.payload)
        if (msg_id, sender) in self._late:
            del self._late[(msg_id, sender)]
            self._stats["grafts_late"] += 1  # answered after all: late, not silent (a busy peer, a loaded machine)
            self._adjust(sender, -_SCORE_SILENT)
        if msg_id in self._seen:
            self._stats["duplicates"] += 1
            stored = self._store.get(msg_id)
            known = stored[0] if stored is not None else frame.origin
            if known not in self._member_set or known == self.me:
                return []
            watched = self._watch.get(msg_id)
            if watched is not None and watched[1] == sender:
                del self._watch[msg_id]  # the tree parent did forward it
            parent = self._view(known).parent
            slower = sender
            if stored is not None and sender == parent:
                slower = stored[3]  # keep the tree link: prune the one that came first off the tree
            # never the tree parent; the origin too once it pushes to me only because I grafted onto it
            if slower != parent and slower != self.me and slower in self._member_set:
                self._stats["prunes_sent"] += 1
                return [self._send(slower, Prune(known))]
            return []
        try:
            signer = self._validate(frame.payload)
        except Exception:  # a validator that chokes on hostile bytes has refused them
            signer = None
        if signer is None or signer != frame.origin:
            self._reject("invalid-payload" if signer is None else "origin-mismatch")
            self._adjust(sender, _SCORE_INVALID)
            return []
        origin = signer
        if origin not in self._member_set or origin == self.me:
            self._reject("origin-not-member" if origin != self.me else "own-message")
            return []
        self._remember(msg_id, origin, frame.payload, frame.hops, sender)
        missing = self._missing.pop(msg_id, None)
        effects: list[Effect] = [Deliver(frame.payload, origin, msg_id)]
        if missing is not None:
            self._forget_missing(missing)
            self._stats["recovered"] += 1
        parent = self._view(origin).parent
        if parent is not None and parent != sender and parent != origin:
            # it came another way (a graft, or a link off the tree): if the tree parent has not forwarded it
            # within graft_timeout_s from now, it is silent, not merely late: route around it
            self._watch[msg_id] = (origin, parent)
            while len(self._watch) > self.config.max_missing:
                self._watch.popitem(last=False)
            effects.append(Schedule(self.config.silence_timeout_s + self._rtt(parent), _ParentTimer(msg_id)))
        self._adjust(sender, _SCORE_DELIVERY)
        self._stats["delivered"] += 1
        effects.extend(self._spread(origin, msg_id, frame.payload, min(frame.hops + 1, 255), sender))
        return effects

    def _forget_missing(self, missing: _Missing) -> None:
        self._missing_by_peer[missing.first] -= 1
        if self._missing_by_peer[missing.first] <= 0:
            del self._missing_by_peer[missing.first]

    def _on_ihave(self, sender: str, frame: IHave) -> list[Effect]:
        effects: list[Effect] = []
        for origin, msg_id in frame.entries:
            if msg_id in self._seen:
                continue
            if origin not in self._member_set or origin == self.me:
                self._reject("ihave-origin")
                continue
            missing = self._missing.get(msg_id)
            if missing is not None:
                if sender not in missing.announcers and len(missing.announcers) < MAX_ANNOUNCERS:
                    missing.announcers.append(sender)
                continue
            if sender in self._excluded:
                self._reject("ihave-excluded")
                continue
            if (len(self._missing) >= self.config.max_missing
                    or self._missing_by_peer[sender] >= self.config.max_missing_per_peer):
                self._reject("missing-full")
                continue
            self._missing[msg_id] = _Missing(origin, sender, [sender])
            self._missing_by_peer[sender] += 1
            effects.append(Schedule(self.config.graft_timeout_s, _GraftTimer(msg_id, 0)))
        return effects

    def _on_graft(self, sender: str, frame: Graft) -> list[Effect]:
        if frame.origin not in self._member_set:
            self._reject("graft-origin")
            return []
        self._stats["grafts_received"] += 1
        grafted = self._grafted.setdefault(frame.origin, set())
        pruned = self._pruned.get(frame.origin)
        if pruned is not None:
            pruned.discard(sender)
        if (sender not in grafted and sender != frame.origin
                and sender not in self._view(frame.origin).children):
            if len(grafted) < self.config.max_grafted:
                grafted.add(sender)
            else:
                self._stats["grafts_not_eager"] += 1
        effects: list[Effect] = []
        for msg_id in frame.ids[:MAX_GRAFT_IDS]:
            stored = self._store.get(msg_id)
            if stored is None:
                self._stats["grafts_unknown"] += 1
                continue
            if (sender, msg_id) in self._served:
                self._stats["grafts_repeated"] += 1
                continue
            self._served[(sender, msg_id)] = None
            while len(self._served) > self.config.max_served:
                self._served.popitem(last=False)
            origin, payload, hops, _ = stored
            self._stats["grafts_served"] += 1
            effects.append(self._send(sender, Gossip(origin, payload, min(hops + 1, 255))))
        return effects

    def _on_prune(self, sender: str, frame: Prune) -> list[Effect]:
        if frame.origin not in self._member_set:
            self._reject("prune-origin")
            return []
        self._stats["prunes_received"] += 1
        grafted = self._grafted.get(frame.origin)
        if grafted is not None:
            grafted.discard(sender)
        self._pruned.setdefault(frame.origin, set()).add(sender)
        return []

    def _on_suspect(self, sender: str, frame: Suspect) -> list[Effect]:
        """``sender`` says its parent in my tree, ``frame.relay``, did not forward my message. Acted on only if
        that relay is the sender's parent in my published tree, and for at most ``max_suspects_per_peer``
        reports of one sender: a peer can only take out its own parent, so one hostile peer excludes at most
        that many honest relays, and only ones the tree put above it."""
        relay = frame.relay
        published = self.exclusions(self.me)
        if relay in published or relay in self._my_pending:
            self._stats["suspects_known"] += 1
            return []
        if (relay not in self._member_set or relay == self.me
                or self.routed(self.me, published).parent.get(sender) != relay):
            self._reject("suspect-not-parent")
            return []
        if (self._suspects_from[sender] >= self.config.max_suspects_per_peer
                or len(published) + len(self._my_pending) >= self.config.max_excluded):
            self._reject("suspect-full")
            return []
        self._suspects_from[sender] += 1
        self._my_pending.add(relay)
        self._stats["suspects_accepted"] += 1
        if len(self._my_pending) > 1:
            return []
        self._exclude_generation += 1
        return [Schedule(self.config.exclude_delay_s, _ExcludeTimer(self._exclude_generation))]

    def _publish_exclusions(self, timer: _ExcludeTimer) -> list[Effect]:
        if timer.generation != self._exclude_generation or not self._my_pending:
            return []
        relays = frozenset(self.exclusions(self.me) | self._my_pending)
        self._my_pending.clear()
        self._my_epoch = min(self._my_epoch + 1, MAX_EPOCH)
        self._exclusions[self.me] = (self._my_epoch, relays)
        frame = Exclude(self._my_epoch, tuple(sorted(relays)))
        self._stats["exclusions_published"] += 1
        return [self._send(peer, frame) for peer in self._members if peer != self.me]

    def _on_exclude(self, sender: str, frame: Exclude, now: float) -> list[Effect]:
        """``sender``'s list of the relays its own tree avoids (it can only speak for its own tree)."""
        epoch = self._exclusions.get(sender, (0, frozenset()))[0]
        if frame.epoch <= epoch:
            self._reject("exclude-stale")
            return []
        if (len(frame.relays) > self.config.max_excluded
                or now < self._exclude_heard.get(sender, -math.inf) + self.config.exclude_delay_s / 2):
            self._reject("exclude-refused")  # an origin publishes at most once per exclude_delay_s
            return []
        self._exclude_heard[sender] = now
        self._exclusions[sender] = (frame.epoch, frozenset(frame.relays) & self._member_set - {sender})
        self._stats["exclusions_received"] += 1
        self._view(sender)  # a new parent in its tree hears from me now, before its next message
        return self._regrafts([])

    # --- timers ---------------------------------------------------------------------------

    def _flush(self) -> list[Effect]:
        """Send the queued digests to the lazy neighbours that are not eager targets for their origin."""
        self._flush_pending = False
        batches: dict[str, list[tuple[str, bytes]]] = {}
        eager: dict[str, set[str]] = {}
        for origin, msg_id, sender in self._lazy:
            skip = eager.get(origin)
            if skip is None:
                skip = eager[origin] = set(self._eager_targets(origin, None)) | {origin}
            for peer in self._lazy_peers:
                if peer not in skip and peer != sender:
                    batches.setdefault(peer, []).append((origin, msg_id))
        self._lazy.clear()
        effects: list[Effect] = []
        for peer in sorted(batches):
            entries = batches[peer]
            for start in range(0, len(entries), MAX_IHAVE_IDS):
                effects.append(self._send(peer, IHave(tuple(entries[start:start + MAX_IHAVE_IDS]))))
        return effects

    def _graft(self, timer: _GraftTimer) -> list[Effect]:
        missing = self._missing.get(timer.msg_id)
        if missing is None or missing.attempt != timer.attempt or timer.msg_id in self._seen:
            return []
        effects: list[Effect] = []
        if timer.attempt == 0:
            self._stats["parent_late"] += 1  # judged once the message is in (see _parent_check)
        else:
            self._stats["grafts_unanswered"] += 1
            self._adjust(missing.tried[-1], _SCORE_SILENT)  # refunded if its copy comes in late (_on_gossip)
            self._late[(timer.msg_id, missing.tried[-1])] = None
            while len(self._late) > self.config.max_missing:
                self._late.popitem(last=False)
        untried = [p for p in missing.announcers if p not in missing.tried]
        if not untried:
            del self._missing[timer.msg_id]
            self._forget_missing(missing)
            self._stats["missing_given_up"] += 1
            return effects
        target = min(untried, key=lambda p: (p in self._excluded, self.score(p) < 0, p == missing.origin,
                                             self.matrix.get(self.me, p), p))
        missing.tried.append(target)
        missing.attempt += 1
        self._stats["grafts_sent"] += 1
        effects.append(self._send(target, Graft(missing.origin, (timer.msg_id,))))
        wait = self.config.graft_timeout_s + self._rtt(target)
        effects.append(Schedule(wait, _GraftTimer(timer.msg_id, missing.attempt)))
        return effects

    def _regrafts(self, effects: list[Effect]) -> list[Effect]:
        """``effects`` plus an empty GRAFT to each new tree parent (:meth:`_view` found them)."""
        while self._regraft:
            origin, parent = self._regraft.popitem()
            self._stats["regrafts"] += 1
            effects.append(self._send(parent, Graft(origin, ())))
        return effects

    def _route_around(self, origin: str, parent: str | None) -> list[Effect]:
        """``parent``, my tree parent for ``origin``, did not forward one of its messages: score it down and,
        for this origin, take it out as a relay in my view; my new parent is asked (empty GRAFT) to push to me."""
        self._stats["parent_silent"] += 1
        self._adjust(parent, _SCORE_SILENT)
        if parent is None or parent == origin:
            return []
        self._failed.setdefault(origin, set()).add(parent)
        effects: list[Effect] = []
        if parent not in self.exclusions(origin):
            self._stats["suspects_sent"] += 1
            effects.append(self._send(origin, Suspect(parent)))
        replacement = self._view(origin).parent
        if replacement is not None and replacement != parent:
            self._stats["reparented"] += 1
            self._regraft[origin] = replacement
        return effects

    def _parent_check(self, timer: _ParentTimer, now: float) -> list[Effect]:
        watched = self._watch.pop(timer.msg_id, None)
        if watched is None:
            return []
        origin, parent = watched
        if self._view(origin).parent != parent:
            return []
        if now < self._adopted_at + self.config.switch_grace_s:
            self._stats["parent_check_switching"] += 1  # trees are switching: the parent may forward on the old one
            return []
        self._stats["parent_silent_masked"] += 1
        return self._route_around(origin, parent)

    # --- introspection --------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counters (frames and bytes sent by kind, received by kind, deliveries, duplicates, grafts, prunes,
        rejects by reason) and the size of every bounded table."""
        stats = dict(self._stats)
        stats.update(
            seen=len(self._seen), stored=len(self._store), stored_bytes=self._stored_bytes,
            missing=len(self._missing), missing_peers=len(self._missing_by_peer), lazy_queue=len(self._lazy),
            served=len(self._served), late_grafts=len(self._late), scores=len(self._scores),
            excluded=len(self._excluded),
            grafted_links=sum(len(s) for s in self._grafted.values()),
            pruned_links=sum(len(s) for s in self._pruned.values()), views=len(self._views),
            failed_parents=sum(len(s) for s in self._failed.values()), watched=len(self._watch),
            excluded_relays=sum(len(r) for _, r in self._exclusions.values()), suspects_pending=len(self._my_pending),
            members=len(self._members),
        )
        return stats
