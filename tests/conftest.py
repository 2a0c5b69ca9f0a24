"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def sample_base(tmp_path_factory) -> Path:
    """Where the report tests' sample stores live: ``$ESA_SAMPLE_STORES`` (kept between sessions: set it while
    working on the report, delete it after changing the suites), else this session's temporary directory, the
    one the xdist workers share (``reports.sample.sample_store`` builds each store once under a file lock)."""
    if os.environ.get("ESA_SAMPLE_STORES"):
        return Path(os.environ["ESA_SAMPLE_STORES"])
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: tiny models are dispatch-bound, so one thread is faster and immune
    to a busy machine (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """tiny-llama's random model, built in memory, in eval mode without gradients (a module's shared model)."""
    from harness.models import build_tiny

    return build_tiny("llama").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nothing(model):
    """The real super-weight detection of ``model``: on random weights no super weight, a candidate."""
    from harness.models import byte_tokenizer
    from harness.scoring.superweights import detect

    d = detect(model, tokenizer=byte_tokenizer(), name="tiny")
    assert not d and d.candidate is not None
    return d
