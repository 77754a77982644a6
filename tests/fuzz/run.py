"""Long fuzzing run of one target (or all): ``python tests/fuzz/run.py NAME --seconds N``.

With atheris installed (``pip install -e '.[fuzz]'``) the run is coverage-
guided (libFuzzer); without it, or with ``--engine mutate``, the deterministic
mutator of engine.py runs instead. An unexpected exception does not stop the
run: it is counted and the input saved under ``--findings`` (default
``fuzz-findings/``) for a regression test. The run prints a readable summary,
then one JSON object as its last line: inputs tried, inputs per second,
unexpected exceptions and peak memory (max RSS) per target.

Examples::

    python tests/fuzz/run.py message --seconds 60
    python tests/fuzz/run.py all --runs 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
import traceback
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("p2pd_fuzz_engine", HERE / "engine.py")
assert _spec is not None and _spec.loader is not None
engine = importlib.util.module_from_spec(_spec)
sys.modules["p2pd_fuzz_engine"] = engine  # targets import it by this name
_spec.loader.exec_module(engine)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Recorder:
    """Runs the target, counting inputs and saving each unexpected exception."""

    def __init__(self, name: str, findings: pathlib.Path, stats: pathlib.Path | None) -> None:
        self.name = name
        self.target = engine.load(name).target
        self.findings = findings
        self.stats_path = stats
        self.tried = 0
        self.unexpected = 0
        self.kinds: dict[str, int] = {}

    def __call__(self, data: bytes) -> None:
        self.tried += 1
        try:
            self.target(data)
        except Exception as exc:
            self.unexpected += 1
            kind = f"{type(exc).__name__}: {str(exc)[:80]}"
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.findings.mkdir(parents=True, exist_ok=True)
            path = self.findings / f"{self.name}-{hashlib.sha1(data).hexdigest()[:12]}"
            path.write_bytes(data)
            if self.kinds[kind] == 1:
                print(f"finding ({path}):", file=sys.stderr)
                traceback.print_exc()
        if self.stats_path is not None and self.tried % 10000 == 0:
            self.save()

    def save(self) -> None:
        assert self.stats_path is not None
        self.stats_path.write_text(json.dumps(self.result(0.0)))

    def result(self, seconds: float) -> dict[str, Any]:
        return {"target": self.name, "inputs": self.tried, "seconds": round(seconds, 1),
                "unexpected": self.unexpected, "kinds": self.kinds,
                "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _run_mutate(name: str, seconds: float, runs: int, findings: pathlib.Path) -> dict[str, Any]:
    rec = Recorder(name, findings, None)
    seeds = engine.load(name).seeds()
    start = time.monotonic()
    deadline = start + seconds if seconds else float("inf")
    for data in engine.mutations(seeds, runs or 10**12, seed=int(start)):
        rec(data)
        if (runs and rec.tried >= runs) or (rec.tried % 256 == 0 and time.monotonic() >= deadline):
            break
    return rec.result(time.monotonic() - start)


def _atheris_child(name: str, seconds: float, runs: int, findings: pathlib.Path,
                   stats: pathlib.Path) -> None:
    """Runs inside a child process: libFuzzer exits the process when it is done."""
    import atheris  # type: ignore[import-not-found]

    corpus = findings / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in engine.load(name).seeds():
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    rec = Recorder(name, findings, stats)
    # Coverage instrumentation of everything imported so far: the target and
    # the project's code (and the libraries they call).
    atheris.instrument_all()
    args = [sys.argv[0], str(corpus), "-max_len=4096", "-rss_limit_mb=4096"]
    if seconds:
        args.append(f"-max_total_time={int(seconds)}")
    if runs:
        args.append(f"-runs={runs}")
    atheris.Setup(args, rec)
    import atexit

    atexit.register(rec.save)
    try:
        atheris.Fuzz()
    finally:
        rec.save()


def _run_atheris(name: str, seconds: float, runs: int, findings: pathlib.Path) -> dict[str, Any]:
    stats = findings / f"stats-{name}.json"
    findings.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, name, "--child", "--seconds", str(seconds), "--runs", str(runs),
         "--findings", str(findings)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.monotonic() - start
    result: dict[str, Any] = json.loads(stats.read_text()) if stats.exists() else {"target": name}
    result["seconds"] = round(elapsed, 1)
    # libFuzzer's own counters, when it printed them.
    for line in proc.stderr.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            result["inputs"] = max(result.get("inputs", 0), int(line.split(":")[-1]))
        if line.startswith("stat::peak_rss_mb:"):
            result["peak_rss_mb"] = max(result.get("peak_rss_mb", 0), float(line.split(":")[-1]))
    result["exit_status"] = proc.returncode
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-2000:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a target name or 'all': " + ", ".join(engine.names()))
    parser.add_argument("--seconds", type=float, default=0.0, help="time per target (0: until --runs)")
    parser.add_argument("--runs", type=int, default=0, help="inputs per target (0: until --seconds)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--findings", type=pathlib.Path, default=pathlib.Path("fuzz-findings"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stats = args.findings / f"stats-{args.target}.json"
        _atheris_child(args.target, args.seconds, args.runs, args.findings, stats)
        return 0
    if not args.seconds and not args.runs:
        parser.error("give --seconds or --runs")
    names = engine.names() if args.target == "all" else [args.target]
    unknown = set(names) - set(engine.names())
    if unknown:
        parser.error(f"unknown target {', '.join(sorted(unknown))}; known: {', '.join(engine.names())}")
    use = args.engine
    if use == "auto":
        use = "atheris" if importlib.util.find_spec("atheris") else "mutate"
    results = []
    for name in names:
        if use == "atheris":
            result = _run_atheris(name, args.seconds, args.runs, args.findings)
        else:
            result = _run_mutate(name, args.seconds, args.runs, args.findings)
        result["engine"] = use
        results.append(result)
        rate = result.get("inputs", 0) / max(result.get("seconds", 0) or 1e-9, 1e-9)
        print(f"{name:20s} {result.get('inputs', 0):>10,} inputs  {rate:>9,.0f}/s  "
              f"unexpected {result.get('unexpected', '?')}  peak RSS {result.get('peak_rss_mb', '?')} MB",
              flush=True)
    total_unexpected = sum(int(r.get("unexpected", 0)) for r in results)
    print(json.dumps({"bench": "fuzz", "engine": use, "targets": results,
                      "unexpected": total_unexpected}))
    return 1 if total_unexpected else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
