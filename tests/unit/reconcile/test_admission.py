"""Operator-side policy: a CR naming an image, service account or Secret outside the lists gets nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dynamiclora.controllers.common import PolicyDenied
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.controllers.tier import reconcile_tier
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube

NS = "default"
POLICY = {"allowed_images": "ghcr.io/dynamiclora/, vllm/", "allowed_service_accounts": "trainer",
          "secret_label": "dynamiclora.io/allowed=true"}  # fmt: skip


def _settings(base: OperatorSettings, **overrides: str) -> OperatorSettings:
    return OperatorSettings(pvc_mount_root=base.pvc_mount_root, **{**POLICY, **overrides})


def _children(kube: FakeKube) -> list[str]:
    return sorted(f"{k}/{n}" for (k, _, n) in kube.objects if k not in ("Swarm", "Secret"))


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda s: s["inference"].update(image="evil.example/miner:1"), "spec.inference.image: image 'evil.example"),
        (lambda s: s["contextTier"]["training"].update(image="docker.io/x/y:1"), "spec.contextTier.training.image"),
        (lambda s: s["contextTier"]["training"].update(serviceAccountName="cluster-admin-sa"),
         "service account 'cluster-admin-sa' is not allowed"),
        (lambda s: s["inference"].update(apiKeySecretRef={"name": "db-password", "key": "password"}),
         "Secret 'db-password' lacks the label dynamiclora.io/allowed=true"),
    ],
)
def test_a_swarm_outside_the_policy_creates_nothing(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], mutate: Any, complaint: str
) -> None:
    kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-password", "namespace": NS},
              "data": {"password": "aHVudGVyMg=="}})  # fmt: skip
    body = copy.deepcopy(swarm_body)
    mutate(body["spec"])
    with pytest.raises(PolicyDenied, match=complaint) as err:
        reconcile_swarm(kube, _settings(settings), kube.add(body))
    assert err.value.reason == "PolicyDenied"
    assert _children(kube) == []  # no StatefulSet, Service, ConfigMap, tier or key Secret
    assert [n for (k, _, n) in kube.objects if k == "Secret"] == ["db-password"]


def test_a_swarm_inside_the_policy_is_reconciled(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "client", "namespace": NS, "labels": {"dynamiclora.io/allowed": "true"}}, "data": {"k": "eA=="}})
    body = copy.deepcopy(swarm_body)
    body["spec"]["inference"]["apiKeySecretRef"] = {"name": "client", "key": "k"}
    body["spec"]["contextTier"]["training"]["serviceAccountName"] = "trainer"
    obs = reconcile_swarm(kube, _settings(settings), kube.add(body))
    assert "StatefulSet/support-vllm" in obs.applied


def test_no_policy_allows_anything(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]) -> None:
    body = copy.deepcopy(swarm_body)
    body["spec"]["inference"]["image"] = "registry.internal/vllm:1"
    assert "StatefulSet/support-vllm" in reconcile_swarm(kube, settings, kube.add(body)).applied


def test_a_tier_outside_the_policy_starts_no_job(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    tier = kube.objects[("LoRATier", NS, "support-alice-context")]
    tier["spec"]["training"]["image"] = "evil.example/trainer:1"
    with pytest.raises(PolicyDenied, match=r"spec.training.image: image 'evil.example/trainer:1'"):
        reconcile_tier(kube, _settings(settings), copy.deepcopy(tier))
    assert not kube.list("Job", NS)


@pytest.mark.parametrize("bad", ["novalue", "a b=c"])
def test_a_malformed_secret_label_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="secret_label"):
        OperatorSettings(secret_label=bad)
