"""Perturbation recipes (harness.recipes): each builds a perturbation that restores bit-exactly, with a JSON
description; one fallback where nothing is detected; the random control avoids the super weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.errors import HarnessError, UnknownNameError
from harness.faults import FaultSite, uniform_sites
from harness.fingerprint import changed, fingerprint
from harness.recipes import RECIPES, Subject, prepare, random_control_sites, super_weight_sites


@pytest.fixture(scope="module")
def detection(model, nothing):
    """A detection with two sites: the largest weight of each block's down projection (the candidate's fields)."""
    sites = []
    for layer, block in enumerate(model.model.layers):
        w = block.mlp.down_proj.weight
        row, col = divmod(int(w.abs().argmax()), w.shape[1])
        param = f"model.layers.{layer}.mlp.down_proj.weight"
        sites.append(dataclasses.replace(nothing.candidate, layer=layer, param=param, row=row, col=col,
                                         value=float(w[row, col])))
    return dataclasses.replace(nothing, sites=tuple(sites), id="")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_changes_the_model_and_restores_it_bit_exactly(model, detection, name):
    sites = detection.fault_sites()
    before = fingerprint(model)
    prepared = prepare(name, Subject(model, detection, sites=sites, generator=gen()))
    with prepared.perturbation:
        assert changed(before, fingerprint(model)), f"{name} changed nothing"
    assert not changed(before, fingerprint(model))
    json.dumps(prepared.description)
    assert prepared.sites or "matrices" in RECIPES.tags(name)
    assert all(isinstance(s, FaultSite) for s in prepared.sites)


def test_super_weight_descriptions(model, detection):
    described = detection.describe()
    subject = Subject(model, detection)
    assert prepare("zero_super_weights", subject).description == {"kind": "zero", "target": "super_weights",
                                                                   **described}
    top = prepare("zero_top_super_weight", subject)
    assert top.description == {"kind": "zero", "target": "top_super_weight", **described, "count": 1}
    assert top.sites == tuple(detection.fault_sites()[:1])
    row_mean = prepare("row_mean_super_weights", subject)
    assert row_mean.description == {"kind": "row_mean", "target": "super_weights", **described}
    with row_mean.perturbation:
        for s in detection.sites:
            w = model.get_parameter(s.param)
            assert float(w[s.row, s.col]) != s.value
    others = prepare("zero_largest_others", subject, count=50)
    assert others.description == {"kind": "zero", "target": "largest_others", "count": 50,
                                  "matrices": [detection.sites[0].param], "detection": detection.id}
    assert not set(others.sites) & set(detection.fault_sites())


def test_no_super_weight_falls_back_to_the_candidate_once(model, nothing):
    sites, target = super_weight_sites(nothing)
    assert sites == [nothing.candidate.site] and target == "candidate"
    for name in ("zero_super_weights", "zero_top_super_weight", "row_mean_super_weights"):
        d = prepare(name, Subject(model, nothing)).description
        assert d["target"] == "candidate" and d["count"] == 1 and d["detection"] == nothing.id
    with pytest.raises(HarnessError, match="no candidate"):
        super_weight_sites(dataclasses.replace(nothing, candidate=None))


def test_random_control_draws_as_many_weights_of_the_same_matrices_without_the_super_weights(model, detection):
    sites = detection.fault_sites()
    drawn = random_control_sites(model, detection, gen(3))
    assert len(drawn) == len(sites) and not set(drawn) & set(sites)
    assert {s.param for s in drawn} <= {s.param for s in sites}
    assert drawn == random_control_sites(model, detection, gen(3))
    # where no super weight is hit, the draw is a plain uniform draw of that many weights
    plain = [FaultSite(s.param, s.index) for s in uniform_sites(model, sorted({s.param for s in sites}), len(sites),
                                                                generator=gen(3))]
    assert drawn == plain
    # a drawn super weight is skipped, not zeroed twice
    first = plain[0]
    hit = dataclasses.replace(detection, sites=(dataclasses.replace(detection.sites[0], param=first.param,
                                                                    row=first.index[0], col=first.index[1]),
                                                *detection.sites[1:]), id="")
    assert first not in random_control_sites(model, hit, gen(3))
    d = prepare("zero_random", Subject(model, detection, generator=gen(3))).description
    assert d == {"kind": "zero", "target": "random", "count": len(sites), "matrices": "super weights'",
                 "detection": detection.id}


def test_actions_are_tagged_and_act_on_the_given_sites(model):
    assert RECIPES.names(tag="action") == ["zero", "noise", "exponent_lsb"]
    sites = [FaultSite("model.layers.0.mlp.up_proj.weight", (1, 2)), FaultSite("model.layers.1.self_attn.q_proj.weight",
                                                                                 (0, 0))]
    old = [float(model.get_parameter(s.param)[s.index]) for s in sites]
    with prepare("exponent_lsb", Subject(model, sites=sites)).perturbation:
        new = [float(model.get_parameter(s.param)[s.index]) for s in sites]
    assert all(n in (2 * o, o / 2) for n, o in zip(new, old, strict=True))
    assert prepare("noise", Subject(model, sites=sites, generator=gen())).description == {"action": "noise",
                                                                                          "count": 2}


def test_unknown_recipe_and_missing_inputs(model, detection):
    with pytest.raises(UnknownNameError, match="Did you mean 'zero_random'"):
        prepare("zero_randm", Subject(model, detection))
    with pytest.raises(HarnessError, match="needs the super-weight detection"):
        prepare("zero_super_weights", Subject(model))
    with pytest.raises(HarnessError, match="needs a seeded generator"):
        prepare("zero_random", Subject(model, detection))
    with pytest.raises(HarnessError, match="needs sites"):
        prepare("zero", Subject(model, detection))


def test_std_noise_linear_is_seeded_and_scaled_by_each_matrix_std(model):
    def noisy(seed: int, level: float) -> torch.Tensor:
        prepared = prepare("std_noise_linear", Subject(model, generator=gen(seed)), level=level)
        with prepared.perturbation:
            return model.get_parameter("model.layers.0.mlp.up_proj.weight").clone()

    w = model.get_parameter("model.layers.0.mlp.up_proj.weight").clone()
    assert torch.equal(noisy(1, 0.1), noisy(1, 0.1)) and not torch.equal(noisy(1, 0.1), noisy(2, 0.1))
    assert float((noisy(1, 0.1) - w).std()) == pytest.approx(0.1 * float(w.std()), rel=0.2)
    prepared = prepare("std_noise_linear", Subject(model, generator=gen()), level=0.1)
    assert prepared.sites == () and prepared.description == {"kind": "noise", "scale": "std", "level": 0.1,
                                                             "components": "linear"}
    assert prepared.perturbation.describe()["scale"] == "std"
