"""The detectors (``harness.detection``): each fires on a flipped weight and not on the clean model, restores
nothing, states its cost; the registry and its option errors; the detection cells' statistics and claims' evidence."""

from __future__ import annotations

import math

import pytest
import torch

from harness.campaign.sizing import Sizing
from harness.claims import Comparison
from harness.detection import DETECTORS, RangeCheck, TensorChecksums, TestVectorAudit, make_detector
from harness.detection.cells import MULTI_BIT, PATTERNS, PRESETS, SINGLE_BIT, grid
from harness.detection.outcomes import HARM_RATIO, CellResult, FlipOutcome, Sample
from harness.errors import HarnessError, UnknownNameError
from harness.faults import FaultSite, flip_bits
from harness.fingerprint import fingerprint
from harness.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

PARAM = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def calibrated(tiny):
    return {name: make_detector(name).calibrate(tiny.model) for name in DETECTORS.names()}


def exp_msb_site(model) -> FaultSite:
    """The exponent MSB of a small weight: the flip multiplies it by 2^128 (out of range, output changed)."""
    w = model.get_parameter(PARAM).detach()
    flat = int((w.abs() < 1).float().reshape(-1).argmax())
    return FaultSite(PARAM, tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), w.shape)), (30,))


def test_registry_lists_the_detectors():
    assert {"audit", "checksum", "range"} <= set(DETECTORS.names())
    assert isinstance(make_detector("audit"), TestVectorAudit)
    assert isinstance(make_detector("checksum"), TensorChecksums)
    assert isinstance(make_detector("range"), RangeCheck)


@pytest.mark.parametrize("name", ["audit", "checksum", "range"])
def test_silent_on_the_clean_model(tiny, calibrated, name):
    assert not calibrated[name].fired(tiny.model)
    assert not calibrated[name].fired(tiny.model, batch=3)  # another batch size: still silent


@pytest.mark.parametrize("name", ["audit", "checksum", "range"])
def test_fires_on_a_flipped_weight_and_restores_nothing(tiny, calibrated, name):
    model = tiny.model
    with flip_bits(model, [exp_msb_site(model)]):
        flipped = fingerprint(model)
        assert calibrated[name].fired(model)
        assert fingerprint(model) == flipped  # the flip is still there: detecting is not repairing
    assert not calibrated[name].fired(model)


def test_checksum_sees_a_mantissa_lsb_flip_the_range_check_does_not(tiny, calibrated):
    model = tiny.model
    site = FaultSite(PARAM, exp_msb_site(model).index, (0,))
    with flip_bits(model, [site]):
        assert calibrated["checksum"].fired(model)
        assert calibrated["checksum"].changed(model) == [PARAM]
        assert not calibrated["range"].fired(model)


def test_range_check_fires_on_nan(tiny, calibrated):
    model = tiny.model
    site = exp_msb_site(model)
    w = model.get_parameter(PARAM).detach()
    code = int(w[site.index].reshape(1).view(torch.int32))
    diff = code ^ 0x7FC00000  # the bits that make it a quiet NaN
    nan = FaultSite(PARAM, site.index, tuple(b for b in range(32) if (diff >> b) & 1))
    with flip_bits(model, [nan]):
        assert math.isnan(float(model.get_parameter(PARAM)[site.index]))
        assert calibrated["range"].outside(model) == PARAM


def test_costs(tiny, calibrated):
    audit, checksum, range_ = (calibrated[n].cost() for n in ("audit", "checksum", "range"))
    vocab, width = tiny.model.get_input_embeddings().weight.shape
    # tiny-llama's embedding is untied: the logits' references and the embedding audit's one row
    assert (audit.forward_tokens, audit.weight_reads, audit.reference_bytes) == (16, 0, 16 * vocab * 4 + width * 4)
    assert checksum.forward_tokens == 0 and checksum.weight_reads == 1 and 0 < checksum.reference_bytes < 10_000
    assert range_.weight_reads == 1 and range_.reference_bytes == 8 * len(list(tiny.model.parameters()))


def test_audit_on_chosen_blocks(tiny):
    model = tiny.model
    audit = make_detector("audit", layers=[0, -1], tokens=4).calibrate(model)
    assert audit.cost().forward_tokens == 4 and audit.error(model) == 0.0
    with flip_bits(model, [exp_msb_site(model)]):
        assert audit.fired(model)


