"""The certificates a peer serves: its own recent decisions and the ledger's, each with a trust path.

A client trusts only the genesis (or a later height it verified). To check a
certificate of height ``h`` it may need intermediate decided heights whose
sets vouch for the next ones (:mod:`consensus.lightclient`); this store
plans that path by bisection over certificates the peer already holds (its
own decisions, or the ledger's, which checked each one against its own
chain) and attaches it (``trust_path``). Bounded: the last
:data:`KEEP_OWN` own decisions and :data:`KEEP_BLOCKS` parsed light blocks
are kept in memory; everything older comes from the ledger.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from consensus.lightclient import LightBlock, LightClientError, TrustedState, plan_path
from multillmn.certificate import CertificateError, light_block_of, with_trust_path
from multillmn.genesis import Genesis
from multillmn.logs import fields

if TYPE_CHECKING:
    from peers.ledger import LedgerService

__all__ = ["CertificateStore", "KEEP_BLOCKS", "KEEP_OWN"]

log = logging.getLogger("multillmn.certificates")

KEEP_OWN = 256
"""This run's own decisions kept in memory (older ones are served from the ledger)."""
KEEP_BLOCKS = 1024
"""Parsed light blocks kept for planning trust paths."""


class CertificateStore:
    """Own recent certificates and the ledger's, served with a trust path from the genesis."""

    def __init__(self, genesis: Genesis, ledger: LedgerService | None = None) -> None:
        self.genesis = genesis
        self.ledger = ledger
        self.decided = 0  # decisions of this run
        self._own: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._blocks: OrderedDict[int, LightBlock] = OrderedDict()

    def add(self, height: int, cert: dict[str, Any]) -> None:
        """A certificate of this peer's own decision (no trust path)."""
        self.decided += 1
        self._own[height] = cert
        self._own.move_to_end(height)
        while len(self._own) > KEEP_OWN:
            self._own.popitem(last=False)

    def get(self, height: int) -> dict[str, Any] | None:
        """The certificate of ``height`` without a trust path: this run's decision, else the ledger's."""
        cert = self._own.get(height)
        if cert is None and self.ledger is not None:
            cert = self.ledger.certificate(height)
        return cert

    def serve(self, height: int) -> dict[str, Any] | None:
        """The certificate of ``height`` with the trust path a client anchored at the genesis needs."""
        cert = self.get(height)
        return None if cert is None else self.with_path(cert)

    def with_path(self, cert: dict[str, Any]) -> dict[str, Any]:
        """``cert`` with a trust path from the genesis (none if the peer lacks a block it needs: the
        client then reports that it cannot trust the certificate, rather than trusting it wrongly)."""
        try:
            path = plan_path(TrustedState.genesis(self.genesis.chain_id, self.genesis.validators), light_block_of(cert), self._block)
        except (LightClientError, CertificateError) as exc:
            log.warning("no trust path", extra=fields(height=cert.get("height"), reason=str(exc)))
            return cert
        return with_trust_path(cert, path)

    def _block(self, height: int) -> LightBlock | None:
        block = self._blocks.get(height)
        if block is None:
            cert = self.get(height)
            if cert is None:
                return None
            try:
                block = light_block_of(cert)
            except CertificateError:
                return None
            self._blocks[height] = block
            while len(self._blocks) > KEEP_BLOCKS:
                self._blocks.popitem(last=False)
        return block
