"""pytest fixtures shared by the test suites, registered as plugins by the repository's conftest.py."""
