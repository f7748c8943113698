"""The ``multillmn`` command line: peer, ask, verify, ledger, testnet, sim and shard commands.

Every command returns an exit code: 0 on success, 1 when a check fails
(e.g. an invalid certificate), 2 on bad input or an unreachable peer, with
the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from multillmn.argtypes import int_range

if TYPE_CHECKING:
    from multillmn.genesis import Genesis

__all__ = ["main", "build_parser"]


def _cmd_peer_init(args: argparse.Namespace) -> int:
    from multillmn.config import ConfigError, PeerConfig, render_toml
    from multillmn.genesis import Genesis
    from multillmn.identity import KeyPair

    home: Path = args.dir
    config_path = home / "config.toml"
    key_path = home / "peer_key.pem"
    if (config_path.exists() or key_path.exists()) and not args.force:
        print(f"error: {home} already holds a peer (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        listen = {k: v for k, v in (("p2p_listen", args.p2p_listen), ("api_listen", args.api_listen)) if v}
        cfg = PeerConfig(moniker=args.moniker, model=args.model, **listen).validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = KeyPair.generate()
    key.save(key_path)
    config_path.write_text(render_toml(cfg))
    genesis_path = home / cfg.genesis_file
    if not genesis_path.exists():
        Genesis.build("single-peer", [(args.moniker, key.public_key, 1)]).save(genesis_path)
    print(f"peer id:  {key.peer_id}\nkey:      {key_path} (mode 0600)\nconfig:   {config_path}\n"
          f"genesis:  {genesis_path}")
    return 0


def _cmd_peer_start(args: argparse.Namespace) -> int:
    from dag import StoreError
    from multillmn.config import ConfigError, PeerConfig
    from multillmn.genesis import GenesisError
    from multillmn.identity import KeyFileError
    from peers.daemon import load_identity, main
    from peers.ledger import check_store

    try:  # everything that can be checked before the model loads
        cfg = PeerConfig.load(args.config)
        _, genesis = load_identity(cfg)
        check_store(cfg.path(cfg.ledger_path), genesis)
    except (ConfigError, GenesisError, KeyFileError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return main(args.config)


_ANY_HOST = ("0.0.0.0", "::", "[::]", "")  # listen on every interface: not an address to dial


def _cmd_peer_export(args: argparse.Namespace) -> int:
    from multillmn.config import ConfigError, PeerConfig, parse_hostport
    from multillmn.identity import KeyFileError, KeyPair
    from multillmn.network import IdentityError, PeerIdentity, write_identity

    try:
        cfg = PeerConfig.load(args.config)
        key = KeyPair.load(cfg.path(cfg.key_file))
        address = args.address or cfg.p2p_listen
        if args.address is None and parse_hostport(address, "p2p.listen")[0] in _ANY_HOST:
            raise ConfigError(f"[p2p] listen is {address}, which other peers cannot dial: "
                              "give the address they reach this machine at with --address HOST:PORT")
        identity = PeerIdentity(key.peer_id, key.public_key, cfg.moniker, address, cfg.model)
        PeerIdentity.from_json(identity.signed_json(key))  # the same checks a genesis builder makes
        write_identity(args.out, identity, key)
    except (ConfigError, KeyFileError, IdentityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"{identity.moniker} ({identity.peer_id}) at {identity.address}, model {identity.model}: {args.out}")
    return 0


def _cmd_peer_membership(args: argparse.Namespace) -> int:
    """``peer join`` / ``peer leave``: sign the request with this peer's key and hand it to a member."""
    import time

    from consensus.messages import Join, Leave, sign
    from multillmn.client import ClientError, request_membership
    from multillmn.config import ConfigError, PeerConfig, parse_hostport
    from multillmn.genesis import Genesis, GenesisError
    from multillmn.identity import KeyFileError, KeyPair

    try:
        cfg = PeerConfig.load(args.config)
        key = KeyPair.load(cfg.path(cfg.key_file))
        genesis = Genesis.load(cfg.path(cfg.genesis_file))
        now = time.time_ns() // 1_000_000
        message: Join | Leave
        if args.peer_command == "join":
            address = args.address or cfg.p2p_listen
            if args.address is None and parse_hostport(address, "p2p.listen")[0] in _ANY_HOST:
                raise ConfigError(f"[p2p] listen is {address}, which other peers cannot dial: "
                                  "give the address they reach this machine at with --address HOST:PORT")
            message = Join(chain_id=genesis.chain_id, peer_id=key.peer_id, public_key=key.public_key,
                           moniker=cfg.moniker, address=address, model=cfg.model, created_ms=now)
        else:
            message = Leave(chain_id=genesis.chain_id, peer_id=key.peer_id, created_ms=now)
        reply = request_membership(args.via, args.peer_command, sign(message, key).envelope)
    except (ConfigError, GenesisError, KeyFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"error: {args.via} {exc}", file=sys.stderr)
        return 1
    print(f"{args.peer_command} request of {cfg.moniker} ({key.peer_id}) accepted by {args.via}: "
          f"{reply.get('note', '')}")
    return 0


