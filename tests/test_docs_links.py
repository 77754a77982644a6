"""Every document the repository points at exists (docs/congestion.md did not)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A path to a document, in prose ("docs/x.md") or a Markdown link ("](x.md)").
MENTION = re.compile(r"(?<![\w/.-])(docs/[\w./-]+\.md)\b")
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def sources() -> list[pathlib.Path]:
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").iterdir(),
             *(ROOT / "systemd").iterdir()]
    for package in ("p2pd", "protocol", "store", "meter_drivers"):
        files += (ROOT / package).rglob("*.py")
    return [f for f in files if f.is_file()]


def test_every_mentioned_document_exists() -> None:
    missing = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        for name in MENTION.findall(text):
            if not (ROOT / name).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        if path.suffix == ".md":
            for target in LINK.findall(text):
                if "://" not in target and not (path.parent / target).is_file():
                    missing.append(f"{path.relative_to(ROOT)}: ]({target})")
    assert not missing, missing


def test_every_meter_driver_option_is_documented() -> None:
    """docs/configuration.md has a row for each option a driver accepts from a file."""
    import meter_drivers
    from meter_drivers import csv_replay, dsmr_p1, simulated, sunspec

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text[text.index("### Each driver's options"):text.index("### Every reading's checks")]
    modules = {"dsmr_p1": dsmr_p1, "sunspec": sunspec, "csv": csv_replay, "simulated": simulated}
    assert set(modules) <= set(meter_drivers.DRIVERS)
    missing = []
    for driver, module in modules.items():
        part = section[section.index(f"`{driver}`:"):]
        part = part[:part.index("\n\n`", 1) if "\n\n`" in part[1:] else len(part)]
        for key, option in module.OPTIONS.items():
            if option.kind == "callable" or key == "max_power_w":  # not from a file / common to all
                continue
            if f"`{key}`" not in part:
                missing.append(f"{driver}.{key}")
    from meter_drivers import mqtt

    part = text[text.index("### The `mqtt` meter"):]
    part = part[:part.index("\n## ")]
    for key, option in mqtt.OPTIONS.items():
        if option.kind != "callable" and key != "max_power_w" and f"`{key}`" not in part:
            missing.append(f"mqtt.{key}")
    assert not missing, missing
