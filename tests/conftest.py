from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

# tests/ is not a package (see pyproject: --import-mode=importlib), so load
# the shared helpers module once under a name of our own.
_path = pathlib.Path(__file__).with_name("helpers.py")
if "p2pd_test_helpers" not in sys.modules:
    spec = importlib.util.spec_from_file_location("p2pd_test_helpers", _path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["p2pd_test_helpers"] = module
    spec.loader.exec_module(module)

from p2pd_test_helpers import PostgresServer, start_postgres  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server that the test run starts itself (Debian's binaries:
    initdb + pg_ctl in a temporary directory, on a free port of 127.0.0.1),
    stopped at the end of the run. Skips, saying why, only if the binaries
    are missing. ``postgres.new_database()`` gives the URL of a fresh, empty
    database."""
    with tempfile.TemporaryDirectory(prefix="p2pd-pg", dir="/tmp") as tmp:
        server = start_postgres(pathlib.Path(tmp))
        if isinstance(server, str):
            pytest.skip(server)
        try:
            yield server
        finally:
            server.stop()

@pytest.fixture
def mosquitto() -> Iterator[object]:
    """A real mosquitto broker on a free loopback port (skipped if Debian's mosquitto is missing)."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    from p2pd_test_helpers import Mosquitto

    with tempfile.TemporaryDirectory(prefix="mqt") as d:
        broker = Mosquitto(d)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
