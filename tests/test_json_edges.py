"""JSON from a peer or a file is bounded everywhere it is read (issue 10), and the edges around it.

A hostile peer (a loopback HTTP server that answers whatever a test sets)
replies to ``multillmn ask``, ``multillmn ledger tail|show`` and the
launcher's status reader with deep, binary, huge or ill-typed JSON: each
gives a one-line error (or ``None``), never a traceback. A hostile genesis
file gives a ``GenesisError``; an unwritable ``--trusted-state`` a
``CertificateError`` through ``multillmn verify``; a ledger snapshot with
more than 65,536 log entries restores.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dag import Ledger, sign_event, weights_tx
from multillmn.certificate import build_certificate
from multillmn.cli import main as cli_main
from multillmn.client import ClientError, ask, check, read_bounded
from multillmn.genesis import Genesis, GenesisError
from tests.conftest import make_net

NET = make_net([1, 1, 1, 1])


def _certificate() -> dict[str, Any]:
    value = NET.value(["Paris"] * 4)
    return build_certificate(NET.genesis, 3, 0, value, tuple(NET.precommit(i, 3, 0, value) for i in range(3)))


CERT = _certificate()
REPLY: dict[str, Any] = {
    "question": "What is the capital of France?", "answer": "Paris", "height": 3, "round": 0, "agreed_weight": 4,
    "total_weight": 4, "agreed_share": 1.0,
    "answers": [{"peer_id": k.peer_id, "moniker": f"peer{i}", "model": "m", "text": "Paris", "weight": 1,
                 "agreed": True, "generation_ms": 5, "signature": "ab" * 64} for i, k in enumerate(NET.keys)],
    "timings": {"total_ms": 10, "generation_ms": 5, "consensus_ms": 5, "protocol_ms": 1},
    "certificate": CERT,
}


def _with(**fields: Any) -> bytes:
    return json.dumps({**REPLY, **fields}).encode()


class _Peer(ThreadingHTTPServer):
    daemon_threads = True
    reply: tuple[int, bytes, dict[str, str]] = (200, b"{}", {})


class _Handler(BaseHTTPRequestHandler):
    server: _Peer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer()

    def _answer(self) -> None:
        status, body, headers = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            if value:  # "": left out (HTTP/1.0: the body runs to the close)
                self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading: what a bounded reader does
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[tuple[_Peer, str]]:
    server = _Peer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE_BODIES: dict[str, tuple[bytes, str]] = {
    "deep-100000": (DEEP, "nested 100000 deep"),
    "deep-1010-in-a-field": (_with(question=None)[:-1] + b', "x": ' + b"[" * 1010 + b"]" * 1010 + b"}",
                             "nested 1011 deep"),
    "binary": (bytes(range(256)) * 4, "not UTF-8"),
    "huge-integer": (b'{"height": ' + b"9" * 5000 + b"}", "digits exceeds"),
    "lone-surrogate": (_with(question="\ud800"), "lone surrogate"),
    "nan": (b'{"height": NaN}', "NaN is not JSON"),
    "not-an-object": (b"[1, 2, 3]", "not a JSON object"),
    "empty-object": (b"{}", "no 'certificate'"),
    "no-answers": (_with(answers="none"), "'answers'"),
    "answer-not-an-object": (_with(answers=[None]), "'answers[0]'"),
    "share-a-string": (_with(agreed_share="all"), "'agreed_share'"),
    "height-a-bool": (_with(height=True), "'height'"),
    "timings-missing": (_with(timings={}), "'timings.total_ms'"),
    "weight-a-string": (_with(answers=[{**REPLY["answers"][0], "weight": "heavy"}]), "'answers[0].weight'"),
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_ask_refuses_a_hostile_reply_with_a_client_error(name: str, peer: tuple[_Peer, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    server, url = peer
    body, reason = HOSTILE_BODIES[name]
    server.reply = (200, body, {})
    with pytest.raises(ClientError, match=re.escape(reason)):
        ask(url, "Q?", timeout_s=10)
    assert cli_main(["ask", "--peer", url, "Q?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err


def test_a_well_formed_reply_passes_and_its_certificate_verifies(peer: tuple[_Peer, str],
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    server, url = peer
    server.reply = (200, json.dumps(REPLY).encode(), {})
    result = ask(url, "Q?", timeout_s=10)
    assert result == json.loads(json.dumps(REPLY)) and check(result, NET.genesis).answer == "Paris"
    genesis = tmp_path / "genesis.json"
    NET.genesis.save(genesis)
    assert cli_main(["ask", "--peer", url, "--genesis", str(genesis), "Q?"]) == 0
    assert "Certificate:      VALID" in capsys.readouterr().out
    server.reply = (200, _with(certificate=None), {})  # a malformed certificate is INVALID, not an error
    assert cli_main(["ask", "--peer", url, "Q?"]) == 1
    assert "Certificate:      INVALID — a certificate is a JSON object" in capsys.readouterr().out


def test_refusals_and_oversized_replies(peer: tuple[_Peer, str]) -> None:
    server, url = peer
    server.reply = (503, DEEP, {})
    with pytest.raises(ClientError, match=r"peer answered 503: \[\[\[") as info:
        ask(url, "Q?", timeout_s=10)
    assert len(str(info.value)) < 600  # the start of the body, not all of it
    server.reply = (503, b'{"detail": "peer is not ready yet"}', {})
    with pytest.raises(ClientError, match="peer answered 503: peer is not ready yet"):
        ask(url, "Q?", timeout_s=10)
    server.reply = (200, b"{}", {"Content-Length": str(1 << 40)})  # declared: refused before reading
    with pytest.raises(ClientError, match=f"reply of {1 << 40} bytes exceeds the limit"):
        ask(url, "Q?", timeout_s=10)
    server.reply = (200, b" " * 5000 + b"{}", {"Content-Length": ""})  # no length: counted as it streams
    with httpx.Client() as client, client.stream("GET", url) as response:
        with pytest.raises(ClientError, match="exceeds the limit of 1000 bytes"):
            read_bounded(response, 1000)


LEDGER_CASES = {
    "deep": (["ledger", "tail"], (200, DEEP), "not JSON within bounds"),
    "binary": (["ledger", "tail"], (200, bytes(range(256))), "not UTF-8"),
    "total-a-string": (["ledger", "tail"], (200, b'{"total": "7", "state_hash": "", "entries": []}'),
                       "integer total"),
    "entry-not-an-object": (["ledger", "tail"], (200, b'{"total": 1, "state_hash": "", "entries": [null]}'),
                            "entry 0"),
    "certificate-entry-without-height": (
        ["ledger", "tail"],
        (200, b'{"total": 1, "state_hash": "", "entries": [{"index": 0, "position": 0, "type": "certificate"}]}'),
        "entry 0"),
    "refusal-deep": (["ledger", "tail"], (500, DEEP), "peer answered 500: [[["),
    "show-deep": (["ledger", "show", "3"], (200, DEEP), "not JSON within bounds"),
    "show-surrogate": (["ledger", "show", "3"], (200, b'{"summary": "\\udfff"}'), "lone surrogate"),
    "show-refusal-binary": (["ledger", "show", "3"], (503, b"\xff\xfe" * 10), "peer answered 503"),
}


@pytest.mark.parametrize("name", LEDGER_CASES)
def test_ledger_commands_refuse_hostile_replies_in_one_line(name: str, peer: tuple[_Peer, str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    server, url = peer
    argv, (status, body), reason = LEDGER_CASES[name]
    server.reply = (status, body, {})
    assert cli_main([*argv, "--peer", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and reason in err and "Traceback" not in err, err
    assert len(err) < 1000


def test_ledger_show_of_a_good_certificate_still_verifies(peer: tuple[_Peer, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    server, url = peer
    server.reply = (200, json.dumps(CERT).encode(), {})
    assert cli_main(["ledger", "show", "3", "--peer", url]) == 0
    assert "height 3 round 0" in capsys.readouterr().out


def test_the_launcher_s_status_reader_takes_only_bounded_json_objects(peer: tuple[_Peer, str]) -> None:
    from testnet.state import _fetch

    server, url = peer
    with httpx.Client(timeout=5, trust_env=False) as client:
        for status, body, headers in [(200, DEEP, {}), (200, bytes(range(256)), {}), (200, b"[1]", {}),
                                      (200, b'{"height": ' + b"9" * 5000 + b"}", {}), (500, b'{"a": 1}', {}),
                                      (200, b"{}", {"Content-Length": str(5 << 20)})]:
            server.reply = (status, body, headers)
            assert _fetch(client, url) is None, body[:20]
        server.reply = (200, b'{"height": 4, "ready": true}', {})
        assert _fetch(client, url) == {"height": 4, "ready": True}
    assert _fetch(httpx.Client(timeout=1, trust_env=False), "http://127.0.0.1:9") is None


# --- files ----------------------------------------------------------------------------------------

HOSTILE_GENESIS = {
    "deep": (DEEP, "nested 100000 deep"),
    "deep-object": (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested 2000 deep"),
    "binary": (bytes(range(256)) * 8, "not UTF-8"),
    "huge-integer": (b'{"chain_id": "x", "validators": [], "params": {"similarity_threshold": ' + b"9" * 5000 + b"}}",
                     "digits exceeds"),
    "surrogate": (b'{"chain_id": "\\ud800", "validators": []}', "lone surrogate"),
    "nan": (b'{"chain_id": NaN}', "NaN"),
    "empty": (b"", "not valid JSON"),
    "not-an-object": (b"[]", "must be an object"),
    "bad-key": (json.dumps({"chain_id": "x", "validators": [{"peer_id": "a" * 40, "public_key": "00", "weight": 1,
                                                             "moniker": "m"}]}).encode(), "validator"),
}


@pytest.mark.parametrize("name", HOSTILE_GENESIS)
def test_a_hostile_genesis_file_is_a_genesis_error(name: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, reason = HOSTILE_GENESIS[name]
    path = tmp_path / "genesis.json"
    path.write_bytes(data)
    with pytest.raises(GenesisError, match=re.escape(reason)):
        Genesis.load(path)
    assert cli_main(["ask", "--genesis", str(path), "--peer", "http://127.0.0.1:9", "Q?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err


def test_genesis_files_that_cannot_be_read_or_are_too_large(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read genesis"):
        Genesis.load(tmp_path)  # a directory
    with pytest.raises(GenesisError, match="cannot read genesis"):
        Genesis.load(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2000 + json.dumps(NET.genesis.to_json()).encode())
    with pytest.raises(GenesisError, match="exceeds the limit of 1000"):
        Genesis.load(big, max_bytes=1000)
    assert Genesis.load(big) == NET.genesis


@pytest.mark.parametrize("where", ["parent-is-a-file", "no-such-directory", "a-directory"])
def test_verify_with_an_unwritable_trusted_state_says_why(where: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cert, genesis = tmp_path / "cert.json", tmp_path / "genesis.json"
    cert.write_text(json.dumps(CERT))
    NET.genesis.save(genesis)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    state = {"parent-is-a-file": tmp_path / "file" / "state.json",
             "no-such-directory": tmp_path / "no" / "such" / "state.json",
             "a-directory": tmp_path / "dir"}[where]
    assert cli_main(["verify", str(cert), "--genesis", str(genesis), "--trusted-state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("INVALID: ") and "Traceback" not in err, err
    if where == "a-directory":  # it exists, so it is read first
        assert f"cannot read trusted state {state}" in err
    else:
        assert f"the certificate verified, but the trusted state {state} cannot be written" in err
    good = tmp_path / "state.json"
    assert cli_main(["verify", str(cert), "--genesis", str(genesis), "--trusted-state", str(good)]) == 0
    assert json.loads(good.read_text())["height"] == 3


# --- ledger snapshots -------------------------------------------------------------------------------


def test_a_snapshot_of_more_than_65536_log_entries_restores() -> None:
    from dag.event import MAX_TRANSACTIONS

    key = NET.keys[0]
    ledger = Ledger()
    n, prev = 70_000, None
    for i, start in enumerate(range(0, n, MAX_TRANSACTIONS)):
        txs = [weights_tx(h + 1, {key.peer_id: 1}) for h in range(start, min(n, start + MAX_TRANSACTIONS))]
        prev = sign_event(key, seq=i, self_parent=prev.hash if prev else None, other_parent=None,
                          timestamp=i + 1, transactions=txs)
        assert ledger.apply([prev]) == len(txs)
    assert ledger.position == n and len(ledger.weights) == n
    data = ledger.snapshot()
    again = Ledger.restore(data)
    assert again.state_hash() == ledger.state_hash() and again.position == n
    assert again.page(n - 1, 1)[0].tx == weights_tx(n, {key.peer_id: 1})
    with pytest.raises(ValueError, match="malformed ledger snapshot"):
        Ledger.restore(data[:-1])
