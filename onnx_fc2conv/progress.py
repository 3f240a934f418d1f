"""Progress lines on stderr for the steps of a conversion (load, rewrite, check, verify, save).

A step is announced when it starts if the model is large, or once it has run for a second
otherwise, and its time is printed when it ends ("done in", or "failed after" when it raised); a
quick step on a small model prints nothing.
Every step's time is recorded either way (it goes into the report).
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

LARGE_MODEL_BYTES = 100 << 20
SLOW_STEP_SECONDS = 1.0


class Progress:
    """Times the steps into ``seconds``; prints them to ``stream`` when ``enabled``."""

    def __init__(self, enabled: bool, seconds: dict[str, float], stream: TextIO | None = None):
        self.enabled = enabled
        self.seconds = seconds
        self.stream = stream
        self.large = False  # set once the model's size is known

    @contextmanager
    def step(self, name: str, doing: str) -> Iterator[None]:
        """Time step ``name``; ``doing`` is its line, e.g. "loading model.onnx (553 MB)"."""
        start = time.perf_counter()
        lock = threading.Lock()
        announced = False

        def announce() -> None:
            nonlocal announced
            with lock:
                if not announced:
                    self._print(f"{doing} ...")
                    announced = True

        timer = None
        if self.enabled and self.large:
            announce()
        elif self.enabled:
            timer = threading.Timer(SLOW_STEP_SECONDS, announce)
            timer.daemon = True
            timer.start()
        outcome = "failed after"  # unless the step gets to its end
        try:
            yield
            outcome = "done in"
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = elapsed
            if timer is not None:
                timer.cancel()
            with lock:
                if announced:
                    self._print(f"{doing}: {outcome} {elapsed:.1f} s")
                announced = True  # a timer that fires now must not announce a finished step

    def _print(self, line: str) -> None:
        stream = self.stream or sys.stderr
        print(f"onnx-fc2conv: {line}", file=stream, flush=True)


def megabytes(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MB"
