"""cluster.yaml as `ray up` reads it: Ray's own validation, then Ray's AWS bootstrap
and node launches against EC2 and IAM served by moto on loopback, after the roles
were made by aws/make_roles.sh run with the real AWS CLI (README's step)."""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

DLAMI = ("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
         "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id")
BUCKET = "mtlrank-test-bucket"
REGION = "us-west-2"


def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator():
    validate_config(prepare_config(cluster_config()))


def test_cluster_yaml_has_the_shape_the_cluster_tests_run_on():
    """tests/test_cluster.py's head has no CPU and its workers share no disk: so does this."""
    config = cluster_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--head" in c and "--num-cpus=0" in c for c in config["head_start_ray_commands"])
    # The dashboard and job API stay on the head's localhost (Ray's default), reached by
    # `ray dashboard`'s SSH tunnel: no --dashboard-host widening it.
    assert not any("--dashboard-host" in c for c in config["head_start_ray_commands"])
    assert {"**/.venv", "runs", "demo", "data", "**/*.h5ad"} <= set(config["rsync_exclude"])
    for node_type in config["available_node_types"].values():  # never Ray's CUDA 11 default
        assert node_type["node_config"]["ImageId"] == DLAMI
    gpu = yaml.safe_load((REPO / "tune_configs" / "gpu.yaml").read_text())
    assert gpu["run"]["storage_path"].startswith("s3://") and gpu["resources"]["gpu"] > 0
    assert gpu["resources"].get("require_gpu", True)  # a node without a usable GPU fails at once


def test_the_image_holds_the_dependencies_pyproject_asks_for():
    """docker/requirements.txt pins every dependency within pyproject's range, on Ray's
    image of the version pyproject asks for: nodes boot with no pip install of them."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(r).name.lower(): Requirement(r) for r in
              project["dependencies"] + project["optional-dependencies"]["aws"]}
    lines = [line.split("#")[0].strip() for line in (REPO / "docker" / "requirements.txt").read_text().splitlines()]
    pinned = {(r := Requirement(line)).name.lower(): r for line in lines if line}
    assert set(wanted) - {"ray"} == set(pinned)
    for name, requirement in pinned.items():
        (version,) = [s.version for s in requirement.specifier if s.operator == "=="]
        assert wanted[name].specifier.contains(version), (name, version, str(wanted[name].specifier))
    assert "and-cuda" in pinned["tensorflow"].extras
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    (ray_version,) = re.findall(r"^FROM rayproject/ray:([\d.]+)-py311-gpu$", dockerfile, re.M)
    assert wanted["ray"].specifier.contains(ray_version) and f"ray[tune,data,default]=={ray_version}" in dockerfile
    assert cluster_config()["setup_commands"] == ["pip install -q --no-deps -e /home/ray/mtlrank_ray"]


@pytest.fixture
def aws(tmp_path, monkeypatch):
    """EC2, IAM and STS of a moto server on loopback, reached through the standard AWS
    variables by the AWS CLI and by Ray's boto3 alike."""
    from moto.server import ThreadedMotoServer

    from mtlrank_ray.distributed.local_cluster import free_port

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # AWS's own, as IAM has them
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
           "HOME": str(tmp_path)}  # Ray writes the cluster's SSH key under ~/.ssh
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield env
    server.stop()


def allows(policies: list[dict], action: str, resource: str) -> bool:
    """Whether IAM policy documents allow `action` on `resource` (Allow statements with
    wildcards, any explicit Deny wins): the check IAM makes for a PassRole."""
    def matches(statement, key, value):
        patterns = statement.get(key, [])
        return any(fnmatch.fnmatchcase(value, p) for p in ([patterns] if isinstance(patterns, str) else patterns))

    hits = [s for p in policies for s in p["Statement"]
            if matches(s, "Action", action) and matches(s, "Resource", resource)]
    return any(s["Effect"] == "Allow" for s in hits) and not any(s["Effect"] == "Deny" for s in hits)


