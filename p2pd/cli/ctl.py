"""``p2pctl``: the command line over the daemon's control socket.

Exit codes (stable, for scripts): 0 ok, 1 the daemon answered with an error,
2 usage error, 3 the daemon is not running (no socket / connection refused /
no answer). ``--json`` prints the raw ``result`` as one JSON document, and
every error as one JSON object on stderr (p2pd/cli/output.py).

Commands are data: :data:`COMMANDS` maps a command to a JSON-RPC method, a
function building params from the parsed arguments and a function rendering
the result as text. Other modules add their own with :func:`add_command`::

    add_command(Command("orders", "orders.list", "list open orders",
                        args=[Arg("--limit", type=int, default=50)],
                        params=lambda a: {"limit": a.limit}, render=render_orders))
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pd import DISTRIBUTION, __version__
from p2pd.cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    error,
    parse_command_line,
    usage_error,
)

DEFAULT_SOCKET = "/run/p2pd/control.sock"
EXIT_RPC_ERROR, EXIT_NOT_RUNNING = 1, 3
MAX_RESPONSE = 64 << 20


class DaemonNotRunning(Exception):
    """No daemon answers on the socket."""


class RpcFailure(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _details(data: Any) -> str:
    """What the daemon added to an error (reason, remaining_wh, trade_id...), for people."""
    if not isinstance(data, dict) or not data:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in data.items()) + ")"


class Client:
    """A blocking JSON-RPC client over a Unix stream socket (newline-delimited)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._next_id = 1
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise DaemonNotRunning(f"p2pd is not running (no daemon at {path})") from exc
        except PermissionError as exc:
            self.sock.close()
            raise DaemonNotRunning(f"permission denied on {path} (run as the p2pd user or a "
                                   "member of its group)") from exc
        except OSError as exc:
            self.sock.close()
            raise DaemonNotRunning(f"cannot connect to {path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: Any = None) -> int:
        request_id = self._next_id
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            req["params"] = params
        try:
            self.sock.sendall((json.dumps(req) + "\n").encode())
        except OSError as exc:
            raise DaemonNotRunning(f"the daemon closed the connection: {exc}") from exc
        return request_id

    def messages(self) -> Iterator[dict[str, Any]]:
        """Yield each JSON object the daemon sends; ends when it closes."""
        while True:
            while b"\n" not in self._buf:
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError as exc:
                    raise DaemonNotRunning(f"no answer from the daemon within {self.timeout:g} s") from exc
                except OSError as exc:
                    raise DaemonNotRunning(f"the daemon closed the connection: {exc}") from exc
                if not chunk:
                    if self._buf.strip():
                        raise DaemonNotRunning("the daemon closed the connection mid-answer")
                    return
                self._buf += chunk
                if len(self._buf) > MAX_RESPONSE:
                    raise DaemonNotRunning("answer too large")
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)

    def call(self, method: str, params: Any = None) -> Any:
        """Send one request; return its result or raise RpcFailure / DaemonNotRunning."""
        request_id = self.send(method, params)
        for msg in self.messages():
            if msg.get("id") not in (request_id, None) or "method" in msg:
                continue
            if "error" in msg:
                err = msg["error"]
                raise RpcFailure(err.get("code", 0), err.get("message", "error"), err.get("data"))
            return msg.get("result")
        raise DaemonNotRunning("the daemon closed the connection without answering")


# --- rendering helpers ------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render ``rows`` as a plain text table; ``columns`` are (key, heading)."""
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _ago(ts: float | None) -> str | None:
    if ts is None:
        return None
    secs = max(0, int(time.time() - ts))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


SESSION_COLUMNS = [("member_id", "MEMBER"), ("role", "ROLE"), ("address", "ADDRESS"),
                   ("dir", "DIR"), ("up", "UP"), ("messages_in", "IN"), ("messages_out", "OUT")]


def _sessions(rows: list[dict[str, Any]]) -> str:
    rows = [{**s, "dir": "out" if s.get("initiator") else "in", "up": _ago(s.get("since"))} for s in rows]
    return table(rows, SESSION_COLUMNS)


