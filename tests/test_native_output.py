"""The filter of what native code writes on this process's stderr: TensorFlow's start-up
lines go, everything else comes out in order, even when the process aborts."""

import subprocess
import sys

SCRIPT = """
import os, sys
from mtlrank_ray.native_output import native_stderr_filtered
print("before", file=sys.stderr)
with native_stderr_filtered():
    os.write(2, b"I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on. You may see\\n")
    os.write(2, b"E0000 00:00:1.0 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n")
    os.write(2, b"a line of native code's own\\n")
    print("a Python line", file=sys.stderr)
    if "--abort" in sys.argv:
        os.write(2, b"last words before the abort\\n")
        os.abort()
print("after", file=sys.stderr)
"""


def run(*flags):
    return subprocess.run([sys.executable, "-c", SCRIPT, *flags], capture_output=True, text=True, timeout=60)


def test_start_up_lines_are_dropped_and_the_rest_kept_in_order():
    done = run()
    assert done.returncode == 0 and done.stderr == "before\na line of native code's own\na Python line\nafter\n"


def test_what_was_written_before_an_abort_still_comes_out():
    done = run("--abort")
    assert done.returncode < 0
    assert done.stderr.startswith("before\na line of native code's own\na Python line\nlast words before the abort\n")
