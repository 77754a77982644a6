"""``p2pd revocation issue|show``: make and inspect signed revocation lists.

An issuer (the community operator, who holds ``issuer.key``) signs a list of
the member ids and credential ids it revokes (docs/protocol.md §13.8); a
member installs it with ``p2pctl revoke FILE`` or ``[revocations] lists``,
and it spreads from there. Each list replaces the issuer's previous one, so a
new list must carry everyone still revoked (``--from`` starts from the last
list) and a greater serial. Lists are written as hex text (one line), which
both ways of installing read, as they read the raw bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pd.cli.output import UsageError, error, warning
from p2pd.components.revocations import UnreadableList
from p2pd.components.revocations import read_list as components_read_list
from p2pd.errors import P2pdError
from p2pd.net.identity import load_credential, load_issuer_key, read_public_hex
from protocol import (
    LocalProtocolError,
    RevocationList,
    SignatureError,
    issue_revocation,
)


def register(sub: Any) -> None:
    p = sub.add_parser("revocation", help="issue or inspect revocation lists (run by the issuer)")
    rsub = p.add_subparsers(dest="revocation_command", metavar="ACTION", required=True)
    i = rsub.add_parser("issue", help="sign a revocation list: the members and credentials revoked",
                        description="Sign the complete list of what this issuer revokes. It "
                                    "replaces the issuer's previous list: name everyone still "
                                    "revoked, or start from the last list with --from.")
    i.add_argument("--issuer-key", type=Path, required=True, help="issuer.key file")
    i.add_argument("--member", action="append", default=[], metavar="MEMBER_ID",
                   help="revoke this member id (repeatable)")
    i.add_argument("--credential-id", action="append", default=[], metavar="HEX",
                   help="revoke one credential by its id, 64 hex digits (repeatable)")
    i.add_argument("--credential", action="append", default=[], type=Path, metavar="FILE",
                   help="revoke the credential in FILE (repeatable)")
    i.add_argument("--from", dest="previous", type=Path, metavar="LIST",
                   help="keep everything LIST revokes (the last list); --serial then defaults to its serial + 1")
    i.add_argument("--serial", type=int, help="must exceed the serial of the issuer's previous list")
    i.add_argument("--out", "-o", type=Path, required=True, help="where to write the list (hex text)")
    i.add_argument("--json", action="store_true", help="print the list's contents as JSON")
    i.set_defaults(func=cmd_issue)
    s = rsub.add_parser("show", help="print a revocation list's contents and check its signature")
    s.add_argument("file", type=Path, help="a list (hex text or raw bytes)")
    s.add_argument("--issuer", action="append", default=[],
                   help="trusted issuer public key (hex or issuer.pub path); repeatable")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_show)


def read_list(path: Path) -> RevocationList:
    """Decode the list in ``path``. Raises P2pdError (unreadable, not a list)."""
    try:
        return components_read_list(path)
    except UnreadableList as exc:
        raise P2pdError(str(exc)) from exc


def describe(rl: RevocationList) -> dict[str, Any]:
    """The list as JSON-ready fields (what ``revocations.list`` shows of an installed one)."""
    return {"issuer": rl.issuer_pk.hex(), "serial": rl.serial, "issued_at": rl.issued_at,
            "members": list(rl.member_ids), "credentials": [c.hex() for c in rl.credential_ids]}


def _credential_ids(args: argparse.Namespace) -> list[bytes]:
    ids = []
    for text in args.credential_id:
        try:
            cid = bytes.fromhex(text)
        except ValueError:
            cid = b""
        if len(cid) != 32:
            raise UsageError(f"--credential-id {text!r}: expected 64 hex digits (a credential's id, "
                             "as `p2pd credential verify` shows it)",
                             "usage: p2pd revocation issue ... --credential-id HEX")
        ids.append(cid)
    ids += [load_credential(path).credential_id for path in args.credential]
    return ids


def write_public(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing, mode 0644 (a list is public)."""
    target = path.resolve()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_issue(args: argparse.Namespace) -> int:
    key = load_issuer_key(args.issuer_key)
    members = list(args.member)
    creds = _credential_ids(args)
    previous: RevocationList | None = None
    if args.previous is not None:
        previous = read_list(args.previous)
        if previous.issuer_pk != key.public:
            raise P2pdError(f"--from {args.previous}: signed by another issuer ({previous.issuer_pk.hex()[:16]}...)")
        members += previous.member_ids
        creds += previous.credential_ids
    serial = args.serial
    if serial is None:
        if previous is None:
            raise UsageError("give --serial N (greater than the serial of the issuer's previous list), "
                             "or --from LAST_LIST", "usage: p2pd revocation issue ... --serial N")
        serial = previous.serial + 1
    if serial < 0:
        raise UsageError("--serial must be 0 or more", "usage: p2pd revocation issue ... --serial N")
    # The list written to --out before, if it is this issuer's: the new one must be newer.
    if args.out.exists() and previous is None:
        with contextlib.suppress(P2pdError):
            previous = read_list(args.out)
        if previous is not None and previous.issuer_pk != key.public:
            previous = None
    if previous is not None and serial <= previous.serial:
        raise P2pdError(f"--serial {serial}: not newer than serial {previous.serial} of this issuer's "
                        f"list {args.previous or args.out}; nodes would ignore it (use --serial "
                        f"{previous.serial + 1})")
    try:
        rl = issue_revocation(key, members, serial, time.time(), credential_ids=creds)
    except LocalProtocolError as exc:
        raise P2pdError(f"cannot sign the list: {exc}") from exc
    if previous is not None:
        dropped = sorted(set(previous.member_ids) - set(rl.member_ids))
        if dropped:
            warning("p2pd", "unrevoked", f"{', '.join(dropped)} revoked by serial {previous.serial} "
                    "but not by this list: no longer revoked once it spreads (--from keeps them)",
                    as_json=args.json, members=dropped)
    try:
        write_public(args.out, rl.encode().hex() + "\n")
    except OSError as exc:
        raise P2pdError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    if args.json:
        print(json.dumps(describe(rl)))
    else:
        what = ", ".join(rl.member_ids) or "no member"
        if rl.credential_ids:
            what += f" and {len(rl.credential_ids)} credential(s)"
        print(f"wrote revocation list serial {rl.serial} revoking {what} to {args.out}; "
              f"install it with: p2pctl revoke {args.out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    rl = read_list(args.file)
    info = describe(rl)
    problem: str | None = None
    try:
        rl.verify_signature()
    except SignatureError:
        problem = "the signature does not verify: the list was altered or not signed by its issuer key"
    info["signature_valid"] = problem is None
    if args.issuer:
        trusted = {read_public_hex(item) for item in args.issuer}
        info["issuer_trusted"] = rl.issuer_pk in trusted
        if problem is None and not info["issuer_trusted"]:
            problem = "signed by an issuer not given with --issuer: nodes that do not trust it ignore the list"
    if args.json:
        print(json.dumps(info))
    else:
        issued = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(rl.issued_at))
        rows = [("issuer", info["issuer"]), ("serial", str(rl.serial)),
                ("issued_at", f"{issued} ({rl.issued_at})"),
                ("members", ", ".join(rl.member_ids) or "(none)"),
                ("credentials", ", ".join(info["credentials"]) or "(none)"),
                ("signature", "valid" if info["signature_valid"] else "INVALID")]
        if "issuer_trusted" in info:
            rows.append(("issuer", "trusted" if info["issuer_trusted"] else "NOT TRUSTED"))
        for name, value in rows:
            print(f"{name:12} {value}")
    if problem is not None:
        error("p2pd", "rejected", f"revocation list rejected: {problem}", as_json=args.json)
        return 1
    return 0