def render_status(r: dict[str, Any]) -> str:
    meter = r.get("meter") or {}
    store = r.get("store") or {}
    lines = [
        f"member     {r.get('member_id')} ({r.get('role')}) in community {r.get('community')}",
        f"uptime     {_cell(r.get('uptime_s'))} s   pid {r.get('pid')}   version {r.get('version')}",
        f"listening  {', '.join(r.get('listen') or []) or '-'}",
        f"meter      {meter.get('driver', '-')}: {meter.get('state', 'none')}"
        + (f" ({meter['last_error']})" if meter.get("last_error") and not meter.get("healthy") else ""),
        f"store      {store.get('state', '-')}"
        + (f" since {_utc(store['since'])} ({store.get('last_error')}), {store.get('refused')} writes refused"
           if store.get("state") == "failing" else ""),
        f"sessions   {len(r.get('sessions') or [])}",
    ]
    lines += _privacy_lines(r.get("privacy") or {})
    if r.get("sessions"):
        lines += ["", _sessions(r["sessions"])]
    counters = r.get("counters") or {}
    if counters:
        lines += ["", "counters   " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items()))]
    return "\n".join(lines)


def _privacy_lines(p: dict[str, Any]) -> list[str]:
    """The ``privacy`` part of status: the wallet, and the pseudonym service on the operator's node."""
    lines = []
    wallet = p.get("wallet")
    if wallet:
        left = wallet.get("issuer_remaining")
        lines.append(f"pseudonyms {wallet.get('unused')} unused today, issuer quota left "
                     f"{'unknown' if left is None else left}"
                     + (f" (last refusal: {wallet['last_refusal']})" if wallet.get("last_refusal") else ""))
    service = p.get("service")
    if service:
        lines.append(f"issuing    quota {service.get('quota')} a day; today {service.get('issued_today')} "
                     f"pseudonyms to {service.get('members_today')} members")
    return lines


def render_peers(r: dict[str, Any]) -> str:
    out = _sessions(r.get("sessions") or [])
    targets = [t for t in r.get("targets") or [] if not t.get("connected")]
    if targets:
        out += "\n\nnot connected:\n" + table(targets, [
            ("address", "ADDRESS"), ("member_id", "MEMBER"), ("static", "STATIC"),
            ("failures", "FAILURES"), ("retry_in_s", "RETRY IN"), ("last_error", "LAST ERROR")])
    return out


def render_reload(r: dict[str, Any]) -> str:
    text = "configuration reloaded; applied: " + (", ".join(r.get("applied") or []) or "nothing changed")
    if r.get("restart_required"):
        text += "\nchanged but needs a restart: " + ", ".join(r["restart_required"])
    return text


def render_generic(r: Any) -> str:
    return json.dumps(r, indent=2, sort_keys=True)


# --- the command table ---------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argparse argument: ``Arg("--limit", type=int)``."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]

    def __init__(self, *flags: str, **kwargs: Any) -> None:
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "kwargs", kwargs)


@dataclass(frozen=True)
class Command:
    name: str
    method: str
    help: str
    args: list[Arg] = field(default_factory=list)
    params: Callable[[argparse.Namespace], Any] = lambda a: None
    render: Callable[[Any], str] = render_generic
    before: Callable[[Client, argparse.Namespace], None] | None = None
    """Runs first, with the connected client (e.g. to read the market's rules); may
    change ``args``, print warnings, or raise UsageError / RpcFailure."""


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


COMMANDS: dict[str, Command] = {}


def add_command(cmd: Command) -> None:
    """Register a p2pctl command; raises ValueError on a duplicate name."""
    if cmd.name in COMMANDS:
        raise ValueError(f"p2pctl command {cmd.name!r} exists")
    COMMANDS[cmd.name] = cmd


for _cmd in (
    Command("status", "status", "show the node, its sessions and counters", render=render_status),
    Command("peers", "peers.list", "list sessions and peers being dialled", render=render_peers),
    Command("connect", "peers.connect", "connect to a peer once",
            [Arg("address", type=_host_port, metavar="HOST:PORT")],
            lambda a: {"host": a.address[0], "port": a.address[1]},
            lambda r: f"connected to {r['member_id']} at {r['address']}"),
    Command("disconnect", "peers.disconnect", "close the session with a member",
            [Arg("member_id", metavar="MEMBER")], lambda a: {"member_id": a.member_id},
            lambda r: f"closed the session with {r['member_id']}"),
    Command("reload", "config.reload", "re-read the configuration file", render=render_reload),
):
    add_command(_cmd)

