"""Shared benchmark helpers: run a command and measure it; cold and warm page cache.

Measurements come from the kernel, not from the program being measured: the
child's resource usage (peak RSS, blocks read from and written to the block
device, as GNU ``time`` or ``os.wait4`` reports it), so a command is measured
the same way whether it is ``cp -r`` or a Python program. "Bytes read" is what had to come from the disk:
pages already in the page cache cost nothing, which is why every measurement
says whether the cache was cold (inputs evicted first) or warm (inputs read
first).

Eviction uses ``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root but
only drops clean pages that no process has mapped; ``evict`` syncs first and
``check_eviction`` verifies it on the machine at hand.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

MiB = 1024 * 1024
READ_CHUNK = 8 * MiB


def files_under(paths: Iterable[os.PathLike]) -> List[Path]:
    """Every regular file under ``paths`` (files or folders), sorted."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
    return out


def evict(paths: Iterable[os.PathLike]) -> None:
    """Drop the page-cache pages of every file under ``paths`` (a cold cache for them)."""
    os.sync()
    for f in files_under(paths):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: Iterable[os.PathLike]) -> None:
    """Read every file under ``paths`` once, so that they sit in the page cache."""
    for f in files_under(paths):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(READ_CHUNK):
                pass


@dataclass
class Measurement:
    """One run of one command, as the kernel accounted it."""

    wall_s: float
    peak_rss_bytes: int
    read_bytes: int  # from the block device (page-cache hits are free)
    write_bytes: int
    returncode: int
    cpu_s: float = 0.0  # user + system CPU time: less sensitive than wall time to other processes


def gnu_time() -> Optional[str]:
    """``/usr/bin/time`` if it is GNU time (it reports its child's rusage faithfully)."""
    path = shutil.which("time", path="/usr/bin:/bin") or ""
    if not path:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in proc.stdout + proc.stderr else None


def run_measured(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, cwd=None,
                 quiet: bool = True) -> Measurement:
    """Run ``cmd`` and return its wall time, peak RSS and disk I/O.

    The figures are the kernel's rusage of the command. A child forked from a
    big Python process (this one, with torch loaded) would report that
    process's RSS as its peak (``ru_maxrss`` survives ``exec``), so the command
    runs under GNU ``time``, a small process, when it exists; otherwise through
    ``wait4`` directly, and peak RSS is then at least this process's RSS.
    """
    out = subprocess.DEVNULL if quiet else None
    full_env = {**os.environ, **(env or {})}
    timer = gnu_time()
    if timer:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            start = time.perf_counter()
            proc = subprocess.run([timer, "-o", report.name, "-f", "%M %I %O %U %S %x", *map(str, cmd)],
                                  env=full_env, cwd=cwd, stdout=out, stderr=out)
            wall = time.perf_counter() - start
            fields = report.read().split()[-6:]
        if len(fields) == 6:
            rss_kib, inblock, oublock, code = (int(fields[i]) for i in (0, 1, 2, 5))
            cpu = float(fields[3]) + float(fields[4])
            return Measurement(wall, rss_kib * 1024, inblock * 512, oublock * 512, code, cpu)
        return Measurement(wall, 0, 0, 0, proc.returncode or 1)
    start = time.perf_counter()
    proc = subprocess.Popen(list(map(str, cmd)), env=full_env, cwd=cwd, stdout=out, stderr=out)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measurement(
        wall_s=wall,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # KiB on Linux
        read_bytes=usage.ru_inblock * 512,
        write_bytes=usage.ru_oublock * 512,
        returncode=proc.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def check_eviction(sample: os.PathLike) -> bool:
    """Whether evicting ``sample`` makes reading it hit the disk again (it should)."""
    evict([sample])
    m = run_measured(["cat", str(sample)])
    return m.read_bytes >= 0.9 * Path(sample).stat().st_size


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def summarize(runs: Sequence[Measurement]) -> dict:
    """Median of each figure over repeated runs, plus the spread of wall times."""
    walls = [r.wall_s for r in runs]
    return {
        "runs": len(runs),
        "wall_s": median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "cpu_s": median(r.cpu_s for r in runs),
        "peak_rss_bytes": int(median(r.peak_rss_bytes for r in runs)),
        "read_bytes": int(median(r.read_bytes for r in runs)),
        "write_bytes": int(median(r.write_bytes for r in runs)),
    }


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "read_ahead_kb": read_ahead_kb(Path.cwd()),
    }


def read_ahead_kb(path: os.PathLike) -> Optional[int]:
    """The block device's read-ahead for the filesystem holding ``path`` (None if unknown)."""
    try:
        dev = os.stat(path).st_dev
        sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for cand in (sys_dev / "queue" / "read_ahead_kb", sys_dev.resolve().parent / "queue" / "read_ahead_kb"):
            if cand.exists():
                return int(cand.read_text())
    except (OSError, ValueError):
        pass
    return None


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def write_json(path: os.PathLike, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(o):
    if isinstance(o, Measurement):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def venv_bin(name: str) -> str:
    """An entry point next to the running interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


#: comparison operators a goal may use, as written in the issue that set it
GOAL_OPERATORS = {
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b, "==": lambda a, b: a == b,
}


def goal_verdict(goal: str, measured: Optional[float], rule: str, *, unit: str = "", source: str = "") -> dict:
    """A goal's verdict computed from the measured figure: ``rule`` is "OP THRESHOLD", e.g. "<= 1.5".

    Every benchmark prints its goals through this one function, so a verdict in
    docs/performance.md is always a line a program printed, never a word typed
    after looking at the numbers. A missing measurement is a miss.
    """
    op, _, threshold = rule.strip().partition(" ")
    if op not in GOAL_OPERATORS:
        raise ValueError(f"goal rule {rule!r}: expected one of {', '.join(GOAL_OPERATORS)} and a number")
    limit = float(threshold)
    met = measured is not None and bool(GOAL_OPERATORS[op](measured, limit))
    shown = "not measured" if measured is None else f"{measured:.4g}{unit}"
    line = f"goal: {goal} ({op} {limit:g}{unit}{'; ' + source if source else ''}): measured {shown} -> " + (
        "MET" if met else "MISSED")
    return {"goal": goal, "rule": rule, "measured": measured, "met": met, "source": source, "line": line}
