"""The super-weight detector (harness.scoring.superweights): an implanted super weight is found
exactly, nothing is found without it, the model is restored, and published/measured coordinates are
found on every zoo model whose weights are present here."""

from __future__ import annotations

import os

import pytest
import torch

from harness.errors import HarnessError
from harness.fingerprint import fingerprint
from harness.models import MODELS, build_tiny, byte_tokenizer
from harness.scoring import score
from harness.scoring.artifacts import read_detection, read_super_weights, write_super_weights
from harness.scoring.known import KNOWN_SUPER_WEIGHTS, known_super_weights
from harness.scoring.superweights import FACTOR, Detection, detect

LAYER, ROW, COL, DIM = 1, 11, 37, 5  # the implant: W_down[ROW, COL] of block LAYER, read from hidden dim DIM
SPIKE = "A"  # the one token whose input channel COL spikes (byte 'A'; the prompt has it once)
PROMPT = "Apple Inc. is a worldwide tech company."


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny():
    return build_tiny("llama")


def _implant(model, tokenizer, weight: float = 5.0):
    """Make token SPIKE, and only it, drive down-projection input channel COL of block LAYER.

    The token's embedding is put on hidden dim DIM (every other token has 0 there), the gate and up
    rows of channel COL read only DIM, and column COL of W_down is 0 but W_down[ROW, COL] = ``weight``:
    that token's input at COL is ~ silu(8 a) * 8 a (a = 6: about 2300), its output at ROW ~ weight x that.
    """
    token = tokenizer(SPIKE, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, DIM] = 0.0
        emb[token] = 0.0
        emb[token, DIM] = 1.0  # after RMSNorm: ~ sqrt(64) = 8 on DIM
        mlp = model.model.layers[LAYER].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[COL] = 0.0
            proj.weight[COL, DIM] = 6.0
        mlp.down_proj.weight[:, COL] = 0.0  # only W[ROW, COL] turns the spike into output
        mlp.down_proj.weight[ROW, COL] = weight
    return token


def test_implanted_super_weight_is_found_exactly_and_the_model_restored():
    model, tok = _tiny(), byte_tokenizer()
    token = _implant(model, tok)
    before = fingerprint(model)
    d = detect(model, tokenizer=tok, name="tiny-implant")
    assert fingerprint(model) == before
    assert [(s.layer, s.row, s.col) for s in d.sites] == [(LAYER, ROW, COL)]
    s = d.sites[0]
    ids = tok(PROMPT)["input_ids"]
    assert ids[s.token] == token and s.round == 0 and s.value == 5.0
    assert s.strength >= FACTOR and s.input_spike > 100 and abs(s.output_spike) > 100
    assert d.candidate == s and d.rounds_run == 1


def test_same_model_without_the_implant_has_no_super_weight():
    model, tok = _tiny(), byte_tokenizer()
    d = detect(model, tokenizer=tok, name="tiny", rounds=3)
    assert d.sites == () and not d and d.rounds_run == 1
    assert d.candidate is not None and d.candidate.strength < FACTOR / 5  # far below, not just below


def test_weak_implant_below_the_relative_threshold_is_not_found():
    model, tok = _tiny(), byte_tokenizer()
    _implant(model, tok)
    with torch.no_grad():  # the input channel no longer spikes: a = 0.05 instead of 6
        for proj in (model.model.layers[LAYER].mlp.gate_proj, model.model.layers[LAYER].mlp.up_proj):
            proj.weight[COL, DIM] = 0.05
    assert detect(model, tokenizer=tok).sites == ()


def test_rounds_zero_found_sites_and_keep_each_sites_round():
    model, tok = _tiny(), byte_tokenizer()
    _implant(model, tok)
    with torch.no_grad():  # a second, smaller weight of the same input channel: the largest output once the first is 0
        model.model.layers[LAYER].mlp.down_proj.weight[ROW + 1, COL] = 2.0
    before = fingerprint(model)
    one = detect(model, tokenizer=tok, rounds=1)
    three = detect(model, tokenizer=tok, rounds=3)
    assert fingerprint(model) == before
    assert [(s.round, s.row, s.col) for s in one.sites] == [(0, ROW, COL)] and one.rounds_run == 1
    assert [(s.round, s.row, s.col) for s in three.sites] == [(0, ROW, COL), (1, ROW + 1, COL)]
    assert three.sites[1].value == 2.0 and three.rounds_run == 3  # round 2 found nothing new and ended the scan
    assert one.id != three.id


