"""What `tune.py` prints while it runs: a line per phase, a progress bar for the sweep
and one for the baselines and rankings still running after it, and the workers'
output without TensorFlow's start-up lines.

The sweep's bar (tqdm; in a Jupyter notebook its notebook bar) shows trials done
out of all, elapsed time, the time left and the best trial's mean validation R² so
far per tissue; where the output is neither a terminal nor a notebook it is a plain
line every PLAIN_EVERY_S seconds. Tune's own
per-trial tables appear only with -v.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import time

from ray.tune import Callback

PLAIN_EVERY_S = 30.0
from .native_output import NO_GPU, STARTUP_NOISE
# When Tune ends a trial stopped early, Ray's SIGTERM handler in its worker can fire while
# Python runs a finalizer: the interpreter prints "Exception ignored in: ..." and a
# traceback ending in SystemExit. The trial is fine; a block holding Ray's handler is
# dropped whole, any other block printed as it came. A block ends at its exception's
# line: the first unindented one after "Traceback (most recent call last):".
IGNORED, STOPPED, BLOCK_END = (re.compile(p) for p in (
    r"^Exception ignored in: ", r"in sigterm_handler$", r"^(?!Traceback \(most recent)\S"))
BLOCK_LINES = 40  # a longer block is printed, whatever it is


def quiet_worker_output(gpus: float) -> None:
    """Drop STARTUP_NOISE (and, when trials ask for no GPU, CUDA's failed start) from the
    worker output Ray prints in this driver."""
    from ray._private import ray_logging

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    noise = [STARTUP_NOISE] + ([NO_GPU] if not gpus else [])

    def without_noise(handle):
        blocks: dict = {}  # worker pid -> the lines of an "Exception ignored" block so far

        def emit(batch: dict) -> None:
            lines, pid = [], batch.get("pid")
            for line in batch.get("lines", []):
                if pid in blocks:
                    blocks[pid].append(line)
                    if BLOCK_END.search(line) or len(blocks[pid]) > BLOCK_LINES:
                        block = blocks.pop(pid)
                        if not any(STOPPED.search(kept) for kept in block):
                            lines += block
                elif IGNORED.search(line):
                    blocks[pid] = [line]
                elif not any(pattern.search(line) for pattern in noise):
                    lines.append(line)
            if lines:
                handle({**batch, "lines": lines})
        return emit

    with dispatcher._lock:
        dispatcher.handlers = [(name, without_noise(handle)) for name, handle in dispatcher.handlers]


class DropMessages(logging.Filter):
    """Drops records whose message contains any of `texts`, while `active()` holds; added
    to the "ray" logger's handlers, where every ray.* record is printed."""

    def __init__(self, *texts: str, active=lambda: True):
        super().__init__()
        self.texts, self.active = texts, active

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active() and any(text in record.getMessage() for text in self.texts))

    def install(self) -> list[logging.Handler]:
        handlers = logging.getLogger("ray").handlers
        for handler in handlers:
            handler.addFilter(self)
        return handlers


def quiet_token_notice() -> None:
    """Drop Ray's notice that a new local Ray has token authentication on (it always
    has, since Ray 2.60); `--dashboard` says how to get the token instead."""
    DropMessages("Token authentication is enabled for this Ray cluster").install()


def quiet_missing_metrics() -> None:
    """Drop Tune's warning, on --resume, that the trials not started yet have no metrics
    (no result.json): the progress line counts them."""
    DropMessages("Failed to fetch metrics for").install()


def in_notebook() -> bool:
    """Whether this Python is a Jupyter kernel (whose stderr is no terminal, yet shows a bar)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def bar_class():
    """tqdm's notebook bar in Jupyter where ipywidgets draws it, its text bar elsewhere."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm


def phase(text: str) -> None:
    print(text, flush=True)


class SweepProgress(Callback):
    """Tune callback: the sweep's progress bar (see the module's docstring)."""

    def __init__(self, total: int | None = None):
        self._expected = total  # trials the sweep will make (Tune makes them as it goes)
        self._bar = None
        self._best: dict[str, float] = {}
        self._done = self._done_before = self._total = 0
        self._started = self._printed = 0.0

    def __getstate__(self) -> dict:  # Tune pickles its callbacks; the bar stays here
        return {**self.__dict__, "_bar": None}

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not trials:  # Tune creates the trials in its first steps
            return
        if not self._started:
            # The first plain line comes at once, so a log shows the sweep has started.
            self._started, self._printed = time.monotonic(), time.monotonic() - PLAIN_EVERY_S
            self._done = self._done_before = sum(t.status in (t.TERMINATED, t.ERROR) for t in trials)
            for trial in trials:  # a resumed sweep's earlier trials count towards the best
                if trial.last_result:
                    self.on_trial_result(iteration, trials, trial, trial.last_result)
            if sys.stderr.isatty() or in_notebook():
                self._bar = bar_class()(total=max(len(trials), self._expected or 0), initial=self._done, desc="sweep", unit="trial",
                                 file=sys.stderr, dynamic_ncols=True)
        self._total = max(len(trials), self._expected or 0)
        if self._bar is not None and self._bar.total != self._total:
            self._bar.total = self._total
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        tissue, value = trial.config["trial"]["tissue"], result.get("best_mean_val_r2")
        if value is not None and value > self._best.get(tissue, float("-inf")):
            self._best[tissue] = value

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._advance()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._advance()

    def on_experiment_end(self, trials, **info) -> None:
        self._show(final=True)
        if self._bar is not None:
            self._bar.close()

    def _advance(self) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)

    def _best_text(self) -> str:
        return ", ".join(f"{tissue} {value:.3f}" for tissue, value in sorted(self._best.items()))

    def _show(self, final: bool = False) -> None:
        if self._bar is not None:
            best = f"best trial's mean val R²: {self._best_text()}" if self._best else ""
            self._bar.set_postfix_str(best, refresh=False)
            return
        now = time.monotonic()
        if not self._total or (not final and now - self._printed < PLAIN_EVERY_S):
            return
        self._printed = now
        elapsed = now - self._started
        finished_here = self._done - self._done_before  # a resumed sweep's earlier trials took no time
        left = elapsed / finished_here * (self._total - self._done) if finished_here else 0.0
        print(f"sweep: {self._done}/{self._total} trials, {elapsed:.0f} s elapsed"
              + (f", about {left:.0f} s left" if finished_here and not final else "")
              + (f"; best trial's mean validation R²: {self._best_text()}" if self._best else ""),
              flush=True)


class TaskProgress:
    """The baselines and rankings still running after the sweep: a bar as the sweep's, or
    where there is no terminal nor notebook a plain line every PLAIN_EVERY_S seconds."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self._started = self._printed = time.monotonic()
        self._bar = (bar_class()(total=total, desc="baselines and rankings", unit="task",
                                 file=sys.stderr, dynamic_ncols=True)
                     if sys.stderr.isatty() or in_notebook() else None)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._printed >= PLAIN_EVERY_S and self.done < self.total:
            self._printed = now
            print(f"baselines and rankings: {self.done}/{self.total} done, "
                  f"{now - self._started:.0f} s elapsed", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
