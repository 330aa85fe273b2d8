"""Start-up of every entry point: Ctrl-C at any moment, imports included, ends in one line and exit code 130.

    python -m mnist_zoo ...   python -m export ...   python -m bench ...   (their __main__ modules call run)

Importing torch takes seconds, and it happens before any command's own error guard (util.guarded) exists, so a
Ctrl-C then would print a KeyboardInterrupt traceback. Worse, an interrupted import of a C extension (numpy,
inside torch's) cannot be retried, and what fails next is a misleading "ImportError: cannot load module more
than once per process". So run() notes every SIGINT, and any failure that follows one, during the imports or
the command, is reported as the interrupt it is. This module imports nothing heavy: it must be running before
torch starts loading. (The interpreter's own start-up, before any of our code runs, remains Python's.)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from typing import NoReturn

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
_interrupts = 0


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupts
    _interrupts += 1
    raise KeyboardInterrupt  # what Python's own handler does, once it is noted


def run(cli: str) -> NoReturn:
    """Import the module named `cli`, call its main() and exit with its status; Ctrl-C at any moment exits 130."""
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = importlib.import_module(cli).main()
    except BaseException as e:
        if not (isinstance(e, KeyboardInterrupt) or (_interrupts and not isinstance(e, SystemExit))):
            raise
        print("error: interrupted", file=sys.stderr)
        code = INTERRUPTED
    # The work is done and its output written: a Ctrl-C during the exit itself must not turn it into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == INTERRUPTED:
        # CPython marks a KeyboardInterrupt that was raised inside exec() (dataclasses and namedtuples are made
        # that way, on import) as unhandled even once it is caught, and then ends the process by SIGINT rather
        # than with its exit code. An interrupted run has nothing left to finish: leave now, with 130.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(INTERRUPTED)
    sys.exit(code)


def mnist_zoo() -> NoReturn:
    """The `mnist-zoo` console script."""
    run("mnist_zoo.cli")
