from __future__ import annotations

from pathlib import Path

import pytest

from meter_drivers import CsvReplayMeter, DriverConfigError, MeterUnavailable, Reading
from meter_drivers.csv_replay import parse_csv

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


async def test_impossible_rows_rejected(tmp_path: Path) -> None:
    # Same rules as every driver (ReadingGuard): register width, jumps the
    # connection cannot carry, and numbers too long to be meter registers.
    path = tmp_path / "r.csv"
    path.write_text(
        "ts,import_wh,export_wh\n"
        "1000,500,100\n"
        "1060,1000000000000,100\n"  # beyond the register width
        "1120,2000,100\n"  # 1.5 kWh in 2 minutes: 45 kW, fine
        "1180,4000,100\n"  # 2 kWh in 1 minute: 120 kW, impossible
        f"1240,{'9' * 4000},100\n"  # long enough to be slow to convert
        "1300,4000,100\n"
    )
    meter = CsvReplayMeter({"path": str(path)})
    got = [await meter.read() for _ in range(3)]
    assert [r.import_wh for r in got] == [500, 2000, 4000]
    assert meter.rejected == 3


async def test_max_power_option(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("ts,import_wh,export_wh\n0,0,0\n60,2000,0\n")
    assert len(parse_csv(path.read_text())[0]) == 1
    meter = CsvReplayMeter({"path": str(path), "max_power_w": 200_000})
    assert [(await meter.read()).import_wh for _ in range(2)] == [0, 2000]
    assert meter.rejected == 0
