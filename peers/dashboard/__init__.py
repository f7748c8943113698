"""The live dashboard each peer serves (issue 16): peers and links, weights over heights, recent decisions,
the ledger's tail and evidence, and a box to ask a question whose certificate is then verified.

A small static page (``static/index.html``, ``app.js``, ``style.css``) with uPlot vendored beside it (MIT,
``static/uPlot.LICENSE``; no CDN), fed by a JSON snapshot and server-sent events. Where the certificate is
verified, and why: ``docs/adr/0021-dashboard.md``.
"""

from peers.dashboard._router import KEEPALIVE_S, MAX_SUBSCRIBERS, MIN_EVENT_INTERVAL_S, STATIC_FILES, dashboard_router
from peers.dashboard._snapshot import CACHE_HEIGHTS, DECISIONS, EVIDENCE, LEDGER_TAIL, WEIGHT_HEIGHTS, Snapshots

__all__ = [
    "CACHE_HEIGHTS", "DECISIONS", "EVIDENCE", "KEEPALIVE_S", "LEDGER_TAIL", "MAX_SUBSCRIBERS", "MIN_EVENT_INTERVAL_S",
    "STATIC_FILES", "Snapshots", "WEIGHT_HEIGHTS", "dashboard_router",
]
