"""What the workers' output looks like in the driver's console."""

from ray._private import ray_logging

from mtlrank_ray.console import quiet_worker_output

STOPPED_TRIAL = [  # as a trial's worker printed it when Tune stopped the trial early
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7fae6f282520>",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
    "    def _remove(item, selfref=ref(self)):",
    "",
    '  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler',
    "    raise_sys_exit_with_custom_error_message(",
    '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_error_message',
    "SystemExit: 1",
]


def test_a_stopped_trials_sigterm_traceback_is_dropped_and_other_output_kept():
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    printed, saved = [], list(dispatcher.handlers)
    dispatcher.handlers = [("record", lambda batch: printed.append((batch["pid"], batch["lines"])))]
    try:
        quiet_worker_output(gpus=0)
        emit = dispatcher.handlers[0][1]
        # Ray delivers the block in pieces, interleaved with other workers' lines.
        emit({"pid": 1, "lines": ["epoch 3 done", *STOPPED_TRIAL[:5]]})
        emit({"pid": 2, "lines": ["oneDNN custom operations are on.", "a real line"]})
        emit({"pid": 1, "lines": STOPPED_TRIAL[5:]})
        other = ["Exception ignored in: <function Foo.__del__>", "Traceback (most recent call last):",
                 "ValueError: something else", "SystemExit: 3"]
        emit({"pid": 3, "lines": other})
    finally:
        dispatcher.handlers = saved
    assert printed == [(1, ["epoch 3 done"]), (2, ["a real line"]), (3, other)]
