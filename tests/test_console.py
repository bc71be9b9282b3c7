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
        emit({"pid": 2, "lines": ["oneDNN custom operations are on.", "a real line",
                                  "Restored on 192.0.2.2 from checkpoint: Checkpoint(filesystem="
                                  "py::tune-local, path=/runs/sweep/Liver_c1_r0_lambda0.01/checkpoint_000000)"]})
        emit({"pid": 1, "lines": STOPPED_TRIAL[5:]})
        other = ["Exception ignored in: <function Foo.__del__>", "Traceback (most recent call last):",
                 "ValueError: something else", "SystemExit: 3"]
        emit({"pid": 3, "lines": other})
    finally:
        dispatcher.handlers = saved
    assert printed == [(1, ["epoch 3 done"]), (2, ["a real line"]), (3, other)]


def test_the_interrupt_hint_names_the_script_as_it_was_started(monkeypatch, tmp_path):
    from argparse import Namespace

    from mtlrank_ray.cli import _interrupt_hint
    from mtlrank_ray.config import config_from_dict
    from mtlrank_ray.interrupts import CtrlC, Interrupted
    monkeypatch.setattr("sys.argv", ["/home/me/mtlrank_ray/tune.py", "--tissue", "all"])
    hint = _interrupt_hint(Namespace(argv=["--tissue", "all"], resume=False), config_from_dict({}),
                           tmp_path / "run", CtrlC())
    assert hint(Interrupted("prepare")) == ("nothing was written; run again with: "
                                            "python /home/me/mtlrank_ray/tune.py --tissue all")


def test_a_resumed_sweeps_progress_counts_its_earlier_trials(capsys):
    from types import SimpleNamespace

    from mtlrank_ray.console import SweepProgress

    def trial(status, value):
        return SimpleNamespace(status=status, TERMINATED="TERMINATED", ERROR="ERROR",
                               config={"trial": {"tissue": "Liver"}},
                               last_result={"best_mean_val_r2": value} if value is not None else None)
    progress = SweepProgress()
    trials = [trial("TERMINATED", 0.3), trial("TERMINATED", 0.1), trial("PENDING", None)]
    progress.on_step_begin(0, trials)  # the first step of a resumed sweep
    printed = capsys.readouterr().out  # at once, not after 30 s
    assert printed == "sweep: 2/3 trials, 0 s elapsed; best trial's mean validation R²: Liver 0.300\n"
