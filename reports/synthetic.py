"""A synthetic results store that follows docs/RECORDS.md, for the report tests and for trying the
report without running the suites (``python -m reports demo <dir>``).

Numbers are made up but shaped like real ones: a 4-layer model whose layer-1 ``mlp_down`` holds a
super weight, noise and bit-flip curves that collapse at high levels, pruning curves that rise.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from harness.records import ResultStore

ALL_SUITES = ("smoke", "ablation", "robustness", "bitflip", "attack", "adversarial", "targeted",
              "compare", "super_weights", "pruning", "selective", "evaluate")
COMPONENTS = ("query", "key", "value", "attn_out", "mlp_up", "mlp_down")
SCORERS = ("magnitude", "activation", "z_score", "gradient")
N_LAYERS = 4
SUPER_WEIGHT = {"module": "model.layers.1.mlp.down_proj.weight", "layer": 1, "row": 17, "col": 402,
                "value": -3.92}


def run_info(commit: str = "0000000", **overrides) -> dict:
    info = {"git_commit": commit, "device": "cpu (x86_64, 2 threads)", "dtype": "float32",
            "torch": "2.13.0", "transformers": "5.24.0", "lm_eval": "0.4.13", "python": "3.11.7",
            "hostname": "synthetic", "command": "pytest suites/ --preset quick"}
    info.update(overrides)
    return info


class _Writer:
    def __init__(self, store: ResultStore, run_id: str, model: str, rnd: random.Random,
                 worsen: dict[str, float]) -> None:
        self.store, self.run_id, self.model, self.rnd, self.worsen = store, run_id, model, rnd, worsen

    def record(self, suite: str, test: str, metric: str, value: float, **kw) -> None:
        from harness.metrics import direction

        self.store.record(run_id=self.run_id, test_id=f"suites/test_{suite}.py::{test}[{self.model}]",
                          suite=suite, model=self.model, metric=metric, value=value, dtype="float32",
                          higher_is_better=direction(metric), **kw)

    def claim(self, suite: str, test: str, name: str, value: float, bound: float, **kw) -> None:
        """As the plugin's ``recorder.claim``: metric = claim name, ``extra.claim``, the bound's side
        from the name's ``_max`` / ``_min`` suffix."""
        value *= self.worsen.get(name, 1.0)
        passed = value <= bound if name.endswith("_max") else value >= bound
        extra = {"claim": name, **kw.pop("extra", {})}
        self.record(suite, test, name, value, bound=bound, passed=passed, extra=extra, **kw)

    def jitter(self, x: float, s: float = 0.02) -> float:
        return x * (1 + self.rnd.gauss(0, s))


def _smoke(w: _Writer) -> None:
    w.record("smoke", "test_clean_perplexity", "perplexity", w.jitter(18.4, 0.001),
             perturbation={"kind": "clean"}, seconds=0.8)
    w.claim("smoke", "test_clean_perplexity", "clean_perplexity_max", 18.4, 25.0, perturbation={"kind": "clean"})


def _ablation(w: _Writer) -> None:
    for layer in range(N_LAYERS):
        for comp in COMPONENTS:
            ratio = 1.0 + 0.03 * w.rnd.random() + (0.4 if comp == "mlp_down" else 0.05) / (layer + 1)
            if layer == 1 and comp == "mlp_down":
                ratio = 41.0
            if layer == 0 and comp in ("query", "key"):
                ratio = 1.6 + 0.1 * w.rnd.random()
            pert = {"kind": "ablation", "mode": "zero", "layer": layer, "component": comp}
            w.record("ablation", f"test_ablation_zero[{layer}-{comp}", "ppl_ratio", w.jitter(ratio, 0.005),
                     method="zero", perturbation=pert, clean_value=18.4)
    w.claim("ablation", "test_most_sensitive_block", "mlp_down_l1_ablation_ratio_min", 41.0, 5.0,
            method="zero",
            perturbation={"kind": "ablation", "mode": "zero", "layer": 1, "component": "mlp_down"})


def _trials(w: _Writer, suite: str, test: str, method: str, pert: dict, *, centre: float, p_collapse: float,
            trials: int = 8) -> None:
    for t in range(trials):
        collapsed = w.rnd.random() < p_collapse
        value = math.inf if collapsed else w.jitter(centre, 0.1)
        w.record(suite, test, "ppl_ratio", value, method=method, perturbation=pert, seed=t,
                 collapsed=collapsed, extra={"trial": t})


