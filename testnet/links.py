"""Per-destination link delays of a testnet: peers on a plane, explicit overrides, the peers' ``[p2p] link_delays_ms``.

A manifest may place its peers at seeded points in the unit square::

    [testnet]
    link_plane = { seed = 1, min_delay_ms = 5, max_delay_ms = 80 }   # defaults: seed 1, 5 ms, 80 ms

and the one-way delay from peer i to peer j (manifest order, joiners included)
is ``min + (max - min) * distance / sqrt(2)`` milliseconds, rounded: 5 to 80 ms
by default, the latency matrix ``bench/broadcast.py`` measures the tree broadcast on
(:func:`plane_delays` is that matrix). A peer may also name single destinations::

    [[peer]]
    name = "peer0"
    links = { peer3 = 120, peer5 = 0 }   # one-way delay (ms, 0-60000) of what peer0 sends to peer3 / peer5

``links`` override the plane for those destinations. Both become the peer's
``[p2p] link_delays_ms`` (keyed by peer id), applied by its transport's
``LinkShaper``; ``network.delay_ms`` stays the delay towards every other
destination, so a peer under a plane (which names every destination) cannot
also set it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LinkError", "LinkPlane", "MAX_LINK_DELAY_MS", "check_links", "link_delays_ms", "plane_delays"]

MAX_LINK_DELAY_MS = 60_000
"""Largest one-way delay of a link, as ``[p2p] link_delay_ms``."""
_PLANE_KEYS = ("seed", "min_delay_ms", "max_delay_ms")


def plane_delays(n: int, seed: int, min_ms: float = 5.0, max_ms: float = 80.0) -> list[list[float]]:
    """One-way delays in seconds between ``n`` seeded points in the unit square: ``min_ms + (max_ms - min_ms) *
    distance / sqrt(2)`` milliseconds off the diagonal (symmetric; 0 on it)."""
    rng = random.Random(seed)
    pts = [(rng.random(), rng.random()) for _ in range(n)]
    return [[0.0 if i == j else (min_ms + (max_ms - min_ms) * math.dist(pts[i], pts[j]) / math.sqrt(2)) / 1000
             for j in range(n)] for i in range(n)]


class LinkError(ValueError):
    """A bad ``link_plane`` or ``links`` value; the manifest re-raises it with the key's place."""


def _int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LinkError(f"{where}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise LinkError(f"{where}: {value} is outside [{low}, {high}]")
    return value


@dataclass(frozen=True)
class LinkPlane:
    """``[testnet] link_plane``: peers at seeded points of the unit square, delays growing with distance."""

    seed: int = 1
    min_delay_ms: int = 5
    max_delay_ms: int = 80

    @classmethod
    def from_dict(cls, data: object) -> LinkPlane:
        """Validate a parsed ``link_plane`` table; :class:`LinkError` names the bad key."""
        if not isinstance(data, dict):
            raise LinkError("testnet.link_plane: expected a table { seed, min_delay_ms, max_delay_ms }")
        extra = sorted(set(data) - set(_PLANE_KEYS))
        if extra:
            raise LinkError(f"testnet.link_plane: unknown key {', '.join(extra)} (allowed: {', '.join(_PLANE_KEYS)})")
        return cls(seed=data.get("seed", 1), min_delay_ms=data.get("min_delay_ms", 5),
                   max_delay_ms=data.get("max_delay_ms", 80)).validate()

    def validate(self) -> LinkPlane:
        """:class:`LinkError` naming the bad key; self when valid."""
        _int("testnet.link_plane.seed", self.seed, 0, 2**32 - 1)
        _int("testnet.link_plane.min_delay_ms", self.min_delay_ms, 0, MAX_LINK_DELAY_MS)
        _int("testnet.link_plane.max_delay_ms", self.max_delay_ms, 0, MAX_LINK_DELAY_MS)
        if self.max_delay_ms < self.min_delay_ms:
            raise LinkError(f"testnet.link_plane: max_delay_ms ({self.max_delay_ms}) is below min_delay_ms "
                            f"({self.min_delay_ms})")
        return self

    def delays_ms(self, n: int) -> list[list[int]]:
        """The plane's one-way delays between ``n`` peers, whole milliseconds."""
        return [[round(1000 * d) for d in row] for row in plane_delays(n, self.seed, self.min_delay_ms,
                                                                         self.max_delay_ms)]


def check_links(value: object, names: Sequence[str], own: str) -> dict[str, int]:
    """A peer's ``links`` table ({other peer's name: delay ms}), validated against the manifest's ``names``."""
    if not isinstance(value, dict):
        raise LinkError("links: expected a table { <peer name> = <delay ms>, ... }")
    out = {}
    for name, ms in value.items():
        if name == own:
            raise LinkError(f"links.{name}: a peer has no link to itself")
        if name not in names:
            raise LinkError(f"links.{name}: no peer of the manifest is named {name!r}")
        out[name] = _int(f"links.{name}", ms, 0, MAX_LINK_DELAY_MS)
    return out


def link_delays_ms(names: Sequence[str], plane: LinkPlane | None,
                   links: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Each peer's per-destination delays (name -> other name -> ms): the plane's, then its ``links`` over them."""
    grid = plane.delays_ms(len(names)) if plane is not None else None
    out: dict[str, dict[str, int]] = {}
    for i, name in enumerate(names):
        row = {other: grid[i][j] for j, other in enumerate(names) if j != i} if grid is not None else {}
        row.update(links.get(name, {}))
        out[name] = row
    return out
