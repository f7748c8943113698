"""Per-destination link delays in the testnet manifest: the plane, ``links`` overrides, and every rejection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from testnet.links import LinkPlane, plane_delays
from testnet.manifest import MAX_PEERS, Manifest, ManifestError

_P = '[[peer]]\nname = "p0"\nmodel = "smollm2"\n'
_THREE = _P + '[[peer]]\nname = "p1"\nmodel = "smollm2"\n[[peer]]\nname = "p2"\nmodel = "gemma3"\n'


def test_plane_delays_are_seeded_symmetric_and_grow_with_distance() -> None:
    m = plane_delays(12, seed=5, min_ms=10, max_ms=110)
    assert m == plane_delays(12, seed=5, min_ms=10, max_ms=110) != plane_delays(12, seed=6, min_ms=10, max_ms=110)
    assert all(m[i][i] == 0 and m[i][j] == m[j][i] for i in range(12) for j in range(12))
    off = [m[i][j] for i in range(12) for j in range(12) if i != j]
    assert 0.010 <= min(off) and max(off) <= 0.110 and max(off) - min(off) > 0.03
    # the bench's matrix (bench/broadcast.py) is this function at its defaults, 5-80 ms
    assert all(0.005 <= d <= 0.080 for row in plane_delays(8, seed=1) for d in row if d)
    ms = LinkPlane(seed=5, min_delay_ms=10, max_delay_ms=110).delays_ms(12)
    assert ms == [[round(1000 * d) for d in row] for row in m]
    assert LinkPlane(seed=2, min_delay_ms=7, max_delay_ms=7).delays_ms(3) == [[0, 7, 7], [7, 0, 7], [7, 7, 0]]


def test_plane_and_links_give_each_peer_its_delays() -> None:
    m = Manifest.loads('[testnet]\nbroadcast = "tree"\nlink_plane = { seed = 3, max_delay_ms = 200 }\n'
                       + _THREE.replace('name = "p0"\n', 'name = "p0"\nlinks = { p2 = 900 }\n'))
    assert m.broadcast == "tree" and m.link_plane == LinkPlane(seed=3, min_delay_ms=5, max_delay_ms=200)
    grid = LinkPlane(seed=3, min_delay_ms=5, max_delay_ms=200).delays_ms(3)
    delays = m.link_delays()
    assert delays == {"p0": {"p1": grid[0][1], "p2": 900}, "p1": {"p0": grid[1][0], "p2": grid[1][2]},
                      "p2": {"p0": grid[2][0], "p1": grid[2][1]}}
    assert all(5 <= ms <= 200 for row in delays.values() for other, ms in row.items() if ms != 900)
    # links alone name single destinations; network.delay_ms stays the others'
    alone = Manifest.loads(_THREE.replace('name = "p1"\n', 'name = "p1"\nnetwork = { delay_ms = 20 }\n'
                                          'links = { p0 = 0 }\n'))
    assert alone.link_plane is None and alone.broadcast == "mesh"
    assert alone.link_delays() == {"p0": {}, "p1": {"p0": 0}, "p2": {}} and alone.peers[1].link_delay_ms == 20
    assert Manifest.loads(_THREE).link_delays() == {"p0": {}, "p1": {}, "p2": {}}
    assert Manifest.from_args(3, ["smollm2"], broadcast="tree", link_plane=LinkPlane()).link_delays()["peer0"]


@pytest.mark.parametrize(("toml", "message"), [
    ("[testnet]\nbroadcast = 'star'\n" + _P, r"testnet.broadcast: expected mesh \| tree, got 'star'"),
    ("[testnet]\nlink_plane = 3\n" + _P, "testnet.link_plane: expected a table"),
    ("[testnet]\nlink_plane = { seed = 1, size = 2 }\n" + _P, "testnet.link_plane: unknown key size"),
    ("[testnet]\nlink_plane = { seed = -1 }\n" + _P, r"testnet.link_plane.seed: -1 is outside"),
    ("[testnet]\nlink_plane = { seed = true }\n" + _P, "testnet.link_plane.seed: expected an integer"),
    ("[testnet]\nlink_plane = { max_delay_ms = 60001 }\n" + _P, r"max_delay_ms: 60001 is outside \[0, 60000\]"),
    ("[testnet]\nlink_plane = { min_delay_ms = 1.5 }\n" + _P, "min_delay_ms: expected an integer"),
    ("[testnet]\nlink_plane = { min_delay_ms = 50, max_delay_ms = 40 }\n" + _P,
     r"max_delay_ms \(40\) is below min_delay_ms \(50\)"),
    ("[testnet]\nlink_plane = {}\n" + _P + "network = { delay_ms = 20 }\n",
     "peer 'p0': network.delay_ms would apply to no link under"),
    (_THREE + "links = 5\n", "peer 'p2': links must be a table"),
    (_THREE + "links = { p9 = 5 }\n", r"peer 'p2': links.p9: no peer of the manifest is named 'p9'"),
    (_THREE + "links = { p2 = 5 }\n", "peer 'p2': links.p2: a peer has no link to itself"),
    (_THREE + "links = { P0 = 5 }\n", r"peer 'p2': links.P0: expected a peer name"),
    (_THREE + "links = { p0 = -3 }\n", r"peer 'p2': links.p0: -3 is outside \[0, 60000\]"),
    (_THREE + "links = { p0 = 70000 }\n", r"links.p0: 70000 is outside"),
    (_THREE + "links = { p0 = 'slow' }\n", "links.p0: expected an integer"),
    (_THREE + "links = { " + ", ".join(f"x{i} = 1" for i in range(MAX_PEERS)) + " }\n",
     f"links names {MAX_PEERS} peers; a testnet has at most {MAX_PEERS}"),
])
def test_bad_link_settings_are_rejected(toml: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.loads(toml)


def test_the_plane_example_is_valid() -> None:
    m = Manifest.load(Path(__file__).resolve().parents[1] / "testnet" / "examples" / "plane.toml")
    delays = m.link_delays()
    assert len(m.peers) == 8 and m.broadcast == "tree" and delays["peer0"]["peer7"] == 250
    others = [ms for name, row in delays.items() for other, ms in row.items() if (name, other) != ("peer0", "peer7")]
    assert len(others) == 8 * 7 - 1 and all(5 <= ms <= 80 for ms in others)
    assert not math.isclose(min(others), max(others))
