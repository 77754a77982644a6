"""``p2pd receipts verify FILE``: check a receipts bundle offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from p2pd.errors import P2pdError
from p2pd.market.disputes import BundleError, load_bundle, verify_bundle
from p2pd.net.identity import read_public_hex


def register(sub: Any) -> None:
    p = sub.add_parser("receipts", help="check exported trade receipts offline")
    rsub = p.add_subparsers(dest="receipts_command", metavar="ACTION", required=True)
    v = rsub.add_parser("verify", help="verify a receipts bundle with public keys only")
    v.add_argument("file", type=Path, help="bundle written by `p2pctl receipts export`")
    v.add_argument("--issuer", action="append", required=True,
                   help="trusted issuer public key (hex or issuer.pub path); repeatable")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read(64 * 1024 * 1024 + 1)
        data = load_bundle(text)
    except OSError as exc:
        raise P2pdError(f"cannot read {args.file}: {exc.strerror}") from exc
    except BundleError as exc:
        raise P2pdError(f"{args.file}: {exc}") from exc
    issuers = {read_public_hex(item) for item in args.issuer}
    report = verify_bundle(data, issuers)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"{report.receipts} receipts, {report.valid} with valid signatures")
        for problem in report.problems:
            print(f"PROBLEM {problem.kind}: {problem.message}")
            if problem.trade_ids:
                print(f"  trades: {', '.join(problem.trade_ids)}")
            if problem.kind == "double_selling":
                print("  proof (receipts signed by the seller):")
                for hexr in problem.proof["receipts"]:
                    print(f"    {hexr}")
        print("OK: no tampering, no double selling" if report.ok else "FAILED")
    return 0 if report.ok else 1
