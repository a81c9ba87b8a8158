"""Runs every benchmark (``make bench``), or those named (``python bench/run.py bench_machines``), and
prints each figure next to its baseline, alone.

Everything else the benchmarks and what they start write (Python logging, warnings, servers' and
other child processes' output) goes to a log file, named at the start and at the end: this process's
standard output and error are that file from the first line on, at the file-descriptor level, which
every child process inherits. The figures go to the terminal by a descriptor of their own. A
benchmark that fails is reported in one line (its traceback is in the log) and the others still run.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import TextIO

BENCHMARKS = [
    "bench_machines",
    "bench_software",
    "bench_flow_runs",
    "bench_fanout",
    "bench_aws",
    "bench_aws_engine",
    "bench_aws_throttled",
    "bench_gcp",
    "bench_control_plane",
    "bench_gcp_control_plane",
    "bench_orphans",
    "bench_leftovers",
    "bench_worker_killed",
]
WIDTH = 80
NUMBER_AND_UNIT = re.compile(r"(\d) (s|ms|us|MiB|GiB|KiB|x|calls?|packages)\b")


def log_everything_to(path: Path) -> TextIO:
    """Points file descriptors 1 and 2 at ``path`` (so Python's ``sys.stdout`` and ``sys.stderr``,
    every logging handler and warning written there, and every child process that does not redirect
    its own, write to it); returns a stream on the original standard output, for the figures."""
    sys.stdout.flush()
    sys.stderr.flush()
    figures = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return figures


def show(figures: TextIO, text: str, indent: str = "") -> None:
    """Prints ``text`` to the figures' stream, wrapped to ``WIDTH`` columns (continuations indented 2
    more), never between a number and its unit."""
    text = NUMBER_AND_UNIT.sub("\\1\N{NO-BREAK SPACE}\\2", text)  # (textwrap breaks at ASCII spaces only)
    for line in textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ", break_on_hyphens=False, break_long_words=False
    ):
        print(line.replace("\N{NO-BREAK SPACE}", " "), file=figures, flush=True)


def in_log(text: str) -> None:
    """A landmark in the log file, so that each benchmark's output can be found there."""
    print(f"\n===== {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def run(name: str, figures: TextIO) -> bool:
    """Runs one benchmark, showing its figures as they come; whether it finished."""
    started, module, lines = time.monotonic(), None, None
    in_log(f"{name} started")
    try:
        module = importlib.import_module(name)
        show(figures, f"== {name}: {module.__doc__.strip().splitlines()[0]}")
        lines = module.main()
        for line in lines:
            in_log(f"{name} figure: {line}")
            show(figures, line, indent="   ")
    except Exception as error:
        traceback.print_exc()
        if module is None:  # (it could not be imported: no header yet)
            show(figures, f"== {name}")
        show(
            figures,
            f"FAILED after {time.monotonic() - started:.0f} s: {type(error).__name__}: {error} (traceback in the log)",
            indent="   ",
        )
        return False
    finally:
        close = getattr(lines, "close", None)  # a generator's own clean-up runs now, even when interrupted
        if close:
            close()
        in_log(f"{name} ended after {time.monotonic() - started:.0f} s")
    show(figures, f"({time.monotonic() - started:.0f} s)", indent="   ")
    return True


def main(names: list[str]) -> int:
    benchmarks = names or BENCHMARKS
    log_path = Path(tempfile.gettempdir()) / f"prefect-remote-bench-{time.strftime('%Y%m%d-%H%M%S')}.log"
    figures = log_everything_to(log_path)  # before any benchmark (and Prefect's logging) is imported
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill ends the machines too, like Ctrl-C
    sys.path.insert(0, str(Path(__file__).parent))
    show(figures, f"logs: {log_path}")
    started, failed = time.monotonic(), []
    try:
        for name in benchmarks:
            if not run(name, figures):
                failed.append(name)
    except KeyboardInterrupt:
        traceback.print_exc()
        show(figures, f"interrupted after {time.monotonic() - started:.0f} s; logs: {log_path}")
        return 130
    summary = f"{len(benchmarks) - len(failed)} of {len(benchmarks)} benchmarks ran in {time.monotonic() - started:.0f} s"
    show(figures, f"{summary}{'; failed: ' + ', '.join(failed) if failed else ''}. logs: {log_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
