"""DynamicLoRA's development harness: never shipped in an image.

* :mod:`dynamiclora_dev.localcluster`: a hermetic control plane on loopback with a local executor;
* :mod:`dynamiclora_dev.demo`: the whole loop on it (``make demo``), shared with the e2e tests;
* :mod:`dynamiclora_dev.testing`: pytest fixtures (a loopback S3 endpoint, a vLLM CPU server);
* :mod:`dynamiclora_dev.tinymodel`: tiny Llama models built locally (nothing is downloaded).
"""
