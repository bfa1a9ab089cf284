"""Benchmarks (run on demand; see RESULTS.md). Shared helpers for the modules below."""

from __future__ import annotations

import subprocess


def stop_child(proc: subprocess.Popen[bytes] | subprocess.Popen[str], wait: float) -> None:
    """Stop a child process the benchmark started: SIGTERM, then SIGKILL if it outlives `wait`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(wait)
