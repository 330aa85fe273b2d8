"""Start-up of every entry point: Ctrl-C (SIGINT) or SIGTERM at any moment, imports included, ends in one line,
cleanup done, child processes ended, and exit code 130 (Ctrl-C) or 143 (SIGTERM).

    python -m mnist_zoo ...   python -m export ...   python -m bench ...   mnist-zoo ...   (all call run)

Importing torch takes seconds, and it happens before any command's own error guard (util.guarded) exists, so a
Ctrl-C then would print a KeyboardInterrupt traceback. Worse, an interrupted import of a C extension (numpy,
inside torch's) cannot be retried, and what fails next is a misleading "ImportError: cannot load module more
than once per process". So run() notes every signal, and any failure that follows one, during the imports or
the command, is reported as the interrupt it is. This module imports nothing heavy: it must be running before
torch starts loading. (The interpreter's own start-up, before any of our code runs, remains Python's.)

SIGTERM is what a CI runner, `timeout`, systemd, Docker or Kubernetes sends to stop a program, and it means here
what Ctrl-C means: it is raised as Terminated, a KeyboardInterrupt, so every `finally` and `except
KeyboardInterrupt` that cleans up after Ctrl-C (temporary files, staging folders, the note of what was saved)
runs for it too; a second SIGTERM during that cleanup is noted, not raised, so the cleanup finishes. Unlike
Ctrl-C in a terminal, SIGTERM reaches only this process, not its children (`bench check`'s pytest, a local
Ray's processes, their own children): so the first one is passed on to every descendant, and whatever still
runs when the command has unwound is ended (SIGTERM, then SIGKILL after CHILD_GRACE_S).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from typing import NoReturn

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM
CHILD_GRACE_S = 5.0  # how long children get to end on SIGTERM before they are killed
_interrupts = 0
_terminations = 0
_descendants: list = []  # psutil.Process of every descendant seen when a signal came


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (and caught wherever that is)."""


def interruption(e: BaseException | None = None) -> tuple[str, int]:
    """(message, exit code) for an interrupted run: Terminated, or any failure after a SIGTERM, is
    ("terminated", 143); otherwise ("interrupted", 130)."""
    terminated = isinstance(e, Terminated) or (_terminations and not isinstance(e, KeyboardInterrupt))
    return ("terminated", TERMINATED) if terminated else ("interrupted", INTERRUPTED)


def is_main() -> bool:
    """Rank 0 of a torchrun launch, or no torchrun at all: the process that speaks for the run (errors included)."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def _note_descendants(forward: signal.Signals | None) -> None:
    """Remember every descendant process (and send it `forward`): once a child is killed, its own children
    are re-parented and could no longer be found."""
    try:
        import psutil

        for p in psutil.Process().children(recursive=True):
            _descendants.append(p)
            if forward is not None:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(forward)
    except Exception:  # a signal handler must not fail; ending children is best effort
        pass


def _end_descendants() -> None:
    """End every descendant still running: those noted at the signal and those started since."""
    try:
        import psutil

        procs = {(p.pid, p.create_time()): p for p in _descendants if p.is_running()}
        for p in psutil.Process().children(recursive=True):
            procs.setdefault((p.pid, p.create_time()), p)
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=CHILD_GRACE_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
    except Exception:
        pass


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupts
    _interrupts += 1
    _note_descendants(None)  # a terminal's Ctrl-C reached them already
    raise KeyboardInterrupt  # what Python's own handler does, once it is noted


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminations
    _terminations += 1
    if _terminations > 1:
        return  # the cleanup the first one started is under way: let it finish
    _note_descendants(signal.SIGTERM)
    raise Terminated


def run(cli: str) -> NoReturn:
    """Import the module named `cli`, call its main() and exit with its status; Ctrl-C at any moment exits 130,
    SIGTERM 143."""
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = importlib.import_module(cli).main()
    except BaseException as e:
        signalled = _interrupts or _terminations
        if not (isinstance(e, KeyboardInterrupt) or (signalled and not isinstance(e, SystemExit))):
            raise
        message, code = interruption(e)
        if is_main():  # under torchrun every rank is interrupted: one says so
            print(f"error: {message}", file=sys.stderr)
    # The work is done and its output written: a signal during the exit itself must not turn it into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code in (INTERRUPTED, TERMINATED):
        _end_descendants()
        # CPython marks a KeyboardInterrupt that was raised inside exec() (dataclasses and namedtuples are made
        # that way, on import) as unhandled even once it is caught, and then ends the process by SIGINT rather
        # than with its exit code. An interrupted run has nothing left to finish: leave now, with its code.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def mnist_zoo() -> NoReturn:
    """The `mnist-zoo` console script."""
    run("mnist_zoo.cli")
