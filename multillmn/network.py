"""A network across machines: identity files, the genesis built from them, and each peer configured for it.

How operators set one up (README, "A network across machines")::

    multillmn peer init --dir ./alice --moniker alice --model gemma3 --p2p-listen 0.0.0.0:26656  # each operator
    multillmn peer export --config ./alice/config.toml --address alice.example:26656 --out alice.json
    multillmn genesis build --chain-id lab --out genesis.json alice.json bob.json carol.json dave.json
    multillmn peer configure --config ./alice/config.toml --genesis genesis.json alice.json bob.json ...
    multillmn peer start --config ./alice/config.toml

An identity file is the public half of a peer: its id, public key, moniker,
p2p address and model, signed with its key, so whoever builds the genesis
knows each key's holder chose that address (a file whose signature does not
verify, or whose id is not its key's, is refused).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from multillmn import canonical, jsonsafe
from multillmn.config import ConfigError, PeerAddress, PeerConfig, parse_hostport, render_toml
from multillmn.genesis import Genesis, GenesisError, Params
from multillmn.identity import KeyPair, is_peer_id, peer_id_of, verify_signature

__all__ = ["IdentityError", "PeerIdentity", "build_genesis", "configure_peer", "write_identity"]

_KIND = "identity"
_KEYS = {"peer_id", "public_key", "moniker", "address", "model", "signature"}


class IdentityError(ValueError):
    """An identity file is unreadable, malformed or not signed by its key; the message says why."""


@dataclass(frozen=True)
class PeerIdentity:
    """What other operators need to know of a peer."""

    peer_id: str
    public_key: bytes
    moniker: str
    address: str
    model: str

    def body(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "public_key": self.public_key, "moniker": self.moniker,
                "address": self.address, "model": self.model}

    def signed_json(self, key: KeyPair) -> dict[str, Any]:
        """The identity file's content, signed by ``key`` (which must be this identity's)."""
        if key.peer_id != self.peer_id:
            raise IdentityError("an identity is signed by its own key")
        sig = key.sign(_KIND, canonical.pack(self.body()))
        return {**self.body(), "public_key": self.public_key.hex(), "signature": sig.hex()}

    @classmethod
    def from_json(cls, data: Any, what: str = "identity") -> PeerIdentity:
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise IdentityError(f"{what}: expected exactly the keys {sorted(_KEYS)}")
        texts = {k: data[k] for k in ("peer_id", "moniker", "address", "model")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise IdentityError(f"{what}: peer_id, moniker, address and model must be strings")
        try:
            public_key, sig = bytes.fromhex(data["public_key"]), bytes.fromhex(data["signature"])
        except (TypeError, ValueError):
            raise IdentityError(f"{what}: public_key and signature must be hex") from None
        if len(public_key) != 32 or not is_peer_id(texts["peer_id"]) or peer_id_of(public_key) != texts["peer_id"]:
            raise IdentityError(f"{what}: peer_id is not the id of public_key")
        if not 0 < len(texts["moniker"]) <= 64 or not 0 < len(texts["model"]) <= 256:
            raise IdentityError(f"{what}: moniker (1-64 characters) and model (1-256) must not be empty")
        try:
            parse_hostport(texts["address"], f"{what}.address")
        except ConfigError as exc:
            raise IdentityError(str(exc)) from None
        identity = cls(texts["peer_id"], public_key, texts["moniker"], texts["address"], texts["model"])
        if not verify_signature(public_key, _KIND, canonical.pack(identity.body()), sig):
            raise IdentityError(f"{what}: the signature is not by this identity's key")
        return identity

    @classmethod
    def load(cls, path: Path) -> PeerIdentity:
        try:
            data = jsonsafe.loads(path.read_bytes(), max_bytes=64 << 10)
        except OSError as exc:
            raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
        except jsonsafe.JsonError as exc:
            raise IdentityError(f"{path}: not JSON within bounds: {exc}") from None
        return cls.from_json(data, str(path))


def build_genesis(chain_id: str, identities: list[PeerIdentity], weights: dict[str, int] | None = None,
                  params: Params = Params()) -> Genesis:
    """The genesis of a network of ``identities`` (weights by moniker or peer id; default 1 each)."""
    weights = weights or {}
    ids = [i.peer_id for i in identities]
    monikers = [i.moniker for i in identities]
    if len(set(ids)) != len(ids):
        raise GenesisError("an identity is given twice")
    if len(set(monikers)) != len(monikers):
        raise GenesisError("two identities share a moniker")
    unknown = set(weights) - set(ids) - set(monikers)
    if unknown:
        raise GenesisError(f"weights for peers that are not given: {', '.join(sorted(unknown))}")
    members = [(i.moniker, i.public_key, weights.get(i.peer_id, weights.get(i.moniker, 1))) for i in identities]
    if not params.models:  # a joiner may declare the models the founders run
        params = replace(params, models=tuple(sorted({i.model for i in identities})))
    try:
        return Genesis.build(chain_id, members, params)
    except ValueError as exc:
        raise GenesisError(str(exc)) from None


def configure_peer(config_path: Path, genesis: Path, identities: list[PeerIdentity]) -> PeerConfig:
    """Give the peer of ``config_path`` the network's genesis (copied next to its config) and the others'
    addresses as persistent peers. A genesis validator needs every other one's identity; a peer outside
    the genesis (one that will ask to join a network whose members change) needs at least one."""
    cfg = PeerConfig.load(config_path)
    key = KeyPair.load(cfg.path(cfg.key_file))
    network = Genesis.load(genesis)
    if key.peer_id not in network.validators:
        if network.params.weights != "adaptive":
            raise GenesisError(f"this peer ({key.peer_id}) is not a validator of {genesis}, whose set is fixed")
        if not any(i.peer_id in network.validators for i in identities):
            raise GenesisError("a joining peer needs the identity file of at least one validator to reach")
    else:
        missing = [v.moniker for v in network.validators if v.peer_id != key.peer_id
                   and v.peer_id not in {i.peer_id for i in identities}]
        if missing:
            raise GenesisError(f"no identity file for {', '.join(missing)}: every other validator's address "
                               "is needed")
    target = cfg.path(cfg.genesis_file)
    if target.resolve() != genesis.resolve():
        shutil.copyfile(genesis, target)
    peers = tuple(PeerAddress(i.peer_id, i.address) for i in identities
                  if i.peer_id != key.peer_id and i.peer_id in network.validators)
    mine = next((i for i in identities if i.peer_id == key.peer_id), None)
    updated = replace(cfg, persistent_peers=peers, moniker=mine.moniker if mine is not None else cfg.moniker).validate()
    config_path.write_text(render_toml(updated))
    return updated


def write_identity(path: Path, identity: PeerIdentity, key: KeyPair) -> None:
    path.write_text(json.dumps(identity.signed_json(key), indent=2) + "\n")
