"""Ctrl-C during `tune.py`, handled so that a run folder never contradicts itself.

- During the sweep, the first Ctrl-C asks Tune to stop as it does on its own
  signal (SIGUSR1): running trials stop, every trial keeps its last
  checkpoint and the experiment's state is saved, so `--resume` goes on from
  there. The later phases (baselines, results, rankings, report) are skipped.
- While results are published, the first Ctrl-C is held until the whole set
  is written, so the previous results stay whole or are replaced as one set.
- In any other phase (preparing and loading the data, the baselines), the
  first Ctrl-C stops at once; nothing has been written to the run's results.
- A second Ctrl-C always stops at once.

The caller then exits with status 130 and one line saying how to go on.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager


class Interrupted(Exception):
    """The user pressed Ctrl-C; raised once the current phase has stopped cleanly."""


# Once interrupted, Tune's own lines about the stopped run (its Python API,
# Tuner.restore, to go on; the trials that never started) are dropped: the caller
# prints one line with this tool's --resume instead.
TUNE_INTERRUPT_LINES = ("Stop signal received", "Experiment has been interrupted",
                        "Trials did not complete", "Failed to fetch metrics")


class CtrlC:
    def __init__(self):
        self.count = 0
        self.phase = "other"
        self.swept = False  # whether the sweep phase was entered

    @contextmanager
    def handling(self):
        """Install the handler (and keep Tune's own SIGINT handler out) for the block."""
        previous = signal.signal(signal.SIGINT, self._handle)
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards SIGUSR1 to Tune
        from .console import DropMessages  # imports Ray, which sets up the "ray" logger

        hidden = DropMessages(*TUNE_INTERRUPT_LINES, active=lambda: self.count > 0)
        handlers = hidden.install()
        unraisable = sys.unraisablehook
        sys.unraisablehook = lambda info: None if self._ours(info) else unraisable(info)
        try:
            yield self
        finally:
            sys.unraisablehook = unraisable
            signal.signal(signal.SIGINT, previous)
            for handler in handlers:
                handler.removeFilter(hidden)

    @contextmanager
    def during(self, phase: str):
        """Run a block as `phase` ("sweep" or "publish"); raises Interrupted after a
        sweep stopped by Ctrl-C or a publish that held one."""
        self.phase = phase
        self.swept |= phase == "sweep"
        try:
            yield
        finally:
            self.phase = "other"
        if self.count:
            raise Interrupted(phase)

    def _ours(self, info) -> bool:
        """Whether an unraisable exception is our KeyboardInterrupt, raised where Python
        cannot propagate it (a fork hook or finalizer, e.g. while Ray starts its
        processes): Python would print its traceback and go on, and the interruption is
        still counted, so the phase ends with Interrupted as it would have."""
        return self.count > 0 and isinstance(info.exc_value, KeyboardInterrupt)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        if self.phase == "sweep" and callable(signal.getsignal(signal.SIGUSR1)):
            # Seen at once: the trials take some seconds to stop and save.
            print("\nstopping: the trials save where they are, for --resume (Ctrl-C again stops "
                  "at once)", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop, once its loop handles it
        elif self.phase == "publish":
            print("\nstopping once the results being written are whole (Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt
