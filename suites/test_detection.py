"""Fault detection: which detector catches the random bit flips that harm the model, at what cost.

Detectors (``harness.detection.DETECTORS``, calibrated on the clean model, restoring nothing): ``audit`` (one
fixed 16-token seeded test vector; the logits against the clean ones, max |diff| / rms above 1e-4 fires; an
untied input embedding table is audited too, by its output for a seeded dense mix of every token, since the
vector reaches only its own rows), ``checksum`` (a checksum per tensor over every parameter and buffer),
``range`` (each parameter's clean [min, max]). Flips: seeded, uniform over every stored weight, one bit of each
campaign bit class (sign, exp_msb, exponent, mantissa_msb, mantissa_lsb) and two multi-bit patterns; quick preset
4 flips per bit class and 2 per pattern on the model's own dtype, the harm judged on the first evaluation window;
full 40 / 20 flips first, then more until ``--margin/--confidence`` (full's default +-5% at 95%) on the harm rate,
every window, and two more dtypes: bf16 (the session's copy) and int8 (every untied linear swapped for
per-channel int8 codes; the flips hit the codes; int8 has no exponent bits, so no exp_msb or exponent cell).
A flip is harmful when it collapses the model (non-finite, perplexity x10) or raises perplexity by 1% or more.
Grid and measuring: ``harness.detection.cells``.

Records (suite ``detection``): per flip ``ppl_ratio`` (detectors fired, harmful in extra); per cell ``harm_rate``
and, per detector, ``detection_rate`` among harmful flips and among all (Wilson intervals in extra; sized by
``--margin/--confidence`` on the harm rate); per detector ``false_alarm_rate`` on the clean model (repeated
checks and one at another batch size) and ``overhead_ratio`` (a check's seconds / a plain forward of one
window; recorded, never asserted), with its cost (forward tokens, weight reads, reference bytes); once per model
and float dtype ``recovery_ratio``: after one seeded flip (trial 0's seed, any bit of any weight) the seconds to
reload the model in that dtype as the session does (``load_model``, same name, dtype, device) over the seconds to
recover (find the changed tensors with the checksums, then restore only those from the weights files on disk with
``safe_open``, cast as the load casts them; ``harness.detection.recovery``); both seconds, tensors restored and
bytes read in extra; recorded, never asserted. Not applicable to a random-weight tiny model (no weights file on
disk) nor to int8 codes (not in the files: restoring them means quantizing again).

Claims (relations, any healthy model; not applicable where the sample holds no flip they are about):
``audit_detects_every_collapse``; ``checksum_detects_every_flip`` (exact: a miss is a bug);
``<detector>_silent_on_clean_model``; ``range_covers_exp_msb_share``: the range check catches at least as many
harmful single-bit flips as the exp-MSB flips make up of them; ``recovery_restores_bit_exactly``: the checksums
flag the seeded flip, and after restoring the flagged tensors the checksums are silent and every tensor's
fingerprint equals the clean model's. Bounds (``suites/bounds/detection.toml``, five
seeds): each cell's harm rate, and the audit's and the range check's detection rate among all its flips.
"""

from __future__ import annotations

import pytest

from harness.claims import ClaimSet
from harness.detection import DETECTORS
from harness.detection.cells import PATTERNS, DetectionCells, dtypes, grid, skip_reason
from harness.detection.outcomes import Sample
from harness.session import Grid

CLAIMS = ClaimSet("detection")
DTYPES = ("fp32", "fp16", "bf16", "int8")
AUDIT = CLAIMS.relation("audit_detects_every_collapse", "The test-vector audit fires on every flip that collapses "
                        "the model", statistic="collapsing flips detected", pretrained_only=False,
                        margin="every collapsing flip of the sample; one miss fails")
CHECKSUM = CLAIMS.relation("checksum_detects_every_flip", "Per-tensor checksums fire on every bit flip",
                           statistic="flips detected", pretrained_only=False, margin="every flip; exact")
SILENT = {d: CLAIMS.relation(f"{d}_silent_on_clean_model", f"The {d} detector never fires on the clean model",
                             statistic="clean checks without an alarm", pretrained_only=False,
                             margin="every repeated check and the one at another batch size")
          for d in DETECTORS.names()}
# Regression bounds per cell (suites/bounds/detection.toml): the harm rate, and the audit's and the range check's
# detection rate among all flips (the checksum's is the exact relation above).
HARM = {(d, p): CLAIMS.bound(f"{d}_{p}_harm_rate", f"{p} flips in {d} harm the model as often as measured",
                             side="within", statistic="harm_rate") for d in DTYPES for p in PATTERNS}
