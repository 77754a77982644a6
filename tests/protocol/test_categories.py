"""docs/protocol.md §13.1 lists the policing category of every registered type code."""

from __future__ import annotations

import pathlib
import re

from protocol import CATEGORIES, MESSAGE_TYPES

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ROW = re.compile(r"^\| (\d+) \| `(\w+)` \| (\w+) \|", re.M)


def section_13_1() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("### 13.1 Message categories")
    return text[start:text.index("### 13.2", start)]


def test_every_registered_type_has_its_category_in_the_spec() -> None:
    # Test modules register private types (codes >= 200, never on the wire).
    registered = {code: (cls.__name__, cls.CATEGORY) for code, cls in MESSAGE_TYPES.items()
                  if cls.__module__.startswith("protocol.")}
    documented = {int(code): (name, category) for code, name, category in ROW.findall(section_13_1())}
    assert documented == registered
    assert {category for _, category in registered.values()} <= set(CATEGORIES)
