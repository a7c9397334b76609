"""Every name the operator generates is a valid, bounded, deterministic Kubernetes name (issue #17)."""

from __future__ import annotations

import itertools
import re

import pytest

from dynamiclora.api.common import TierLevel
from dynamiclora.builders.names import (
    MAX_STATEFULSET,
    agent_tier_name,
    consolidation_job_name,
    dns_name,
    inference_name,
    is_dns_label,
    is_label_value,
    is_rfc1035_label,
    label_value,
    swarm_name_problem,
    training_job_name,
    volume_name,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Extremes the API allows: Swarm names up to 63 (RFC 1035), agents up to 40, tiers and policies up to 253
# characters with dots (DNS subdomains), versions and retries without bound.
SWARMS = ["s", "support", "a" * 40, "s" + "-x" * 31, "z" * 63, "q" * 62 + "1"]
AGENTS = ["a", "alice", "b" * 40, "c-" * 19 + "cc", "9" * 40]
TIERS = ["t", "shared", "shared.foundation", "a" * 63, "a" * 64, "x" * 253,
         ".".join(["abc"] * 63), "a-" * 126 + "a", "1" * 253]
POLICIES = ["p", "consolidation", "p.q", "m" * 253, "n" * 250 + ".io"]
VERSIONS = [1, 99, 10**6, 10**12]
ATTEMPTS = [0, 1, 7, 12345]


def _label(name: str) -> bool:
    return len(name) <= 63 and DNS_LABEL.match(name) is not None


def test_predicates_match_the_kubernetes_rules() -> None:
    assert is_dns_label("a-1") and not is_dns_label("-a") and not is_dns_label("a.b") and not is_dns_label("")
    assert not is_dns_label("a" * 64) and is_dns_label("a" * 64, limit=253)
    assert is_rfc1035_label("a1") and not is_rfc1035_label("1a")
    assert is_label_value("") and is_label_value("A_b.c-1") and not is_label_value("a" * 64)
    assert not is_label_value("-a") and not is_label_value("a.")


@pytest.mark.parametrize(("swarm", "agent"), list(itertools.product(SWARMS, AGENTS)))
def test_swarm_children_names_are_valid(swarm: str, agent: str) -> None:
    assert swarm_name_problem(swarm) is None
    sts = inference_name(swarm)  # the StatefulSet and its headless Service
    assert RFC1035.match(sts) and len(sts) <= MAX_STATEFULSET
    for level in (TierLevel.CONTEXT, TierLevel.AGENT):
        tier = agent_tier_name(swarm, agent, level)
        assert SUBDOMAIN.match(tier) and len(tier) <= 253
        assert is_label_value(label_value(tier))
        for version, attempt in itertools.product(VERSIONS, ATTEMPTS):
            assert _label(training_job_name(tier, version, attempt))


@pytest.mark.parametrize("tier", TIERS)
def test_job_names_of_any_tier_are_dns_labels(tier: str) -> None:
    names = {training_job_name(tier, v, a) for v, a in itertools.product(VERSIONS, ATTEMPTS)}
    assert all(_label(n) for n in names)
    assert len(names) == len(VERSIONS) * len(ATTEMPTS)  # every (version, retry) its own Job
    for policy in POLICIES:
        for seq in VERSIONS:
            assert _label(consolidation_job_name(policy, tier, seq))
    assert _label(volume_name("pvc", tier))
    lv = label_value(tier)
    assert is_label_value(lv) and len(lv) <= 63


def test_retry_names_stay_within_63_characters() -> None:
    tier = agent_tier_name("z" * 63, "b" * 40, TierLevel.CONTEXT)  # 112 characters
    names = [training_job_name(tier, 123456, attempt) for attempt in range(0, 40)]
    assert all(_label(n) for n in names) and len(set(names)) == len(names)
    # A tier whose plain Job name is exactly 63 characters: its retries used to reach 66.
    tier = "t" * (63 - len("-train-v1"))
    assert training_job_name(tier, 1) == f"{tier}-train-v1"
    assert all(_label(training_job_name(tier, 1, a)) for a in (1, 10, 100))


def test_valid_short_names_are_unchanged() -> None:
    """Objects created by earlier versions keep their names (a rename would orphan them)."""
    assert inference_name("support") == "support-vllm"
    assert agent_tier_name("support", "alice", TierLevel.CONTEXT) == "support-alice-context"
    assert training_job_name("support-alice-context", 4) == "support-alice-context-train-v4"
    assert training_job_name("support-alice-context", 1, 2) == "support-alice-context-train-v1-r2"
    assert consolidation_job_name("p", "support-alice-agent", 2) == "mig-p-support-alice-agent-2"
    assert volume_name("pvc", "ckpt") == "pvc-ckpt"
    assert label_value("shared.foundation") == "shared.foundation"
    long = "x" * 70  # truncated names keep the scheme of earlier versions too
    assert dns_name(long, "vllm", limit=52) == "x" * 45 + "-" + dns_name(long, "vllm", limit=52)[-6:]


def test_names_are_deterministic_and_distinct() -> None:
    long_tiers = [f"{'t' * 80}-{i}" for i in range(50)] + [f"{'t' * 80}.{i}" for i in range(50)]
    names = [training_job_name(t, 1) for t in long_tiers]
    assert names == [training_job_name(t, 1) for t in long_tiers]
    assert len(set(names)) == len(names)  # a shared 80-character prefix does not collide
    # Sanitized names never collide with the name they are sanitized into.
    assert training_job_name("a.b", 1) != training_job_name("a-b", 1)
    assert _label(training_job_name("a.b", 1))
    assert volume_name("pvc", "my.claim") != volume_name("pvc", "my-claim")
    labels = [label_value(t) for t in long_tiers]
    assert len(set(labels)) == len(labels)
    swarms = ["s" * 63, "s" * 62 + "t", "s" * 47 + "-a", "s" * 47 + "-b"]
    assert len({inference_name(s) for s in swarms}) == len(swarms)
    policies = {consolidation_job_name(p, t, 3) for p in POLICIES for t in TIERS}
    assert len(policies) == len(POLICIES) * len(TIERS)


@pytest.mark.parametrize(
    "name",
    ["1support", "my.swarm", "-a", "a-", "Support", "a_b", "x" * 64, "s" * 253, ""],
)
def test_swarm_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    assert swarm_name_problem(name)


def test_swarm_name_rule_matches_the_service_name_rule() -> None:
    for name in ["a", "support", "a-1", "z" * 63]:
        assert swarm_name_problem(name) is None and is_rfc1035_label(name)
