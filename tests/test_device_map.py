"""Models larger than one device, on the CPU: a tiny llama split by a ``max_memory`` map between CPU
memory and disk, and a block offloaded to CPU memory the way a GPU device map offloads its ``cpu``
modules. The split model's perplexity is the normal load's; faults on offloaded and on resident
parameters change the output and restore bit-exactly; a parameter on disk is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.campaign import Campaign, clean_baseline
from harness.data import load_corpus, token_windows
from harness.errors import HarnessError
from harness.faults import FaultSite, ablate, add_noise, find_tensor, flip_bits, layout, quantize_int8
from harness.fingerprint import fingerprint
from harness.metrics import evaluate
from harness.models import load_model
from harness.models.device import parse_max_memory
from harness.models.tiny import byte_tokenizer
from harness.pruning.prune import prune
from harness.scoring import score

pytest_plugins = ["pytester"]

# tiny-llama is 429,312 bytes in fp32; accelerate keeps room in CPU memory for its largest block
# (147,968 B), so 400,000 B hold the embeddings and block 0 and put block 1, the norm and the head on disk.
SPLIT_MEMORY = "cpu=400000"
RESIDENT = "model.layers.0.mlp.down_proj.weight"  # in CPU memory, an ordinary parameter
ON_DISK = "model.layers.1.mlp.down_proj.weight"  # read from the safetensors file at every forward
OFFLOADED = "model.layers.1.mlp.down_proj.weight"  # in the `offloaded` model: meta, value in the hook
EXPONENT_MSB = 30  # float32: flipping it turns a weight of magnitude < 2 into one of ~1e38


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return token_windows(byte_tokenizer(), load_corpus().eval_docs, 48, 4)


@pytest.fixture(scope="module")
def plain():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return load_model("tiny-llama", device_map="sequential", max_memory=SPLIT_MEMORY,
                      offload_dir=tmp_path_factory.mktemp("offload"))


@pytest.fixture
def offloaded():
    """tiny-llama with block 1 offloaded to CPU memory as a GPU device map offloads its ``cpu`` modules:
    parameters on ``meta``, values in an ``OffloadedWeightsLoader`` behind the block's accelerate hooks,
    moved to the execution device (here the CPU itself) at every forward."""
    from accelerate import cpu_offload
    from accelerate.utils import OffloadedWeightsLoader

    lm = load_model("tiny-llama")
    block = lm.model.model.layers[1]
    cpu_offload(block, execution_device=torch.device("cpu"),
                state_dict=OffloadedWeightsLoader(state_dict=dict(block.state_dict())))
    assert lm.model.get_parameter(OFFLOADED).is_meta
    return lm


def _logits(model, windows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=windows, use_cache=False).logits


def _bits(model, name: str) -> np.ndarray:
    t = find_tensor(model, name)
    return t.detach().view(layout(t.dtype).int_dtype).numpy().copy()


def _changes_and_restores(lm, windows: torch.Tensor, name: str, perturbation) -> None:
    """``perturbation`` changes the logits while applied; afterwards logits and stored bits are as before."""
    before, bits, prints = _logits(lm.model, windows), _bits(lm.model, name), fingerprint(lm.model)
    with perturbation:
        assert not torch.equal(_logits(lm.model, windows), before)
    assert torch.equal(_logits(lm.model, windows), before)
    np.testing.assert_array_equal(_bits(lm.model, name), bits)
    assert fingerprint(lm.model) == prints


def test_split_by_max_memory_has_the_normal_perplexity(plain, split, windows):
    placement = split.model.hf_device_map
    assert placement["model.layers.0"] == "cpu" and placement["model.layers.1"] == "disk", placement
    assert split.model.get_parameter(ON_DISK).is_meta and not split.model.get_parameter(RESIDENT).is_meta
    assert split.device == torch.device("cpu")
    torch.testing.assert_close(_logits(split.model, windows), _logits(plain.model, windows))
    ppl, normal = evaluate(split.model, windows).perplexity, evaluate(plain.model, windows).perplexity
    assert ppl == pytest.approx(normal, rel=1e-6)


def test_fault_on_a_parameter_offloaded_to_memory_restores_bit_exactly(offloaded, windows):
    model = offloaded.model
    value = find_tensor(model, OFFLOADED)
    assert not value.is_meta  # the tensor the hook moves in at each forward, not the placeholder
    flip = flip_bits(model, [FaultSite(OFFLOADED, (3, 5), (EXPONENT_MSB,)), FaultSite(OFFLOADED, (0, 7), (31,))])
    _changes_and_restores(offloaded, windows, OFFLOADED, flip)
    _changes_and_restores(offloaded, windows, OFFLOADED, ablate(model, OFFLOADED, "zero"))
    _changes_and_restores(offloaded, windows, OFFLOADED,
                          add_noise(model, OFFLOADED, 0.1, generator=torch.Generator().manual_seed(0)))
    pruning = prune(offloaded, score(offloaded, "magnitude", layers=[1]), 0.5)
    _changes_and_restores(offloaded, windows, OFFLOADED, pruning)


def test_fault_on_a_resident_parameter_of_a_split_model_restores_bit_exactly(split, windows):
    flip = flip_bits(split.model, [FaultSite(RESIDENT, (3, 5), (EXPONENT_MSB,))])
    _changes_and_restores(split, windows, RESIDENT, flip)


def test_fault_on_a_parameter_offloaded_to_disk_is_refused_in_one_line(split):
    prints = fingerprint(split.model)
    for build in (lambda: flip_bits(split.model, [FaultSite(ON_DISK, (3, 5), (EXPONENT_MSB,))]),
                  lambda: ablate(split.model, ON_DISK, "zero").apply(),
                  lambda: quantize_int8(split.model, [ON_DISK.removesuffix(".weight")])):
        with pytest.raises(HarnessError) as err:
            build()
        assert "\n" not in str(err.value)
    with pytest.raises(HarnessError, match=f"{ON_DISK} is offloaded to disk by the device map"):
        find_tensor(split.model, ON_DISK)
    assert fingerprint(split.model) == prints


def test_campaign_trial_on_an_offloaded_model_equals_the_plain_one(plain, offloaded, windows):
    site = [FaultSite(OFFLOADED, (3, 5), (EXPONENT_MSB - 1,))]
    trials = []
    for lm in (plain, offloaded):
        clean = clean_baseline(lm.model, windows, keep_blocks=True, batch_size=2)
        trials.append(Campaign(lm.model, windows, clean).trial(flip_bits(lm.model, site)))
    assert trials[0].start_block == trials[1].start_block == 1
    assert trials[1].result.perplexity == pytest.approx(trials[0].result.perplexity, rel=1e-6)
    assert trials[1].ratio != 1.0


@pytest.mark.parametrize("text, words", [
    ("cpu", "bad max-memory entry 'cpu'"),
    ("cpu=lots", "bad max-memory size 'lots' for cpu"),
    ("gpu0=1GiB", "unknown max-memory device 'gpu0'"),
    ("0=1GiB,0=2GiB", "names 0 twice"),
    ("", "expected a comma list of max-memory entries"),
])
def test_bad_max_memory_is_one_line_saying_what_is_allowed(text, words):
    with pytest.raises(HarnessError, match=words) as err:
        parse_max_memory(text)
    assert "\n" not in str(err.value) and "DEVICE=SIZE" in str(err.value)


def test_max_memory_grammar():
    assert parse_max_memory("0=20GiB, cuda:1=1.5GB ,cpu=64GiB,disk=1000") == {
        0: 20 * 2**30, 1: 1_500_000_000, "cpu": 64 * 2**30, "disk": 1000}
    with pytest.raises(HarnessError, match="also give device_map"):
        load_model("tiny-llama", max_memory="cpu=1GiB")
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="names GPU 0, but this machine has no visible GPU"):
            load_model("tiny-llama", device_map="auto", max_memory="0=1GiB,cpu=1GiB")


def test_options_reach_the_loader_and_bad_ones_are_usage_errors(pytester: pytest.Pytester):
    pytester.makepyfile(test_split="""
        def test_split(lm, clean):
            assert lm.model.hf_device_map["model.layers.1"] == "disk"
            assert clean.result.perplexity > 1
    """)
    run = lambda *args: pytester.runpytest_inprocess(  # noqa: E731
        "-p", "fixtures.plugin", "-p", "no:cacheprovider", "--results-dir", str(pytester.path / "res"),
        "--model", "tiny-llama", "--eval-tokens", "64", "--window", "32", *args)
    run("--device-map", "sequential", "--max-memory", SPLIT_MEMORY,
        "--offload-dir", str(pytester.path / "offload")).assert_outcomes(passed=1)
    for args, message in ((("--max-memory", "cpu=lots"), "*argument --max-memory: bad max-memory size 'lots'*"),
                          (("--device-map", "everywhere"), "*argument --device-map: unknown device map 'everywhere'. "
                                                           "Known: auto, balanced, balanced_low_0, sequential*")):
        result = run(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
        assert "Traceback" not in result.stderr.str()
