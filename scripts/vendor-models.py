#!/usr/bin/env python3
"""Vendor the AWS service models Gantry serves, from the installed botocore, as data.

The models (botocore/data/<service>/<version>/service-2.json, Apache-2.0, see
crates/gantry-aws/models/NOTICE) drive Gantry's generic protocol codecs. Documentation strings
are dropped: they are most of each file and nothing reads them.

Usage: .venv/bin/python scripts/vendor-models.py   (rewrites crates/gantry-aws/models/*.json)
"""
import gzip
import json
import os

import botocore

SERVICES = {"ecs": "ecs", "logs": "logs", "elbv2": "elbv2", "servicediscovery": "servicediscovery", "acm": "acm", "cloudwatch": "cloudwatch",
            "application-autoscaling": "application-autoscaling", "secretsmanager": "secretsmanager",
            "ssm": "ssm", "iam": "iam", "sts": "sts", "ec2": "ec2"}
# Services of which Gantry serves a few operations: only those and the shapes they reach are
# vendored (EC2's whole model is megabytes).
SUBSETS = {"ec2": ["DescribeVpcs", "DescribeSubnets", "DescribeAvailabilityZones", "DescribeSecurityGroups",
                   "CreateSecurityGroup", "DeleteSecurityGroup", "AuthorizeSecurityGroupIngress",
                   "AuthorizeSecurityGroupEgress", "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
                   "CreateTags", "DeleteTags", "DescribeTags"]}
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "gantry-aws", "models")


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("documentation", "documentationUrl")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def load(service):
    root = os.path.join(os.path.dirname(botocore.__file__), "data", service)
    version = sorted(os.listdir(root))[-1]
    base = os.path.join(root, version, "service-2.json")
    if os.path.exists(base):
        with open(base) as f:
            return json.load(f)
    with gzip.open(base + ".gz") as f:
        return json.load(f)


def subset(model, operations):
    """The model with only `operations` and the shapes they reach."""
    ops = {k: v for k, v in model["operations"].items() if k in operations}
    keep, todo = set(), []
    for op in ops.values():
        todo += [op[k]["shape"] for k in ("input", "output") if k in op]
        todo += [e["shape"] for e in op.get("errors", [])]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        shape = model["shapes"][name]
        refs = list(shape.get("members", {}).values()) + [shape[k] for k in ("member", "key", "value") if k in shape]
        todo += [r["shape"] for r in refs]
    return dict(model, operations=ops, shapes={k: v for k, v in model["shapes"].items() if k in keep})


def main():
    for service, name in SERVICES.items():
        model = strip(load(service))
        if service in SUBSETS:
            model = subset(model, SUBSETS[service])
        model["metadata"]["botocoreVersion"] = botocore.__version__
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(model, f, separators=(",", ":"), sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(model['operations'])} operations, {len(model['shapes'])} shapes")


if __name__ == "__main__":
    main()
