"""A sweep whose trials wait after their last report, for test_resume: a driver to
SIGKILL while Tune holds a trial's last result but still counts it as running,
then run again with --resume.

    python held_end_driver.py STORE CONFIG OUT HOLD [--resume]

STORE is a prepared store of Liver; while the file HOLD exists, each trial waits
there once train_trial has returned.
"""

import sys
import time
from pathlib import Path

import ray

from mtlrank_ray.config import load_config
from mtlrank_ray.distributed import ray_data, tuner
from mtlrank_ray.distributed.trainable import train_trial

HOLD = Path(sys.argv[4])


def held_at_the_end(config, tissues, settings):
    train_trial(config, tissues, settings)
    while HOLD.exists():
        time.sleep(0.1)


def main(store: str, config: str, out: str, resume: bool) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    blocks = {"Liver": ray_data.materialize_tissue(store, "Liver")}
    grid = tuner.run_sweep(blocks, load_config(config), Path(out), resume_sweep=resume, verbose=0,
                           trainable=held_at_the_end)
    assert not [r.error for r in grid if r.error]


if __name__ == "__main__":
    main(*sys.argv[1:4], "--resume" in sys.argv)