def _robustness(w: _Writer) -> None:
    for method in ("gaussian", "uniform"):
        for level in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3):
            centre = 1 + (level / 0.01) ** 2 * (0.05 if method == "gaussian" else 0.03)
            pc = min(1.0, max(0.0, (level - 0.05) * 3))
            _trials(w, "robustness", f"test_noise[{method}-{level}", method,
                    {"kind": "noise", "level": level, "target": "all"}, centre=centre, p_collapse=pc)
    w.claim("robustness", "test_small_noise_harmless", "gaussian_1e-3_ppl_ratio_max", 1.004, 1.05,
            method="gaussian", perturbation={"kind": "noise", "level": 0.001, "target": "all"})


def _bitflip(w: _Writer) -> None:
    for bit_class, severity in (("sign", 0.02), ("mantissa", 0.001), ("exponent", 0.3),
                                ("exponent_msb", 0.9)):
        for n in (1, 4, 16, 64):
            pc = min(1.0, severity * n / 4) if bit_class.startswith("exponent") else 0.0
            _trials(w, "bitflip", f"test_random_flips[{bit_class}-{n}", "random",
                    {"kind": "bitflip", "n_flips": n, "bit_class": bit_class, "target": "all"},
                    centre=1 + severity * n, p_collapse=pc)
    n, rate = 8, 0.375
    w.claim("bitflip", "test_exponent_msb_collapse", "exponent_msb_collapse_rate_min", rate, 0.25,
            method="random", perturbation={"kind": "bitflip", "n_flips": 1, "bit_class": "exponent_msb"},
            extra={"n": n, "collapsed": round(rate * n)})
    w.claim("bitflip", "test_mantissa_harmless", "mantissa_64_ppl_ratio_max", 1.06, 1.10, method="random",
            perturbation={"kind": "bitflip", "n_flips": 64, "bit_class": "mantissa"})


def _attack(w: _Writer) -> None:
    for method, k in (("progressive_bit_search", 2.0), ("random", 0.01)):
        for n in (1, 2, 4, 8):
            w.record("attack", f"test_bitflip_attack[{method}-{n}", "ppl_ratio", 1 + k * n * n,
                     method=method, perturbation={"kind": "bitflip_attack", "n_flips": n})
    w.claim("attack", "test_attack_beats_random", "pbs_8_flips_ppl_ratio_min", 129.0, 10.0,
            method="progressive_bit_search", perturbation={"kind": "bitflip_attack", "n_flips": 8})


def _adversarial(w: _Writer) -> None:
    for method in ("char_swap", "suffix"):
        for level in (0.01, 0.05, 0.1, 0.2):
            w.record("adversarial", f"test_input_attack[{method}-{level}", "kl",
                     w.jitter(level * (3 if method == "suffix" else 1.5)), method=method,
                     perturbation={"kind": "input", "level": level})
            w.record("adversarial", f"test_input_attack[{method}-{level}", "top1",
                     max(0.0, 1 - level * 2), method=method, perturbation={"kind": "input", "level": level})


def _targeted(w: _Writer) -> None:
    for method in (*SCORERS, "random"):
        for frac in (1e-6, 1e-5, 1e-4, 1e-3):
            strength = 0.0 if method == "random" else {"magnitude": 1.0, "activation": 3.0, "z_score": 0.8,
                                                       "gradient": 2.0}[method]
            centre = 1 + strength * math.log10(frac / 1e-7) ** 2 + (frac * 200 if method == "random" else 0)
            _trials(w, "targeted", f"test_targeted_zero[{method}-{frac}", method,
                    {"kind": "targeted", "fraction": frac, "action": "zero"}, centre=centre, p_collapse=0.0,
                    trials=3)
    w.claim("targeted", "test_scorer_beats_random", "activation_1e-5_over_random_min", 28.0, 2.0,
            method="activation", perturbation={"kind": "targeted", "fraction": 1e-5, "action": "zero"})


def _compare(w: _Writer) -> None:
    tops = {s: set(range(i * 7, i * 7 + 50)) for i, s in enumerate(SCORERS)}
    for i, a in enumerate(SCORERS):
        w.record("compare", f"test_method_cost[{a}", "seconds", w.jitter(0.2 * (i + 1) ** 2, 0.05), method=a,
                 perturbation={"kind": "score", "k": 50})
        for b in SCORERS[i + 1:]:
            j = len(tops[a] & tops[b]) / len(tops[a] | tops[b])
            w.record("compare", "test_method_agreement", "jaccard", j, method=f"{a}|{b}",
                     perturbation={"kind": "score", "k": 50}, extra={"method_a": a, "method_b": b, "k": 50})


