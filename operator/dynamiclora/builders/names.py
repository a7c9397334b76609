"""Names and labels of everything the operator creates, in one place.

Every generated object name goes through :func:`dns_name`, which guarantees a valid DNS label (RFC 1123:
lowercase alphanumerics and '-', alphanumeric at both ends) of at most ``limit`` characters. A name that
is already valid and short enough is kept as is (so objects created by earlier versions keep their
names); otherwise it is cut and ends in a stable hash of the full name, which keeps it deterministic and
distinct from the names of other inputs. Label values go through :func:`label_value` the same way.
"""

from __future__ import annotations

import hashlib
import re

from dynamiclora import FIELD_MANAGER
from dynamiclora.api.common import MAX_SWARM_NAME, SWARM_NAME_PATTERN, TierLevel

LABEL_SWARM = "dynamiclora.io/swarm"
ANNOTATION_SPEC_HASH = "dynamiclora.io/spec-hash"
LABEL_AGENT = "dynamiclora.io/agent"
LABEL_TIER = "dynamiclora.io/tier"
LABEL_LEVEL = "dynamiclora.io/level"
LABEL_COMPONENT = "dynamiclora.io/component"
LABEL_POLICY = "dynamiclora.io/policy"
ANNOTATION_TRAIN_RECORDS = "dynamiclora.io/records"
ANNOTATION_JOB_KIND = "dynamiclora.io/job-kind"
# The tier a consolidation Job writes (label values are shortened past 63 characters; annotations are not).
ANNOTATION_TARGET = "dynamiclora.io/target-tier"
ANNOTATION_INPUTS = "dynamiclora.io/inputs"  # a consolidation Job's input tiers, comma-separated

MAX_LABEL = 63  # a DNS label, a label value, a Job name (it becomes the pods' job-name label)
# A StatefulSet's pods carry "controller-revision-hash: <name>-<10 chars>", a label value (<= 63).
MAX_STATEFULSET = 52
MAX_SUBDOMAIN = 253  # names of custom resources (LoRATier)
# Swarm names are label values (dynamiclora.io/swarm) and the start of their Service's name.

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RFC1035_LABEL = re.compile(SWARM_NAME_PATTERN)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]")


def base_labels(component: str) -> dict[str, str]:
    """Labels every child carries."""
    return {
        "app.kubernetes.io/name": "dynamiclora",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        LABEL_COMPONENT: component,
    }


def short_hash(*parts: str, n: int = 6) -> str:
    """A stable short hash (for names that must stay within 63 characters)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def is_dns_label(name: str, limit: int = MAX_LABEL) -> bool:
    """Whether ``name`` is an RFC 1123 DNS label of at most ``limit`` characters."""
    return 0 < len(name) <= limit and _DNS_LABEL.match(name) is not None


def is_rfc1035_label(name: str, limit: int = MAX_LABEL) -> bool:
    """Whether ``name`` is an RFC 1035 label (a Service name): a DNS label starting with a letter."""
    return 0 < len(name) <= limit and _RFC1035_LABEL.match(name) is not None


def is_label_value(value: str) -> bool:
    """Whether ``value`` is a valid Kubernetes label value."""
    return len(value) <= MAX_LABEL and _LABEL_VALUE.match(value) is not None


def _shorten(name: str, clean: str, limit: int, strip: str) -> str:
    """``clean`` cut to fit ``limit`` with "-<hash of name>" appended."""
    h = short_hash(name)
    head = clean[: limit - len(h) - 1].strip(strip)
    return f"{head}-{h}" if head else f"h{h}"


def dns_name(*parts: str, limit: int = MAX_LABEL) -> str:
    """Join parts with '-' into a DNS label of at most ``limit`` characters.

    Characters a label may not hold (dots of DNS subdomains, upper case, ...) become '-'. When the name
    had to change (invalid characters or too long) it is cut and ends in a hash of the full joined name,
    so distinct inputs keep distinct names; a valid name within ``limit`` is returned unchanged.
    """
    name = "-".join(p for p in parts if p)
    if is_dns_label(name, limit):
        return name
    clean = _NOT_IN_LABEL.sub("-", name.lower())
    return _shorten(name, clean, limit, "-")


def label_value(value: str) -> str:
    """``value`` as a label value: unchanged when valid, else cut to 63 characters ending in its hash."""
    if is_label_value(value):
        return value
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", value)
    return _shorten(value, clean, MAX_LABEL, "-_.")


def swarm_name_problem(name: str) -> str | None:
    """Why a Swarm cannot be called ``name`` (its Service, StatefulSet and labels derive from it), or None.

    The API server enforces the same rule with a CEL rule on ``metadata.name``; this is the operator's
    check for Swarms created before that rule existed.
    """
    if len(name) > MAX_SWARM_NAME:
        return f"is {len(name)} characters long; a Swarm name is at most {MAX_SWARM_NAME} (it is a label value)"
    if not _RFC1035_LABEL.match(name):
        return ("must be a DNS label starting with a letter (lowercase letters, digits and '-'; no dots): "
                "it names the Swarm's Service")  # fmt: skip
    return None


def inference_name(swarm: str) -> str:
    """StatefulSet and headless Service of a swarm's vLLM pods."""
    return dns_name(swarm, "vllm", limit=MAX_STATEFULSET)  # pods add "-<ordinal>" and a revision-hash label


def operator_key_secret(swarm: str) -> str:
    """Secret holding the key only the operator presents to the swarm's vLLM pods (adapter management)."""
    return f"{inference_name(swarm)}-operator-key"


def client_key_secret(swarm: str) -> str:
    """Secret holding the generated key clients present for inference (when the spec names none)."""
    return f"{inference_name(swarm)}-client-key"


def guard_config_map(swarm: str) -> str:
    """ConfigMap holding the guard middleware mounted into the swarm's vLLM containers."""
    return f"{inference_name(swarm)}-guard"


def agent_tier_name(swarm: str, agent: str, level: TierLevel | str) -> str:
    """LoRATier of one per-agent level.

    Not injective on its own ("a-b"/"c" and "a"/"b-c" give the same name): the Swarm reconcile refuses
    to take over a tier another Swarm owns.
    """
    return dns_name(swarm, agent, str(level), limit=MAX_SUBDOMAIN)


def served_adapter_name(swarm: str, agent: str) -> str:
    """The stable vLLM model name clients use to talk to an agent (not a Kubernetes name)."""
    return f"{swarm}-{agent}"


def agent_service_name(swarm: str, agent: str) -> str:
    """The agent's Service and EndpointSlice (``spec.inference.placement.agentServices``): ``<swarm>-<agent>``
    like its model name, cut with a hash when longer than a DNS label."""
    return dns_name(swarm, agent)


def training_job_name(tier: str, version: int, attempt: int = 0) -> str:
    """Deterministic: one Job per (tier, target version, retry), so a restarted operator finds it again."""
    return dns_name(tier, "train", f"v{version}", f"r{attempt}" if attempt else "")


def consolidation_job_name(policy: str, target_tier: str, seq: int) -> str:
    """Deterministic name of the seq-th consolidation into ``target_tier`` by ``policy``."""
    return dns_name("mig", policy, target_tier, f"{seq}")


def compose_job_name(swarm: str, keys: list[str]) -> str:
    """Deterministic: one Job per set of stacks to compose, so a pass finds the Job the last one created."""
    return dns_name(swarm, "compose", short_hash(*sorted(keys), n=10))


def volume_name(prefix: str, name: str) -> str:
    """A pod volume's name (a DNS label) derived from e.g. a PVC's name (a DNS subdomain)."""
    return dns_name(prefix, name)
