"""DynamicLoRA: a Kubernetes operator for hierarchical LoRA memory of LLM agents."""

__version__ = "0.1.0"

GROUP = "dynamiclora.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "dynamiclora-operator"
