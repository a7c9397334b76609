"""Repository-wide pytest configuration: shared fixtures are registered as plugins here."""

pytest_plugins = [
    "dynamiclora_dev.localcluster.pytest_plugin",
    "dynamiclora_dev.testing.storage",
    "dynamiclora_dev.testing.serving",
]