@pytest.mark.parametrize(("options", "words"), [
    ({"tokens": 0}, "tokens must be an integer >= 1"),
    ({"tol": -1.0}, "tol must be a finite number > 0"),
    ({"layers": ["last"]}, "layers must be block indices, 'logits' or 'embedding'"),
    ({"window": 3}, "allowed: tokens, layers, tol, seed"),
])
def test_bad_audit_options_say_what_is_allowed(options, words):
    with pytest.raises(HarnessError, match=words):
        make_detector("audit", **options)


def test_bad_names_and_states(tiny):
    with pytest.raises(UnknownNameError, match="Did you mean 'audit'"):
        make_detector("audti")
    with pytest.raises(HarnessError, match="allowed: none"):
        make_detector("checksum", k=3)
    with pytest.raises(HarnessError, match="out of range for a model of"):
        make_detector("audit", layers=[99]).calibrate(tiny.model)
    with pytest.raises(HarnessError, match="not calibrated"):
        make_detector("range").fired(tiny.model)


# -- the cells' statistics ------------------------------------------------------------------------------------------


def flip(ratio: float, collapsed: bool = False, **fired: bool) -> FlipOutcome:
    return FlipOutcome(0, 0, (FaultSite(PARAM, (0, 0), (30,)),), ratio, collapsed,
                       {"audit": False, "checksum": True, "range": False, **fired})


def cell(pattern: str, *flips: FlipOutcome) -> CellResult:
    sizing = Sizing("fixed", len(flips), 0, (0.0, 1.0), 0.95)
    return CellResult(pattern, pattern in PATTERNS and PATTERNS[pattern].single_bit, "fp32", "float32", flips, sizing)


def test_grid_and_patterns():
    assert [c.id for c in grid("quick")] == [f"{p}-native" for p in PATTERNS]
    assert {c.dtype for c in grid("full")} == set(PRESETS["full"].dtypes)
    assert {c.pattern for c in grid("full") if c.dtype == "int8"} == set(PATTERNS) - {"exp_msb", "exponent"}
    assert all(p.single_bit for p in SINGLE_BIT) and not any(p.single_bit for p in MULTI_BIT)


def test_harm_rule_and_rates():
    c = cell("exp_msb", flip(math.inf, True, audit=True, range=True), flip(HARM_RATIO), flip(1.0))
    assert [f.harmful for f in c.flips] == [True, True, False]
    assert (c.rate("audit", "harmful").hits, c.rate("audit", "harmful").n) == (1, 2)
    assert c.rate("checksum", "all").value == 1.0
    rows = c.rows()
    assert [r.metric for r in rows].count("detection_rate") == 2 * len(DETECTORS)
    assert sum(r.metric == "ppl_ratio" for r in rows) == 3


def test_claims_evidence_and_not_applicable():
    quiet = Sample((cell("sign", flip(1.0), flip(1.0)),))
    assert isinstance(quiet.every("audit", "collapsed"), str)  # no collapse drawn: not applicable, never a pass
    assert isinstance(quiet.range_vs_exp_msb(), str)
    assert quiet.every("checksum", "all").holds
    missed = Sample((cell("exp_msb", flip(math.inf, True, audit=True, range=True), flip(math.inf, True)),))
    every = missed.every("audit", "collapsed")
    assert isinstance(every, Comparison) and not every.holds and every.detail["missed"] == 1
    assert not missed.range_vs_exp_msb().holds  # 1 of 2 harmful caught, both exp-MSB
    mixed = Sample((cell("exp_msb", flip(20.0, range=True)), cell("sign", flip(2.0))))
    assert mixed.range_vs_exp_msb().holds  # 1 caught >= 1 exp-MSB of 2 harmful


def test_cells_measure_on_a_tiny_model_and_restore_it(tiny):
    from harness.campaign import clean_baseline
    from harness.detection.cells import DetectionCell, DetectionCells, DetectionPreset
    from harness.models.copies import DtypeCopy

    preset = DetectionPreset(("native",), trials=3, multi_trials=1, windows=1, clean_repeats=1, other_batch=2)
    vocab = tiny.model.get_input_embeddings().num_embeddings
    windows = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    cells = DetectionCells(tiny, windows, preset=preset, seed=0, trials=lambda name, count: count,
                           copies=DtypeCopy(),
                           clean=lambda name, model, windows: clean_baseline(model, windows, keep_blocks=True))
    before = fingerprint(tiny.model)
    exp_msb = cells.measure(DetectionCell("exp_msb"))
    multi = cells.measure(DetectionCell("one_bit_eight_weights"))
    assert fingerprint(tiny.model) == before
    assert (exp_msb.sizing.trials, len(multi.flips), len(multi.flips[0].sites)) == (3, 1, 8)
    assert all(f.fired["checksum"] for f in exp_msb.flips + multi.flips)
    assert cells.measure(DetectionCell("exp_msb")) is exp_msb  # measured once
    checks = cells.clean_checks("native")
    assert set(checks) == set(DETECTORS.names()) and all(c.checks == 2 and c.alarms == 0 for c in checks.values())
    assert all(c.overhead > 0 for c in checks.values())


