"""Local multi-process testnet: a TOML manifest, a launcher and the ``multillmn testnet`` commands."""

from testnet.launcher import PeerStatus, TestnetError, TestnetState, down, logs, status, up
from testnet.manifest import Manifest, ManifestError, PeerSpec

__all__ = ["Manifest", "ManifestError", "PeerSpec", "PeerStatus", "TestnetError", "TestnetState",
           "down", "logs", "status", "up"]
