"""Fine-tuning: full or LoRA (peft), on calibration documents only, with fault-aware options.

    from harness.finetune import FinetuneConfig, ensure_finetuned
    done = ensure_finetuned("smollm2-135m", FinetuneConfig(method="lora", tokens=2048), results_dir="results")
    load_model(done.path)   # or AutoModelForCausalLM.from_pretrained(done.path), or --model done.path

Modules: ``config`` (the run and its cache key), ``train`` (the loop), ``lora`` (peft),
``hardening`` (weight noise, weight clipping; sources cited there), ``run`` (training windows,
fine-tune, save, cache), ``options`` (pytest options, ``--finetune``).
"""

from harness.finetune.config import METHODS, SCHEDULES, FinetuneConfig
from harness.finetune.run import Finetuned, ensure_finetuned, finetune, finetuned_path, load_finetuned, training_windows
from harness.finetune.train import TrainLog, train

__all__ = [
    "METHODS", "SCHEDULES", "FinetuneConfig", "Finetuned", "TrainLog", "ensure_finetuned", "finetune",
    "finetuned_path", "load_finetuned", "train", "training_windows",
]