def test_detection_id_names_model_dtype_prompts_and_sites():
    model, tok = _tiny(), byte_tokenizer()
    a = detect(model, tokenizer=tok, name="m")
    assert detect(model, tokenizer=tok, name="m").id == a.id
    assert detect(model, tokenizer=tok, name="m", prompts=("Other text.",)).id != a.id
    assert detect(model, tokenizer=tok, name="other").id != a.id
    _implant(model, tok)
    assert detect(model, tokenizer=tok, name="m").id != a.id


def test_artifact_round_trips_the_detection(tmp_path):
    model, tok = _tiny(), byte_tokenizer()
    _implant(model, tok)
    d = detect(model, tokenizer=tok, name="tiny/implant")
    path = write_super_weights(tmp_path, d)
    assert path == tmp_path / "tiny--implant" / "super_weights.json"
    back = read_detection(tmp_path, "tiny/implant")
    assert back == d and back.id == d.id
    (entry,) = read_super_weights(tmp_path, "tiny/implant")
    got = (entry["layer"], entry["row"], entry["col"], entry["detection"], entry["round"])
    assert got == (LAYER, ROW, COL, d.id, 0)
    assert read_detection(tmp_path, "absent") is None and read_super_weights(tmp_path, "absent") == []
    path.write_text("[]")
    with pytest.raises(HarnessError, match="detection"):
        read_detection(tmp_path, "tiny/implant")


def test_activation_scorer_is_the_detector():
    model, tok = _tiny(), byte_tokenizer()
    _implant(model, tok)
    from types import SimpleNamespace

    result = score(SimpleNamespace(model=model, tokenizer=tok), "activation")
    d = detect(model, tokenizer=tok)
    assert [s.site for s in result.top_k(5)] == d.fault_sites()
    assert result.details["detection"].sites == d.sites


def test_bad_parameters_are_one_line_errors():
    model, tok = _tiny(), byte_tokenizer()
    with pytest.raises(HarnessError, match="factor"):
        detect(model, tokenizer=tok, factor=1.0)
    with pytest.raises(HarnessError, match="rounds"):
        detect(model, tokenizer=tok, rounds=0)
    with pytest.raises(HarnessError, match="tokenizer"):
        detect(model)


def test_known_coordinates_are_data_with_a_source():
    assert all(len(c) == 3 for coords in KNOWN_SUPER_WEIGHTS.values() for c in coords)
    (measured,) = known_super_weights("smollm2-135m")
    assert (measured.layer, measured.row, measured.col) == (11, 507, 1229) and "measured" in measured.source
    assert known_super_weights("mistral-7b")[0].source.startswith("Yu et al.")


def _present(name: str) -> bool:
    """The model's weights are on this machine (no download): the offline packages, or a hub cache hit."""
    spec = MODELS.get(name)
    if spec.source == "gguf-package":
        from importlib.util import find_spec

        return find_spec(spec.package.replace("-", "_")) is not None or _cached(spec)
    return _cached(spec)


def _cached(spec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str)
    except Exception:
        return False


KNOWN_MODELS = [n for n in MODELS.names() if MODELS.get(n).hub_id and known_super_weights(n)]


@pytest.mark.parametrize("name", KNOWN_MODELS)
def test_known_super_weights_are_found(name):
    if not _present(name) or (os.environ.get("ESA_SKIP_REAL_MODELS") == "1"):
        pytest.skip(f"{name}'s weights are not on this machine")
    from harness.models import load_model

    lm = load_model(name)
    d = detect(lm)  # the defaults every suite shares
    found = {s.coords for s in d.sites}
    missing = [(k.layer, k.row, k.col) for k in known_super_weights(name) if (k.layer, k.row, k.col) not in found]
    assert not missing, f"detection {d.id} of {name} missed {missing}; found {sorted(found)}"
    assert isinstance(d, Detection)