def _super_weights(w: _Writer, results_dir: Path) -> None:
    found = []
    for method in ("activation", "z_score"):
        entries = [dict(SUPER_WEIGHT, score=120.0 if method == "activation" else 48.0)]
        for r in range(6):
            layer = w.rnd.choice([1, 1, 2, 3, 0])
            entries.append({"module": f"model.layers.{layer}.mlp.down_proj.weight", "layer": layer,
                            "row": w.rnd.randrange(64), "col": w.rnd.randrange(512),
                            "value": round(w.rnd.gauss(0, 0.8), 3), "score": round(20 / (r + 2), 2)})
        for rank, e in enumerate(entries[:3]):
            w.record("super_weights", f"test_find_super_weights[{method}", "super_weight_score", e["score"],
                     method=method, perturbation={"kind": "score"},
                     extra={"module": e["module"], "layer": e["layer"], "row": e["row"], "col": e["col"],
                            "weight_value": e["value"], "rank": rank})
        found += [dict(e, method=method) for e in entries]
    path = results_dir / w.model / "super_weights.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1))
    for target, ratio in (("super_weights", 41.0), ("random", 1.0003)):
        w.record("super_weights", f"test_zero_super_weight[{target}", "ppl_ratio", ratio, method=target,
                 perturbation={"kind": "zero", "target": target, "count": 1})
    w.claim("super_weights", "test_zero_super_weight", "zero_super_weight_ppl_ratio_min", 41.0, 10.0,
            method="super_weights", perturbation={"kind": "zero", "target": "super_weights", "count": 1})


def _pruning(w: _Writer) -> None:
    for method, k in (("magnitude", 1.0), ("wanda", 0.6), ("random", 4.0)):
        for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            ppl = 18.4 * math.exp(k * s ** 2 * 3)
            w.record("pruning", f"test_prune[{method}-{s}", "perplexity", ppl, method=method, clean_value=18.4,
                     perturbation={"kind": "prune", "sparsity": s, "granularity": "unstructured"})
    w.claim("pruning", "test_wanda_50", "wanda_50_ppl_ratio_max", math.exp(0.6 * 0.75), 2.0, method="wanda",
            perturbation={"kind": "prune", "sparsity": 0.5, "granularity": "unstructured"})


def _selective(w: _Writer) -> None:
    for method in ("gradient", "magnitude"):
        for s in (0.1, 0.3, 0.5):
            pert = {"kind": "selective_prune", "sparsity": s, "layers": [1, 2], "component": "value",
                    "percentile": 80, "prune_method": "zero"}
            w.record("selective", f"test_selective[{method}-{s}", "ppl_ratio", 1 + s * (0.5 if method ==
                     "gradient" else 0.2), method=method, perturbation=pert)
            w.record("selective", f"test_selective[{method}-{s}", "top1", 1 - s * 0.3, method=method,
                     perturbation=pert,
                     extra={"prompt": "In a galaxy far away", "clean_output": "In a galaxy far away, the stars",
                            "perturbed_output": "In a galaxy far away <script>x</script> | pipes"}
                     if s == 0.5 else None)


def _evaluate(w: _Writer) -> None:
    # "accuracy" is registered by the task adapter, not here: the record carries its direction
    for task, acc in (("arithmetic", 0.62), ("copy", 0.91)):
        for variant, drop in (({"kind": "clean"}, 0.0), ({"kind": "prune", "sparsity": 0.5}, 0.1)):
            w.store.record(run_id=w.run_id, test_id=f"suites/test_evaluate.py::test_task[{task}-{w.model}]",
                           suite="evaluate", model=w.model, metric="accuracy", value=acc - drop, method=task,
                           perturbation=variant, higher_is_better=True, dtype="float32",
                           extra={"stderr": 0.02})


def write_run(store: ResultStore, results_dir: Path, *, model: str = "tiny-llama", commit: str = "0000000",
              seed: int = 0, suites=ALL_SUITES, worsen: dict[str, float] | None = None,
              info: dict | None = None) -> str:
    """Write one complete synthetic run and return its id.

    Args:
        worsen: claim name -> factor multiplied into that claim's value (to fake a regression).
        info: run-info overrides (device, dtype, versions).
    """
    run_id = store.start_run(run_info(commit, **(info or {})))
    w = _Writer(store, run_id, model, random.Random(seed), worsen or {})
    for suite in suites:
        if suite == "super_weights":
            _super_weights(w, results_dir)
        else:
            globals()[f"_{suite}"](w)
    store.finish_run(run_id)
    return run_id


def build_store(results_dir: str | Path, runs: int = 1, **kw) -> list[str]:
    """Create ``results_dir/results.sqlite`` with ``runs`` synthetic runs; return their ids, oldest first."""
    results_dir = Path(results_dir)
    with ResultStore(results_dir) as store:
        return [write_run(store, results_dir, commit=f"{i + 1:07x}abcdef", seed=i, **kw) for i in range(runs)]
