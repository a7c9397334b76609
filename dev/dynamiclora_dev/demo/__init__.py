"""The local end-to-end demo (``dynamiclora-dev demo``) and the scenario the e2e tests share with it."""
