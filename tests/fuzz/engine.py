"""The fuzzing harness shared by every target in this folder.

A target is a module ``tests/fuzz/fuzz_<name>.py`` with two functions:

* ``target(data: bytes) -> None`` feeds one input to the code under test and
  returns normally when that code answered with one of its *documented*
  outcomes (a value, or an error type its docstring names). Anything else
  escapes as an exception: that is a finding.
* ``seeds() -> list[bytes]``: valid or nearly valid inputs to start from
  (documented examples, regression inputs).

Two engines drive a target. The smoke run in the normal test suite
(``test_smoke.py``) uses :func:`mutations`, a deterministic mutator over the
seeds (same inputs on every run, no flakes). The long run (``run.py``) uses
atheris, libFuzzer's coverage-guided engine for Python, when it is installed
(``pip install -e '.[fuzz]'``): coverage guidance is what reached the
990-deep nesting of issue 17, which random bytes rarely build.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
from collections.abc import Callable, Iterator
from types import ModuleType

HERE = pathlib.Path(__file__).resolve().parent

# Byte patterns that stress decoders: container headers claiming many items,
# deep nesting, long length prefixes, non-canonical and forbidden types.
INTERESTING = [
    b"\xdc\x40\x00", b"\xdd\xff\xff\xff\xff", b"\x91" * 40, b"\x9f", b"\x80", b"\xde\x00\x01",
    b"\xca\x00\x00\x00\x00", b"\xd4\x00\x00", b"\xc1", b"\xc4\xff", b"\xc6\x00\x01\x00\x00",
    b"\xdb\xff\xff\xff\xff", b"\xcf" + b"\xff" * 8, b"\xd3\x80" + bytes(7), b"\xc0", b"\xc3",
    b"\x00", b"\xff", b"\x7f", b"\xa5hello",
]

Target = Callable[[bytes], None]


def _import(name: str, path: pathlib.Path) -> ModuleType:
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LookupError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def helpers() -> ModuleType:
    """tests/helpers.py under the name conftest.py gives it, also outside pytest."""
    return _import("p2pd_test_helpers", HERE.parent / "helpers.py")


def doc_examples(kind: str = "msgpack") -> dict[str, bytes]:
    """The byte examples of docs/protocol.md (blocks ```msgpack title="..."```)."""
    import re

    block = re.compile(r'^```(msgpack|hex) title="([^"]+)"\n(.*?)^```$', re.M | re.S)
    text = (HERE.parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    return {label: bytes.fromhex("".join(body.split()))
            for k, label, body in block.findall(text) if k == kind}


def load(name: str) -> ModuleType:
    """Import ``tests/fuzz/fuzz_<name>.py`` (tests/ is not a package)."""
    helpers()
    path = HERE / f"fuzz_{name}.py"
    if not path.exists():
        raise LookupError(f"no fuzz target {name!r} ({path})")
    return _import(f"p2pd_fuzz_{name}", path)


def names() -> list[str]:
    """Every target in this folder, by name."""
    return sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One to four random edits of ``data``: flips, inserts, deletes, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.choice(INTERESTING) * rng.choice((1, 1, 2, 30))
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 16))
            del buf[pos:end]
        elif op == 4:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf[pos:] = other[cut:]
        elif op == 5 and buf:
            start = rng.randint(0, len(buf) - 1)
            chunk = buf[start : start + rng.randint(1, 32)]
            buf[pos:pos] = chunk * rng.randint(1, 8)
        else:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
    return bytes(buf[:70000])


def mutations(seeds: list[bytes], count: int, seed: int = 0) -> Iterator[bytes]:
    """The seeds themselves, then ``count`` deterministic mutants of them."""
    rng = random.Random(seed)
    pool = list(seeds) or [b""]
    yield from pool
    for _ in range(count):
        yield mutate(rng.choice(pool), rng, pool)