def _cmd_peer_configure(args: argparse.Namespace) -> int:
    from multillmn.config import ConfigError
    from multillmn.genesis import GenesisError
    from multillmn.identity import KeyFileError
    from multillmn.network import IdentityError, PeerIdentity, configure_peer

    try:
        identities = [PeerIdentity.load(p) for p in args.identities]
        cfg = configure_peer(args.config, args.genesis, identities)
    except (ConfigError, GenesisError, IdentityError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: genesis {cfg.genesis_file}, {len(cfg.persistent_peers)} persistent peers; "
          f"start it with: multillmn peer start --config {args.config}")
    return 0


def _cmd_genesis_build(args: argparse.Namespace) -> int:
    from multillmn.genesis import GenesisError, Params
    from multillmn.network import IdentityError, PeerIdentity, build_genesis

    weights: dict[str, int] = {}
    for item in args.weight or []:
        name, _, raw = item.partition("=")
        if not name or not raw.isdigit() or int(raw) < 1:
            print(f"error: --weight {item!r}: expected NAME=POSITIVE_INTEGER (a moniker or peer id)", file=sys.stderr)
            return 2
        weights[name] = int(raw)
    try:
        identities = [PeerIdentity.load(p) for p in args.identities]
        params = Params(weights=args.weights, epoch_length=args.epoch_length,
                        models=tuple(args.models.split(",")) if args.models else (),
                        verdict_rule=args.verdict_rule, verdict_margin=args.verdict_margin).validate()
        genesis = build_genesis(args.chain_id, identities, weights, params)
        genesis.save(args.out)
    except (GenesisError, IdentityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"{args.out}: chain {genesis.chain_id}, {len(genesis.validators)} validators, "
          f"genesis hash {genesis.digest().hex()[:16]}")
    return 0


def _load_trusted(path: Path | None) -> Genesis | None:
    from multillmn.genesis import Genesis

    return Genesis.load(path) if path is not None else None


