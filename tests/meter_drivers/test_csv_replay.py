from __future__ import annotations

from pathlib import Path

import pytest

from meter_drivers import CsvReplayMeter, DriverConfigError, MeterUnavailable, Reading

CSV = """ts,import_wh,export_wh,power_w
1000,500,100,250
1060,504,100,
oops,1,2,3
1120,503,100,10
1180,510,-1,10
1240,512,101,-60
"""


async def test_replay_skips_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(CSV)
    meter = CsvReplayMeter({"path": str(path)})
    got = [await meter.read() for _ in range(3)]
    assert got == [
        Reading(1000, 500, 100, 250),
        Reading(1060, 504, 100, None),
        Reading(1240, 512, 101, -60),
    ]
    assert meter.rejected == 3  # unparsable, decreasing import, negative export
    with pytest.raises(MeterUnavailable):
        await meter.read()


async def test_loop_keeps_registers_increasing(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("export_wh,ts,import_wh\n0,0,10\n5,60,20\n")
    meter = CsvReplayMeter({"path": str(path), "loop": True})
    got = [await meter.read() for _ in range(5)]
    assert [(r.ts, r.import_wh, r.export_wh) for r in got] == [
        (0, 10, 0), (60, 20, 5), (120, 20, 5), (180, 30, 10), (240, 30, 10),
    ]


@pytest.mark.parametrize("text", ["ts,import_wh\n1,2\n", "ts,import_wh,export_wh\nx,y,z\n", ""])
async def test_unusable_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(DriverConfigError) as info:
        await CsvReplayMeter({"path": str(path)}).read()
    assert info.value.key == "path"


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DriverConfigError, match="cannot read"):
        await CsvReplayMeter({"path": str(tmp_path / "nope.csv")}).read()