def role_policies(iam, role: str) -> list[dict]:
    inline = [iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
              for name in iam.list_role_policies(RoleName=role)["PolicyNames"]]
    attached = []
    for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        version = iam.get_policy(PolicyArn=policy["PolicyArn"])["Policy"]["DefaultVersionId"]
        attached.append(iam.get_policy_version(PolicyArn=policy["PolicyArn"],
                                               VersionId=version)["PolicyVersion"]["Document"])
    return [json.loads(p) if isinstance(p, str) else p for p in inline + attached]


@pytest.mark.skipif(shutil.which("aws", path=os.path.dirname(sys.executable)) is None,
                    reason="the AWS CLI (awscli, in the test extra) is not installed")
def test_ray_up_bootstraps_and_launches_workers_with_their_own_profile_and_the_dlami(aws, tmp_path):
    import boto3
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    made = subprocess.run(["bash", str(REPO / "aws" / "make_roles.sh")], capture_output=True, text=True,
                          env={**os.environ, "BUCKET": BUCKET,
                               "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]

    # What `ray up` does before it launches anything: validation, the instance types'
    # resources, and the AWS bootstrap (IAM, key pair, subnets, security groups, AMI).
    config = _bootstrap_config(cluster_config(), no_config_cache=True)
    types = config["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] == 1 and types["gpu_worker"]["resources"]["CPU"] == 4
    assert types["head"]["resources"] == {"CPU": 0}
    assert "IamInstanceProfile" not in config["head_node"]  # Ray made no ray-autoscaler-v1 of its own

    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    for node_type, kind in (("head", "head"), ("gpu_worker", "worker")):
        provider.create_node(types[node_type]["node_config"],
                             {TAG_RAY_NODE_KIND: kind, TAG_RAY_USER_NODE_TYPE: node_type}, 1)
    ec2, iam = boto3.client("ec2", region_name=REGION), boto3.client("iam", region_name=REGION)
    launched = {tag["Value"]: instance
                for reservation in ec2.describe_instances()["Reservations"]
                for instance in reservation["Instances"]
                for tag in instance.get("Tags", []) if tag["Key"] == TAG_RAY_USER_NODE_TYPE}
    assert set(launched) == {"head", "gpu_worker"}
    worker, head = launched["gpu_worker"], launched["head"]
    assert worker["InstanceType"] == "g5.xlarge" and worker["ImageId"] == head["ImageId"] == DLAMI

    # Each node runs with its own profile: the worker's is not the head's.
    profile_of = {name: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
                  for name in ("mtlrank-head", "mtlrank-worker")}
    assert worker["IamInstanceProfile"]["Arn"] == profile_of["mtlrank-worker"]["Arn"]
    assert head["IamInstanceProfile"]["Arn"] == profile_of["mtlrank-head"]["Arn"]
    worker_role = profile_of["mtlrank-worker"]["Roles"][0]
    head_role = profile_of["mtlrank-head"]["Roles"][0]["RoleName"]

    # The precondition of the head's RunInstances for a worker: PassRole on the worker's
    # role (on nothing else), and EC2.
    head_policies = role_policies(iam, head_role)
    assert allows(head_policies, "iam:PassRole", worker_role["Arn"])
    assert not allows(head_policies, "iam:PassRole", worker_role["Arn"].replace("mtlrank-worker", "admin"))
    assert allows(head_policies, "ec2:RunInstances", "*")
    # The worker reaches the run's bucket and ECR, and no other bucket, and launches nothing.
    worker_policies = role_policies(iam, worker_role["RoleName"])
    assert allows(worker_policies, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/runs/atlas/sweep/x")
    assert allows(worker_policies, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}")
    assert not allows(worker_policies, "s3:GetObject", "arn:aws:s3:::another-bucket/x")
    assert allows(worker_policies, "ecr:BatchGetImage", "*")
    assert not allows(worker_policies, "ec2:RunInstances", "*")
    assert not allows(worker_policies, "iam:PassRole", "*")
