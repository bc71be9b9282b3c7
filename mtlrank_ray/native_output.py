"""TensorFlow's and CUDA's start-up lines, and a filter for what C++ libraries write
on this process's own stderr.

TensorFlow writes its start-up lines from C++ straight to file descriptor 2,
beyond Python's reach; TF_CPP_MIN_LOG_LEVEL does not hold back what absl logs
before its InitializeLog. Libraries load it on their own (umap, which scanpy's
neighbours import, tries to), so the filter is where the lines would appear.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

# TensorFlow's and CUDA's start-up lines, in every process that loads it (they say nothing about the
# run); each worker's log file under Ray's session folder keeps them.
STARTUP_NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on", r"Could not find cuda drivers",
    r"This TensorFlow binary is optimized",
    r"To enable the following instructions", r"Unable to register cu\w+ factory",
    r"computation placer already registered", r"XLA service .* initialized for platform",
    r"StreamExecutor \[\d+\]", r"disabling MLIR crash reproducer", r"Compiled cluster using XLA",
    r"Checkpoint successfully created at", r"Ray deduplicates logs by default",
    r"Restored on \S+ from checkpoint: ",  # Tune, as a paused trial goes on (asha.py)
]))


NO_GPU = re.compile(r"failed call to cuInit")  # noise only where no trial asked for a GPU


# The filter runs in a process of its own: it outlives this one when TensorFlow aborts
# (its last words still come out), and it reads on while native code holds the GIL.
FILTER = """
import re, sys
noise = re.compile(sys.argv[1])
for line in sys.stdin.buffer:
    if not noise.search(line.decode(errors="replace")):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


@contextlib.contextmanager
def native_stderr_filtered():
    """While inside, file descriptor 2 passes through a filter dropping STARTUP_NOISE and
    NO_GPU; everything else written there comes out as before, in order. Only for work
    that starts no process (a child would keep the filter's pipe open)."""
    sys.stderr.flush()
    real = os.dup(2)
    noise = f"{STARTUP_NOISE.pattern}|{NO_GPU.pattern}"
    filtering = subprocess.Popen([sys.executable, "-c", FILTER, noise], stdin=subprocess.PIPE,
                                 stdout=real, close_fds=True)
    os.dup2(filtering.stdin.fileno(), 2)
    filtering.stdin.close()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last write end closes: the filter reads to its end
        os.close(real)
        try:
            filtering.wait(timeout=10)
        except subprocess.TimeoutExpired:
            filtering.kill()
