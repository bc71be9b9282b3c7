#!/usr/bin/env bash
# The IAM roles and instance profiles cluster.yaml names (README, "Run on a cluster"):
#   mtlrank-worker  the GPU workers: read and write the run's bucket, pull the image from ECR;
#   mtlrank-head    the head: launch and stop workers (EC2), hand them mtlrank-worker
#                   (iam:PassRole on that role alone), the bucket and ECR as the workers.
# Run once per AWS account, with credentials allowed to manage IAM:
#   BUCKET=your-bucket bash aws/make_roles.sh
set -euo pipefail
: "${BUCKET:?set BUCKET to the S3 bucket of run.storage_path (without s3://)}"
here="$(cd "$(dirname "$0")" && pwd)"
account="$(aws sts get-caller-identity --query Account --output text)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s/BUCKET/$BUCKET/g" "$here/worker-policy.json" > "$work/worker-policy.json"
sed "s/BUCKET/$BUCKET/g; s/ACCOUNT/$account/g" "$here/head-policy.json" > "$work/head-policy.json"

for role in mtlrank-worker mtlrank-head; do
  aws iam create-role --role-name "$role" \
    --assume-role-policy-document "file://$here/ec2-trust.json" > /dev/null
  aws iam put-role-policy --role-name "$role" --policy-name "$role" \
    --policy-document "file://$work/${role#mtlrank-}-policy.json"
  aws iam attach-role-policy --role-name "$role" \
    --policy-arn arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly
  aws iam create-instance-profile --instance-profile-name "$role" > /dev/null
  aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
done
# What Ray's own head role (ray-autoscaler-v1) has for EC2, to start and stop workers.
aws iam attach-role-policy --role-name mtlrank-head \
  --policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess
echo "made roles and instance profiles mtlrank-head and mtlrank-worker (account $account, bucket $BUCKET)"
