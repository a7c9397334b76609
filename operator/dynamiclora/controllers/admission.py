"""Operator-side policy: what a custom resource may make the operator run or read on its author's behalf.

A CR is as good as a pod: it names images the operator runs, service accounts its pods run as, and Secrets
whose values the operator reads (and sends, for an API key) or mounts. The platform lists what is allowed
(``dynamiclora run --allowed-images/--allowed-service-accounts/--secret-label``, the chart's ``policy.*``
values); a CR outside the lists is refused with ``PolicyDenied`` before anything is created for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamiclora.api.common import Storage
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATier, TrainingTemplate
from dynamiclora.controllers.common import PolicyDenied
from dynamiclora.kube import Kube
from dynamiclora.settings import OperatorSettings


@dataclass
class References:
    """What a spec makes the operator use, each with the field that names it."""

    images: list[tuple[str, str]] = field(default_factory=list)
    service_accounts: list[tuple[str, str]] = field(default_factory=list)
    secrets: list[tuple[str, str]] = field(default_factory=list)

    def training(self, path: str, t: TrainingTemplate) -> None:
        self.images.append((f"{path}.image", t.image))
        if t.service_account_name:
            self.service_accounts.append((f"{path}.serviceAccountName", t.service_account_name))

    def storage(self, path: str, s: Storage | None) -> None:
        if s is not None and s.s3 is not None and s.s3.credentials_secret_ref is not None:
            self.secrets.append((f"{path}.s3.credentialsSecretRef", s.s3.credentials_secret_ref.name))


def swarm_references(sw: Swarm) -> References:
    refs = References(images=[("spec.inference.image", sw.spec.inference.image)])
    refs.training("spec.contextTier.training", sw.spec.context_tier.training)
    refs.storage("spec.storage", sw.spec.storage)
    if sw.spec.inference.api_key_secret_ref is not None:
        refs.secrets.append(("spec.inference.apiKeySecretRef", sw.spec.inference.api_key_secret_ref.name))
    return refs


def tier_references(tier: LoRATier) -> References:
    refs = References()
    refs.training("spec.training", tier.spec.training)
    refs.storage("spec.storage", tier.spec.storage)
    return refs


def violations(kube: Kube, ns: str, settings: OperatorSettings, refs: References) -> list[str]:
    """Every reference outside the operator's lists (empty: allowed)."""
    out: list[str] = []
    prefixes = settings.allowed_image_prefixes
    if prefixes:
        out += [f"{path}: image {image!r} is not under an allowed prefix ({', '.join(prefixes)})"
                for path, image in refs.images if not image.startswith(tuple(prefixes))]  # fmt: skip
    accounts = settings.allowed_service_account_names
    if accounts:
        out += [f"{path}: service account {name!r} is not allowed ({', '.join(accounts)})"
                for path, name in refs.service_accounts if name not in accounts]  # fmt: skip
    label = settings.required_secret_label
    if label:
        key, value = label
        for path, name in refs.secrets:
            secret = kube.get("Secret", ns, name)
            if secret is not None and (secret["metadata"].get("labels") or {}).get(key) != value:
                out.append(f"{path}: Secret {name!r} lacks the label {key}={value} that marks it for DynamicLoRA")
    return out


def admit(kube: Kube, ns: str, settings: OperatorSettings, refs: References) -> None:
    """Raise :class:`PolicyDenied` (a condition and an event, nothing created) when anything is not allowed."""
    if problems := violations(kube, ns, settings, refs):
        raise PolicyDenied("; ".join(problems))