RATE = {(d, p, det): CLAIMS.bound(f"{d}_{p}_{det}_detection_rate", f"The {det} detector flags {p} flips in {d} as "
                                  "often as measured", side="within", statistic="detection_rate")
        for d in DTYPES for p in PATTERNS for det in ("audit", "range")}
RANGE = CLAIMS.relation("range_covers_exp_msb_share", "The range check catches at least the exp-MSB flips' share "
                        "of the harmful single-bit flips", statistic="harmful-flip coverage", pretrained_only=False,
                        margin="range-caught harmful flips >= harmful exp-MSB flips, over the sample")

RECOVERY = CLAIMS.relation("recovery_restores_bit_exactly", "Restoring only the tensors the checksums flag, from the "
                           "weights files on disk, gives back the clean model bit for bit",
                           statistic="model restored exactly (1) or not (0)", pretrained_only=False,
                           margin="exact: the flip flagged, then the checksums silent and every tensor's fingerprint "
                           "equal to the clean model's")


GRIDS = (Grid("cell", lambda o: grid(o.preset)), Grid("dtype", lambda o: dtypes(o.preset)),
         Grid("detector", lambda o: DETECTORS.names()))


@pytest.fixture
def cells(esa, lm) -> DetectionCells:
    return DetectionCells.of(esa, lm)


def claim(recorder, declared, evidence, sample: Sample, **columns) -> None:
    """Judge ``declared`` on ``evidence`` over ``sample``, or record why it does not apply (a string)."""
    columns["dtype"] = sample.torch_dtype
    if isinstance(evidence, str):
        recorder.not_applicable(declared, evidence, **columns)
    else:
        recorder.claim(declared, evidence, **columns)


def test_detection_cell(lm, cells, recorder, cell):
    if reason := cell.skip_reason(lm):
        pytest.skip(reason)
    measured = cells.measure(cell)
    recorder.rows(measured.rows(), dtype=measured.torch_dtype)
    columns = dict(dtype=measured.torch_dtype, perturbation=measured.perturbation)
    harm = measured.harm
    recorder.claim(HARM[measured.dtype, cell.pattern], harm.value, trials=harm.n, method="flip",
                   extra={"trials": harm.n, "hits": harm.hits}, **columns)
    for det in ("audit", "range"):
        rate = measured.rate(det, "all")
        recorder.claim(RATE[measured.dtype, cell.pattern, det], rate.value, trials=rate.n, method=det,
                       extra={"trials": rate.n, "hits": rate.hits}, **columns)


def test_detection_clean_model(lm, cells, recorder, dtype, detector):
    if reason := skip_reason(lm, dtype):
        pytest.skip(reason)
    checks = cells.clean_checks(dtype)[detector]
    recorder.rows(checks.rows(), dtype=checks.torch_dtype)
    recorder.claim(SILENT[detector], checks.silent(), method=detector, dtype=checks.torch_dtype)


def test_detection_recovery(lm, cells, recorder, dtype):
    if reason := skip_reason(lm, dtype):
        pytest.skip(reason)
    measured = cells.recovery(dtype)
    if isinstance(measured, str):
        recorder.not_applicable(RECOVERY, measured, method="checksum")
        return
    recorder.rows(measured.rows(), dtype=measured.torch_dtype)
    recorder.claim(RECOVERY, measured.exact(), method="checksum", dtype=measured.torch_dtype,
                   perturbation=measured.perturbation)


def test_detection_claim_audit(lm, cells, recorder, dtype):
    flips = sample(lm, cells, dtype)
    claim(recorder, AUDIT, flips.every("audit", "collapsed"), flips, method="audit")


def test_detection_claim_checksum(lm, cells, recorder, dtype):
    flips = sample(lm, cells, dtype)
    claim(recorder, CHECKSUM, flips.every("checksum", "all"), flips, method="checksum")


def test_detection_claim_range(lm, cells, recorder, dtype):
    flips = sample(lm, cells, dtype)
    claim(recorder, RANGE, flips.range_vs_exp_msb(), flips, method="range")


def sample(lm, cells: DetectionCells, dtype: str) -> Sample:
    """Every cell of ``dtype`` measured, as one sample of flips (skips where ``dtype`` does not apply)."""
    if reason := skip_reason(lm, dtype):
        pytest.skip(reason)
    return cells.sample(dtype)
