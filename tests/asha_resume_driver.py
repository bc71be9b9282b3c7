"""A Tune run of grouped ASHA over fixed metric curves, for test_cluster: a driver
to run whole, or to SIGKILL and run again with --resume.

    python asha_resume_driver.py ADDRESS STORAGE [--resume]

Trial λ reports 0.9 - λ every epoch, so grouped ASHA stops λ by λ, the weakest
first, whatever the order trials reach a rung in, and λ = 0 runs every epoch.
It prints {λ: epochs run} as JSON when the run is done. Trials keep no
checkpoints (a paused or resumed trial starts over and is given its group's
decisions again), so only the driver writes to STORAGE, a folder on its
machine, and an experiment snapshot is taken at every step
(TUNE_GLOBAL_CHECKPOINT_S=0). It is written through the sweep's own storage
filesystem (tune_storage), and its journal settled before the resume, as
tune.py does: Tune's plain upload can leave a cut-off state file, or state
files of different snapshots, when the kill lands during a snapshot.
"""

import json
import sys
import time

import ray
from ray import tune

from mtlrank_ray.distributed.asha import GroupedASHA
from mtlrank_ray.distributed.group_tasks import group_of
from mtlrank_ray.distributed.state_journal import settle
from mtlrank_ray.distributed.tune_storage import tune_storage

LAMBDAS = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
EPOCHS = 6


def curve(config):
    for epoch in range(1, EPOCHS + 1):
        time.sleep(0.3)
        tune.report({"epoch": epoch, "score": 0.9 - config["trial"]["lambda"]})


def main(address: str, storage: str, resume: bool) -> None:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    trainable = tune.with_resources(curve, {"cpu": 1})
    storage_path, storage_filesystem = tune_storage(storage)
    if resume:
        settle(storage_filesystem, f"{storage_path}/asha")
        tuner = tune.Tuner.restore(f"{storage_path}/asha", trainable=trainable, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    else:
        scheduler = GroupedASHA(group_of, "score", max_t=EPOCHS, grace_period=1, reduction_factor=2,
                                group_size=len(LAMBDAS), time_attr="epoch")
        grid = [{"tissue": "T", "cluster": 0, "replicate": 0, "lambda": lam} for lam in LAMBDAS]
        tuner = tune.Tuner(
            trainable, param_space={"trial": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(scheduler=scheduler),
            run_config=tune.RunConfig(storage_path=storage_path, storage_filesystem=storage_filesystem,
                                      name="asha", verbose=0,
                                      callbacks=[scheduler.records_keeper()]))
    results = tuner.fit()
    print(json.dumps({str(r.config["trial"]["lambda"]): r.metrics["epoch"] for r in results}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv)
