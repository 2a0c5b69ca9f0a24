"""Root conftest: loads the esa-harness plugins (fixtures/plugin.py: options, fixtures, claims; superweights.py:
the shared super-weight detection; scaleout.py: xdist devices, shards, run ids; campaign.py: progress;
resume.py: --resume; interrupt.py: SIGTERM and a full disk)."""

pytest_plugins = ["fixtures.plugin", "fixtures.superweights", "fixtures.scaleout", "fixtures.campaign",
                  "fixtures.resume", "fixtures.interrupt"]