def _cmd_ask(args: argparse.Namespace) -> int:
    from multillmn.certificate import CertificateError
    from multillmn.client import ClientError, ask, check, render
    from multillmn.genesis import GenesisError

    peer, genesis = args.peer, args.genesis
    if peer is None:  # the local testnet `testnet up` started: one of its peers, certificates pinned to its genesis
        from testnet.launcher import TestnetError, find_local

        try:
            local = find_local(args.testnet)
        except TestnetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        peer, genesis = local.api_url, genesis or local.genesis
        print(f"asking {local.peer} of the local testnet in {local.dir} ({peer}); the certificate is checked "
              f"against {genesis}", file=sys.stderr)
    try:
        trusted = _load_trusted(genesis)
        result = ask(peer, args.question, max_tokens=args.max_tokens, timeout_s=args.timeout)
    except (ClientError, GenesisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cert, error = None, None
    try:
        cert = check(result, trusted)
    except CertificateError as exc:
        error = str(exc)
    if args.save_cert is not None:
        args.save_cert.write_text(json.dumps(result["certificate"], indent=2) + "\n")
    if args.json:
        print(json.dumps({**result, "certificate_valid": cert is not None, "certificate_error": error}, indent=2))
    else:
        print(render(result, cert, error, trusted is not None))
    return 0 if cert is not None else 1


def _cmd_verify(args: argparse.Namespace) -> int:
    from multillmn.certificate import CertificateError, verify_file

    try:
        cert = verify_file(args.certificate, args.genesis, args.trusted_state)
    except CertificateError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    if args.genesis or args.trusted_state:
        anchor = f"the trusted genesis through {cert.path_length} intermediate height(s)"
    else:
        anchor = "the genesis inside the certificate (pass --genesis to trust your own)"
    print(f"VALID: height {cert.height} round {cert.round} on {cert.chain_id}\n"
          f"question: {cert.question}\nanswer:   {cert.answer}\n"
          f"agreed weight {cert.agreed_weight}/{cert.total_weight}; precommits "
          f"{cert.precommit_weight}/{cert.total_weight}; checked against {anchor}")
    return 0


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    from multillmn.ledger_cli import add_ledger_commands
    from testnet.cli import add_testnet_commands

    parser = argparse.ArgumentParser(prog="multillmn", description="Ask a network of LLM peers; get one answer they agreed on, with a certificate.")
    commands = parser.add_subparsers(dest="command", required=True)

    peer = commands.add_parser("peer", help="run a peer").add_subparsers(dest="peer_command", required=True)
    init = peer.add_parser("init", help="write a key and a commented config")
    init.add_argument("--dir", type=Path, default=Path("."), help="peer home directory (default: .)")
    init.add_argument("--moniker", default="peer", help="human-readable name")
    init.add_argument("--model", default="smollm2",
                      help="smollm2 | gemma3 | path to a HF model directory or a .gguf file")
    init.add_argument("--force", action="store_true", help="overwrite an existing key and config")
    init.add_argument("--p2p-listen", metavar="HOST:PORT",
                      help="[p2p] listen: where other peers connect (default 127.0.0.1:26656; "
                           "0.0.0.0:26656 on a machine of a network)")
    init.add_argument("--api-listen", metavar="HOST:PORT",
                      help="[api] listen: the HTTP API for clients (default 127.0.0.1:8080)")
    init.set_defaults(func=_cmd_peer_init)
    start = peer.add_parser("start", help="start the peer daemon")
    start.add_argument("--config", type=_existing_file, required=True, help="config.toml")
    start.set_defaults(func=_cmd_peer_start)
    export = peer.add_parser("export", help="write this peer's signed public identity (for a genesis builder)")
    export.add_argument("--config", type=_existing_file, required=True, help="config.toml")
    export.add_argument("--address", help="host:port the other peers dial (default: [p2p] listen)")
    export.add_argument("--out", type=Path, required=True, help="the identity file to write (JSON)")
    export.set_defaults(func=_cmd_peer_export)
    configure = peer.add_parser("configure", help="join this peer to a network: its genesis and peers' addresses")
    configure.add_argument("--config", type=_existing_file, required=True, help="config.toml")
    configure.add_argument("--genesis", type=_existing_file, required=True, help="the network's genesis.json")
    configure.add_argument("identities", type=_existing_file, nargs="+", help="every validator's identity file")
    configure.set_defaults(func=_cmd_peer_configure)
    join = peer.add_parser("join", help="ask a running network to admit this peer (from its next epoch)")
    join.add_argument("--config", type=_existing_file, required=True, help="config.toml")
    join.add_argument("--via", required=True, metavar="URL", help="a member's API, e.g. http://10.0.0.1:8080")
    join.add_argument("--address", help="host:port the other peers dial (default: [p2p] listen)")
    join.set_defaults(func=_cmd_peer_membership)
    leave = peer.add_parser("leave", help="take this peer out of the validator set (from the next epoch)")
    leave.add_argument("--config", type=_existing_file, required=True, help="config.toml")
    leave.add_argument("--via", required=True, metavar="URL", help="a member's API (this peer's own works)")
    leave.set_defaults(func=_cmd_peer_membership)

    genesis = commands.add_parser("genesis", help="build a genesis").add_subparsers(dest="genesis_command",
                                                                                    required=True)
    build = genesis.add_parser("build", help="a genesis from the operators' identity files")
    build.add_argument("--chain-id", required=True, help="the network's name")
    build.add_argument("--weights", choices=("adaptive", "static"), default="adaptive",
                       help="weights follow answer quality (adaptive, the default) or stay as given")
    build.add_argument("--weight", action="append", metavar="NAME=W", help="a peer's genesis weight (default 1)")
    build.add_argument("--epoch-length", type=int_range(4, 10_000), default=100,
                       help="heights per epoch: members change only at an epoch's first height (default 100)")
    build.add_argument("--models", metavar="A,B", help="model names a joining peer may declare "
                                                        "(default: the models of the identities given)")
    build.add_argument("--verdict-rule", choices=("none", "veto"), default="none",
                       help="none (the default): a split goes to the heavier group; veto: judges' signed verdicts "
                            "reject the wrong side of a split (ADR 0022)")
    build.add_argument("--verdict-margin", type=int_range(0, 2000), default=500, metavar="PER_MILLE",
                       help="how far below zero a verdict must be to reject (default 500: half a nat per token)")
    build.add_argument("--out", type=Path, required=True, help="genesis file to write")
    build.add_argument("identities", type=_existing_file, nargs="+", help="identity files (peer export)")
    build.set_defaults(func=_cmd_genesis_build)

    ask = commands.add_parser("ask", help="ask the network a question")
    ask.add_argument("question")
    ask.add_argument("--peer", metavar="URL", help="a peer's API URL (default: a peer of the local testnet that "
                                                    "`multillmn testnet up` started, pinned to its genesis)")
    ask.add_argument("--testnet", type=Path, metavar="DIR",
                     help="without --peer: the testnet directory to ask (default: ./.testnet, else the one "
                          "`testnet up` started last)")
    ask.add_argument("--json", action="store_true", help="print the full JSON result")
    ask.add_argument("--genesis", type=_existing_file, help="trusted genesis to check the certificate against")
    ask.add_argument("--max-tokens", type=int_range(1))
    ask.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    ask.add_argument("--save-cert", type=Path, help="write the certificate to this file")
    ask.set_defaults(func=_cmd_ask)

    verify = commands.add_parser("verify", help="check a certificate offline (exit 0 only if valid)")
    verify.add_argument("certificate", type=_existing_file)
    verify.add_argument("--genesis", type=_existing_file, help="trusted genesis (validator set) to pin")
    verify.add_argument("--trusted-state", type=Path, metavar="FILE",
                        help="a trusted state: start from it if it exists, and save the certificate's height to it")
    verify.set_defaults(func=_cmd_verify)

    add_ledger_commands(commands)
    add_testnet_commands(commands)
    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands from modules that may be absent in a trimmed install: ``sim`` and ``shard``."""
    try:
        from multillmn.sim_cli import add_sim_command
    except ImportError:
        pass
    else:
        add_sim_command(commands)
    try:
        from peers.shard.cli import add_shard_commands
    except ImportError:
        pass
    else:
        add_shard_commands(commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
