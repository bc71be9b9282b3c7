"""The Ray layer, knowing nothing of the model's insides: tissues in the object store
(`ray_data`); the sweep by concern: each trial's loop (`trainable`), what it writes and
when (`trial_storage`), Tune's wiring (`tuner`), grouped ASHA (`asha`), the search
space (`search_space`, `optuna_search`), a stored sweep's refusal and resume
(`resume`), the filesystem Tune writes through (`tune_storage`) and the check that
every node sees the run's storage (`storage_check`); baselines and rankings beside
the trials (`group_tasks`); and a local multi-node cluster for trying the cluster
path (`local_cluster`, `node_root`)."""
