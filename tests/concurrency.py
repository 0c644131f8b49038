"""Run callables at the same moment on threads and collect what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_together(calls: list[Callable[[], object]]) -> list[BaseException]:
    """Start every call on its own thread, wait for all, return the exceptions raised (empty: all passed)."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:  # handed back to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