# Modules of other features that add commands on import; missing ones are skipped.
COMMAND_MODULES: tuple[str, ...] = ("p2pd.cli.ctl_commands",)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    parser = Parser(prog="p2pctl", description="Control a running p2pd.")
    parser.add_argument("--version", action="version", version=f"p2pctl {__version__} ({DISTRIBUTION})")
    parser.add_argument("--socket", "-s", default=os.environ.get("P2PD_SOCKET", DEFAULT_SOCKET),
                        help="control socket (default: $P2PD_SOCKET or %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the raw JSON result")
        for arg in cmd.args:
            p.add_argument(*arg.flags, **arg.kwargs)
        p.set_defaults(cmd=cmd)
    call = sub.add_parser("call", help="call any method: call METHOD [JSON-PARAMS]")
    call.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    call.add_argument("method")
    call.add_argument("params", nargs="?", help="params as a JSON object or array")
    call.set_defaults(cmd=None)
    events = sub.add_parser("events", help="print node events as they happen (Ctrl-C to stop)")
    events.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    events.add_argument("names", nargs="*", help="only these events")
    events.set_defaults(cmd="events")
    return parser


def _events(client: Client, args: argparse.Namespace) -> int:
    client.sock.settimeout(None)
    client.send("events.subscribe", {"events": args.names} if args.names else None)
    for msg in client.messages():
        if "error" in msg:
            err = msg["error"]
            raise RpcFailure(err.get("code", 0), err.get("message", "error"), err.get("data"))
        if msg.get("method") == "event":
            ev = msg.get("params") or {}
            if args.json:
                print(json.dumps(ev), flush=True)
            else:
                name = ev.get("event")
                print(name, " ".join(f"{k}={v}" for k, v in ev.items() if k != "event"), flush=True)
    return EXIT_OK


def _call_params(args: argparse.Namespace) -> Any:
    """``call METHOD [JSON-PARAMS]``: the params. Raises UsageError."""
    try:
        params = json.loads(args.params) if args.params else None
    except ValueError as exc:
        raise UsageError(f"JSON-PARAMS is not valid JSON: {exc}", "usage: p2pctl call METHOD "
                         "[JSON-PARAMS]") from exc
    if params is not None and not isinstance(params, (dict, list)):
        raise UsageError("JSON-PARAMS must be an object or an array",
                         "usage: p2pctl call METHOD [JSON-PARAMS]")
    return params


def rpc_error_text(exc: RpcFailure) -> str:
    return f"p2pctl: error {exc.code}: {exc.message}{_details(exc.data)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line("p2pctl", build_parser(), list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    as_json = bool(getattr(args, "json", False))
    try:
        if args.cmd == "events":
            with Client(args.socket, args.timeout) as client:
                return _events(client, args)
        if args.cmd is None:
            method, params, render = args.method, _call_params(args), render_generic
            with Client(args.socket, args.timeout) as client:
                result = client.call(method, params)
        else:
            with Client(args.socket, args.timeout) as client:
                if args.cmd.before is not None:
                    args.cmd.before(client, args)
                method, params, render = args.cmd.method, args.cmd.params(args), args.cmd.render
                result = client.call(method, params)
    except UsageError as exc:
        usage_error("p2pctl", exc, as_json=as_json)
        return EXIT_USAGE
    except DaemonNotRunning as exc:
        error("p2pctl", "not_running", str(exc), as_json=as_json, socket=args.socket)
        return EXIT_NOT_RUNNING
    except RpcFailure as exc:
        if as_json:
            # The error object as the daemon sent it (code, message, data).
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.data is not None:
                err["data"] = exc.data
            print(json.dumps({"error": err}), file=sys.stderr)
        else:
            print(rpc_error_text(exc), file=sys.stderr)
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        return 130
    try:
        print(json.dumps(result) if as_json else render(result))
    except OSError as exc:  # e.g. receipts export --out FILE: a directory we cannot write
        error("p2pctl", "output", f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}",
              as_json=as_json)
        return EXIT_RPC_ERROR
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    # Run the p2pd.cli.ctl module, not this __main__ copy: COMMAND_MODULES add
    # their commands to p2pd.cli.ctl.COMMANDS.
    from p2pd.cli.ctl import main as _main

    sys.exit(_main())
