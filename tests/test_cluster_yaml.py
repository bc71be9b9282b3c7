import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO


def test_cluster_yaml_passes_rays_validator():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-")
    assert config["docker"]["image"].endswith("-gpu")
