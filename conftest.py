"""Root conftest: loads the esa-harness plugin (all wiring lives in fixtures/plugin.py)."""

pytest_plugins = ["fixtures.plugin", "fixtures.superweights"]
