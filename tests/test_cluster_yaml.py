import yaml
from conftest import REPO
from ray.autoscaler._private.util import prepare_config, validate_config


def test_cluster_yaml_passes_rays_validator():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-")
    assert config["docker"]["image"].endswith("-gpu")


def test_cluster_yaml_has_the_shape_the_cluster_tests_run_on():
    """tests/test_cluster.py's head has no CPU and its workers share no disk: so does this."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--head" in c and "--num-cpus=0" in c for c in config["head_start_ray_commands"])
    workers = config["available_node_types"]["gpu_worker"]["node_config"]
    assert "IamInstanceProfile" in workers  # workers reach the S3 store and checkpoints
    assert {"**/.venv", "runs", "demo"} <= set(config["rsync_exclude"])
    gpu = yaml.safe_load((REPO / "tune_configs" / "gpu.yaml").read_text())
    assert gpu["run"]["storage_path"].startswith("s3://") and gpu["resources"]["gpu"] > 0
