"""Repository-wide pytest configuration: shared fixtures are registered as plugins here."""

pytest_plugins = [
    "dynamiclora.localcluster.pytest_plugin",
    "dynamiclora.storage.testing",
    "dynamiclora.serving.testing",
]
