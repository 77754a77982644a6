"""``p2pd keygen`` and ``p2pd credential issue|verify``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from p2pd.cli.output import error
from p2pd.errors import P2pdError
from p2pd.net.identity import (
    load_credential,
    load_issuer_key,
    read_node_pub,
    read_public_hex,
    write_credential,
    write_issuer_key,
    write_node_keys,
)
from protocol import ROLES, Credential, CredentialError, LocalProtocolError, check_credential


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="create a node's (or an issuer's) long-term keys")
    p.add_argument("directory", type=Path, help="where to write the key files")
    p.add_argument("--issuer", action="store_true", help="create a community issuer key instead")
    p.set_defaults(func=cmd_keygen)

    cred = sub.add_parser("credential", help="issue or verify membership credentials")
    csub = cred.add_subparsers(dest="credential_command", metavar="ACTION", required=True)
    i = csub.add_parser("issue", help="sign a membership credential (run by the issuer)")
    i.add_argument("--issuer-key", type=Path, required=True, help="issuer.key file")
    i.add_argument("--node-pub", type=Path, required=True, help="the member's node.pub file")
    i.add_argument("--community", required=True)
    i.add_argument("--member-id", required=True)
    i.add_argument("--role", choices=ROLES, default="prosumer")
    i.add_argument("--metering-point", required=True, help="EAN of the grid connection")
    i.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    i.add_argument("--out", type=Path, required=True, help="credential file to write")
    i.set_defaults(func=cmd_issue)
    v = csub.add_parser("verify", help="check a credential offline")
    v.add_argument("file", type=Path)
    v.add_argument("--issuer", action="append", required=True,
                   help="trusted issuer public key (hex or issuer.pub path); repeatable")
    v.add_argument("--community", required=True)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.issuer:
        key = write_issuer_key(args.directory)
        print(f"issuer public key: {key.public.hex()}")
        print(f"wrote {args.directory / 'issuer.key'} (keep it secret) and issuer.pub")
        return 0
    keys = write_node_keys(args.directory)
    print(f"signing public key: {keys.signing.public.hex()}")
    print(f"noise public key:   {keys.noise_public.hex()}")
    print(f"wrote {args.directory}/signing.key, noise.key (owner-only) and node.pub;")
    print("send node.pub to your community operator to get a credential")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    issuer = load_issuer_key(args.issuer_key)
    sign_pk, noise_pk = read_node_pub(args.node_pub)
    if not 0 < args.days <= 3660:
        raise P2pdError("--days must be between 1 and 3660")
    now = int(time.time())
    try:
        cred = Credential.issue(
            issuer, community=args.community, member_id=args.member_id, role=args.role,
            metering_point=args.metering_point, sign_pk=sign_pk, noise_pk=noise_pk,
            valid_from=now - 60, valid_until=now + args.days * 86400,
        )
    except LocalProtocolError as exc:
        raise P2pdError(f"invalid credential field: {exc}") from exc
    write_credential(args.out, cred)
    print(f"wrote credential for {cred.member_id} ({cred.role}) to {args.out}")
    return 0


def describe(cred: Credential) -> dict[str, Any]:
    return {
        "community": cred.community,
        "member_id": cred.member_id,
        "role": cred.role,
        "metering_point": cred.metering_point,
        "sign_pk": cred.sign_pk.hex(),
        "noise_pk": cred.noise_pk.hex(),
        "valid_from": cred.valid_from,
        "valid_until": cred.valid_until,
        "issuer_pk": cred.issuer_pk.hex(),
        "credential_id": cred.credential_id.hex(),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    cred = load_credential(args.file)
    issuers = {read_public_hex(item) for item in args.issuer}
    info = describe(cred)
    try:
        check_credential(cred, now=time.time(), community=args.community, trusted_issuers=issuers)
    except CredentialError as exc:
        info.update(valid=False, reason=exc.reason.name, error=str(exc))
    else:
        info.update(valid=True)
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:15} {value}")
    if not info["valid"]:
        error("p2pd", "rejected", f"credential rejected: {info['error']} ({info['reason']})"
              if not args.json else f"credential rejected: {info['error']}",
              as_json=args.json, reason=info["reason"])
        return 1
    return 0
