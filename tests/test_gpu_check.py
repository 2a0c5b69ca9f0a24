"""``benchmarks/gpu_check.py`` (``make gpu-check``) on its CPU dry path: every row of the table, bit-exact restores,
and a restore check that fails when a perturbation leaves a change behind."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from benchmarks import gpu_check


def test_dry_run_gives_every_row(tmp_path):
    plan = dataclasses.replace(gpu_check.DRY, budget_s=600.0)  # a loaded CI machine must not cut the suite runs
    rows = {r.check: r for r in gpu_check.run(plan, tmp_path)}
    for dtype in ("fp16", "bf16", "int8"):
        row = rows[f"restore {dtype}"]
        assert row.ok and row.value == "bit-exact", row
    assert rows["per-trial path (1 trial/forward)"].value.endswith("trials/s")
    assert rows["batched (2 trials/forward)"].value.endswith("trials/s")
    assert "x the per-trial path" in rows["batched (2 trials/forward)"].detail
    host = rows["host time per trial"]
    assert host.value.endswith(" ms") and "draw" in host.detail and "x a plain forward" in host.detail, host
    assert rows["peak memory (this process)"].value.endswith("GiB")
    serial, xdist = rows["smoke suite, serial"], rows["smoke suite, -n 1"]
    assert serial.ok and serial.value.endswith(" s") and "passed" in serial.detail, serial
    assert xdist.ok and (xdist.value == "n/a" or "x serial" in xdist.detail), xdist
    text = gpu_check.table(list(rows.values()))
    assert len(text.splitlines()) == len(rows) + 2 and text.splitlines()[0].split() == ["check", "value", "detail"]


def test_a_leak_is_not_bit_exact(monkeypatch):
    from harness.models import load_model

    model = load_model("tiny-llama").model
    weight = next(model.parameters())

    @contextlib.contextmanager
    def leak():
        with torch.no_grad():
            weight.view(-1)[0] += 1.0  # never undone
        yield

    monkeypatch.setattr(gpu_check, "_perturbations", lambda *_: [leak()])
    row = gpu_check.check_restore("fp32", model, torch.tensor([[1, 2, 3, 4]]), gpu_check.DRY)
    assert not row.ok and row.value == "NOT bit-exact" and "tensors differing 1" in row.detail, row


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would run the whole check")
def test_without_cuda_the_full_check_is_a_usage_error(capsys):
    assert gpu_check.main([]) == 2
    assert "--dry" in capsys.readouterr().err