def test_int8_cells_flip_the_codes_of_the_quantized_model_and_swap_it_back(tiny):
    from harness.campaign import clean_baseline
    from harness.detection.cells import INT8, INT8_TARGET, DetectionCell, DetectionCells, DetectionPreset
    from harness.models.copies import DtypeCopy

    preset = DetectionPreset(("native", INT8), trials=3, multi_trials=1, windows=1, clean_repeats=1, other_batch=2)
    cleans = []

    def clean(name, model, windows):
        cleans.append(sorted({str(p.dtype) for p in model.parameters()}))
        return clean_baseline(model, windows, keep_blocks=True)

    vocab = tiny.model.get_input_embeddings().num_embeddings
    windows = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    cells = DetectionCells(tiny, windows, preset=preset, seed=0, trials=lambda name, count: count,
                           copies=DtypeCopy(), clean=clean)
    before = fingerprint(tiny.model)
    assert "no exp_msb bits" in DetectionCell("exp_msb", INT8).skip_reason(tiny)
    assert DetectionCell("exponent", INT8).skip_reason(tiny) and DetectionCell("sign", INT8).skip_reason(tiny) is None
    sign = cells.measure(DetectionCell("sign", INT8))
    assert fingerprint(tiny.model) == before  # the float modules are back, bit for bit
    assert cleans == [["torch.float32", "torch.int8"]]  # the int8 model's own clean baseline
    assert (sign.dtype, sign.torch_dtype, sign.perturbation["target"]) == ("int8", "int8", INT8_TARGET)
    codes = {n for n, m in tiny.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all(s.param.removesuffix(".weight") in codes and s.bits == (7,) for f in sign.flips for s in f.sites)
    assert all(f.fired["checksum"] for f in sign.flips)
    sample = cells.sample(INT8)
    assert {c.pattern for c in sample.cells} == set(PATTERNS) - {"exp_msb", "exponent"}
    assert "no exp-MSB flips" in sample.range_vs_exp_msb()  # not applicable, never a pass with 0 >= 0
    checks = cells.clean_checks(INT8)
    assert all(c.alarms == 0 and c.dtype == "int8" for c in checks.values())
    assert cells.recovery(INT8).startswith("int8 codes are not in the weights files")
    assert fingerprint(tiny.model) == before


# -- recovery: restore the flagged tensors from the weights files --------------------------------------------------


def test_checksum_flags_exactly_the_flipped_tensor(tiny, calibrated):
    model, checksum = tiny.model, calibrated["checksum"]
    assert checksum.flagged(model) == []
    with flip_bits(model, [exp_msb_site(model)]):
        assert checksum.flagged(model) == [PARAM]
        assert checksum.fired(model)
    assert checksum.flagged(model) == [] and not checksum.fired(model)


@pytest.fixture
def saved(tiny, tmp_path):
    """The tiny model saved with ``save_pretrained`` and loaded from there (a model with weights files on disk)."""
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    return load_model(tmp_path)


def test_recovery_restores_the_flagged_tensor_bit_exactly(saved, tmp_path):
    from harness.detection.recovery import measure_recovery, weights_dir

    assert weights_dir(saved) == tmp_path
    clean = fingerprint(saved.model)
    checksum = make_detector("checksum").calibrate(saved.model)
    site = exp_msb_site(saved.model)
    reloads = []
    got = measure_recovery(saved, checksum, [site], lambda: reloads.append(1) or load_model(tmp_path))
    assert got.detected and got.flagged == (PARAM,) and not got.fired_after and got.left_changed == ()
    assert got.exact().holds and got.reload_changed == () and reloads == [1]
    size = saved.model.get_parameter(PARAM)
    assert got.bytes_read == size.numel() * size.element_size()  # only the flagged tensor was read
    assert got.ratio == got.reload_seconds / (got.locate_seconds + got.restore_seconds) > 0
    (row,) = got.rows()
    assert row.metric == "recovery_ratio" and row.extra["tensors_restored"] == 1 and row.extra["restored"] == [PARAM]
    assert fingerprint(saved.model) == clean


def test_recovery_from_other_weights_fails_the_claim(saved, tmp_path):
    from harness.detection.recovery import measure_recovery

    clean = fingerprint(saved.model)
    checksum = make_detector("checksum").calibrate(saved.model)
    with torch.no_grad():  # the files on disk now hold other values of the flipped tensor
        weight = saved.model.get_parameter(PARAM)
        kept = weight.clone()
        weight.add_(1.0)
        saved.model.save_pretrained(tmp_path)
        weight.copy_(kept)
    assert fingerprint(saved.model) == clean
    got = measure_recovery(saved, checksum, [exp_msb_site(saved.model)], lambda: load_model(tmp_path))
    evidence = got.exact()
    assert not evidence.holds and got.left_changed == (PARAM,) and got.fired_after
    assert got.reload_changed == (PARAM,)
    assert fingerprint(saved.model) == clean  # the flip was undone on exit all the same


def test_recovery_not_applicable_without_weights_files(tiny, calibrated, saved, tmp_path):
    from harness.detection.recovery import measure_recovery, restore

    why = measure_recovery(tiny, calibrated["checksum"], [exp_msb_site(tiny.model)], lambda: pytest.fail("reloaded"))
    assert isinstance(why, str) and "random weights" in why and "no weights file" in why
    with pytest.raises(HarnessError, match=r"cannot restore 'model\.nothing'"):
        restore(saved.model, ["model.nothing"], tmp_path)


def test_recovery_of_the_bf16_copy_restores_it_from_the_fp32_files(saved, tmp_path):
    """The session's bf16 copy is restored from the same fp32 files, cast as the copy was loaded: bit for bit."""
    from harness.detection.cells import DetectionCells, DetectionPreset
    from harness.models.copies import DtypeCopy

    preset = DetectionPreset(("native", "bf16"), trials=1, multi_trials=1, windows=1, clean_repeats=1, other_batch=2)
    copies, reloads = DtypeCopy(), []

    def reload(loaded):
        reloads.append(loaded.dtype)
        return load_model(tmp_path, dtype="bf16" if loaded.dtype == torch.bfloat16 else "fp32")

    cells = DetectionCells(saved, torch.zeros(1, 8, dtype=torch.long), preset=preset, seed=0, clean=None,
                           trials=lambda name, count: count, copies=copies, reload=reload)
    got = cells.recovery("bf16")
    assert got.dtype == "bf16" and got.exact().holds and got.detected and reloads == [torch.bfloat16]
    assert cells.recovery("bf16") is got and cells.recovery("int8").startswith("int8 codes")


def test_the_audit_sees_an_untied_embedding_row_its_test_vector_lacks():
    """An exp-MSB flip in a row of gpt-neox's untied ``embed_in`` that the 16-token vector does not use: the logits
    audit alone misses it (the flip collapses the model wherever that token occurs); the embedding audit fires."""
    neox = load_model("tiny-gpt-neox").model
    logits_only = make_detector("audit", layers=("logits",)).calibrate(neox)
    audit = make_detector("audit").calibrate(neox)
    row = next(r for r in range(neox.config.vocab_size) if r not in set(audit._ids.reshape(-1).tolist()))
    site = FaultSite("gpt_neox.embed_in.weight", (row, 0), (30,))
    with flip_bits(neox, [site]):
        assert not logits_only.fired(neox) and audit.fired(neox)
    assert not audit.fired(neox) and not audit.fired(neox, batch=2)
    width = neox.config.hidden_size
    assert audit.cost().reference_bytes == logits_only.cost().reference_bytes + 4 * width


def test_the_embedding_audit_is_skipped_where_the_head_reads_every_row(tiny):
    tied = tiny.model.get_output_embeddings().weight is tiny.model.get_input_embeddings().weight
    audit = make_detector("audit").calibrate(tiny.model)
    assert ("embedding" in audit._refs) is not tied
    alone = make_detector("audit", layers=("embedding",)).calibrate(load_model("tiny-gpt-neox").model)
    assert alone.cost().forward_tokens == 0 and set(alone._refs) == {"embedding"}
