"""Broadcast over per-origin latency trees with Plumtree repair and relay scoring (issue 13, ADR 0018).

Pure and sans-I/O: :class:`Broadcaster` (``broadcast / receive / fire ->
[Send | Deliver | Schedule]``) in :mod:`peers.broadcast._core`, the frame codec in
:mod:`peers.broadcast._frames`, tree construction in :mod:`peers.broadcast._trees`,
and a deterministic in-memory network for tests and benchmarks in
:mod:`peers.broadcast._simnet`. The trio host, :class:`BroadcastTransport`
(:mod:`peers.broadcast._host`), wraps a :class:`~peers.transport.Transport`
with the same surface, so a node with ``[p2p] broadcast = "tree"`` spreads its
own messages over the trees; link latencies come from :mod:`peers.latency`.
"""

from peers.broadcast._core import (
    MAX_ANNOUNCERS,
    SCORE_MAX,
    SCORE_MIN,
    BroadcastConfig,
    Broadcaster,
    Deliver,
    Effect,
    Schedule,
    Send,
)
from peers.broadcast._frames import (
    MAX_CONTROL_FRAME,
    MAX_EXCLUDED,
    MAX_GRAFT_IDS,
    MAX_HOPS,
    MAX_IHAVE_IDS,
    MAX_PEER_ID_LEN,
    MSG_ID_LEN,
    Frame,
    Exclude,
    FrameError,
    Gossip,
    Graft,
    IHave,
    Prune,
    Suspect,
    decode,
    encode,
    max_frame_len,
    message_id,
)
from peers.broadcast._host import BroadcastTransport, signed_validator, tree_transport
from peers.broadcast._trees import (
    BRUTE_FORCE_MAX_NODES,
    DEFAULT_LATENCY_S,
    IMPROVE_MAX_NODES,
    LatencyMatrix,
    Tree,
    arrival_times,
    brute_force_best_tree,
    build_tree,
    check_tree,
    max_latency,
    parents_of,
    reroute,
)

__all__ = [
    "BRUTE_FORCE_MAX_NODES", "DEFAULT_LATENCY_S", "IMPROVE_MAX_NODES", "MAX_ANNOUNCERS", "MAX_CONTROL_FRAME", "MAX_EXCLUDED", "MAX_GRAFT_IDS",
    "MAX_HOPS", "MAX_IHAVE_IDS", "MAX_PEER_ID_LEN", "MSG_ID_LEN", "SCORE_MAX", "SCORE_MIN", "BroadcastConfig",
    "BroadcastTransport", "Broadcaster", "Deliver", "Effect", "Exclude", "Frame", "FrameError", "Gossip", "Graft", "IHave", "LatencyMatrix",
    "Prune", "Schedule", "Send", "Suspect", "Tree", "arrival_times", "brute_force_best_tree", "build_tree", "check_tree",
    "decode", "encode", "max_frame_len", "max_latency", "message_id", "parents_of", "reroute",
    "signed_validator", "tree_transport",
]
