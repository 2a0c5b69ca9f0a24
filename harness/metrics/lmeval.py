"""lm-eval adapter: lm-evaluation-harness task metrics for an in-memory model, clean or perturbed.

The model object is handed to lm-eval's ``HFLM(pretrained=model, tokenizer=...)`` as is: no reload,
no copy, so a model inside any perturbation context is evaluated with the perturbation in place.
``simple_evaluate`` runs the tasks; every task metric becomes one :class:`TaskMetric`, whose
:meth:`TaskMetric.row` is its record for the results store (a :class:`harness.records.row.Row`).

Tasks. The offline tasks shipped in ``harness/metrics/tasks/`` (``pydoc_rolling``,
``pydoc_cloze``; see :mod:`harness.metrics.taskbuild`) need no download; the ``TaskManager`` for
them indexes only that folder (``include_defaults=False``). Any lm-eval task name (``wikitext``,
``lambada_openai``, ``hellaswag``, ``arc_easy``, ``piqa`` ...) builds, once per process, a second
manager over lm-eval's own index as well (about 10 s). Such *hub tasks* need the Hugging Face hub:
without it they raise :class:`~harness.errors.OfflineError` (callers skip). Each manager and each
loaded task is built once per process.

Conventions (recorded in every row's ``extra["conventions"]``):

* Rolling log-likelihood (lm-eval's ``loglikelihood_rolling``): each document is tokenized with
  **no special tokens**, then scored in windows of at most ``max_length`` tokens
  (``get_rolling_token_windows``, context 1), the first window conditioned on one *prefix token*:
  lm-eval's ``prefix_token_id``, i.e. the tokenizer's BOS, else EOS (override with
  ``prefix_token_id=``). Every token of the document is predicted once. A tokenizer that adds BOS
  by itself would otherwise put a second BOS behind the prefix (and score ``P(BOS|BOS)``), so the
  rolling evaluator always runs with ``add_bos_token=False``, one window per forward pass.
* Multiple choice (``loglikelihood``): contexts are tokenized the tokenizer's own way (BOS when the
  tokenizer adds it, as the model was trained): a second ``HFLM`` with ``add_bos_token=None``
  (and a larger batch) serves these tasks.
* Log-softmax in float32 (``softmax_dtype``), whatever the model dtype.
* ``word_perplexity`` = exp(-sum of log-likelihoods / number of words), words counted by
  ``re.split(r"\\s+", text)``; ``byte_perplexity`` and ``bits_per_byte`` per UTF-8 byte. These are
  lm-eval's numbers and are **not** token perplexity. ``token_perplexity`` (our row) is
  :func:`harness.metrics.evaluate` on the same documents: tokens without special tokens, no BOS,
  the first token of each document (and of each ``max_length`` chunk) not predicted.
* lm-eval's metric ``perplexity`` (per-target perplexity, e.g. in lambada) is stored as
  ``lmeval_perplexity`` so it never mixes with our token ``perplexity``.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from harness.errors import HarnessError, OfflineError, UnknownNameError
from harness.metrics.lmeval_quiet import no_env_probe, no_kv_cache, quiet_lmeval
from harness.models.device import input_device
from harness.option_values import comma_list
from harness.records.row import Row

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
ROLLING_TASK = "pydoc_rolling"
CLOZE_TASK = "pydoc_cloze"
OFFLINE_TASKS = (ROLLING_TASK, CLOZE_TASK)
ALIASES = {"offline": OFFLINE_TASKS}  # --tasks offline
RENAMED_METRICS = {"perplexity": "lmeval_perplexity"}  # lm-eval name -> store name
HUB_CHECK_SECONDS = 3.0
def lm_eval_version() -> str:
    """The installed lm-eval version."""
    return metadata.version("lm_eval")


# -- tasks -------------------------------------------------------------------------------------


@cache
def task_manager(builtin: bool = False):
    """The process's ``TaskManager``: our task folder only, or (``builtin``) lm-eval's index too.

    Cost: ~1 s to import lm-eval the first time; ``builtin`` indexes ~15k tasks (~10 s on 2 cores).
    """
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    with quiet_lmeval():
        tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=builtin)
    log.info("lm-eval TaskManager (builtin=%s) indexed %d names in %.1f s",
             builtin, len(tm.all_tasks), time.perf_counter() - started)
    return tm


def offline_tasks() -> list[str]:
    """Names of the tasks shipped in ``harness/metrics/tasks/`` (read from their YAML files)."""
    return sorted(task_manager(False).all_subtasks)


def is_offline_task(name: str) -> bool:
    """Whether ``name`` is a task shipped with the harness (needs no hub)."""
    return name in task_manager(False).task_index


def resolve_tasks(names: str | Sequence[str]) -> list[str]:
    """Check task names and expand aliases (``offline``); keep order, drop duplicates.

    Args:
        names: a comma list or a sequence of task names.

    Raises:
        UnknownNameError: a name in neither our folder nor lm-eval's index; the message lists
            the closest names of lm-eval's index (this builds the full index once, ~10 s).
    """
    if isinstance(names, str):
        names = comma_list(names, "lm-eval task names", required=False)
    out: list[str] = []
    for name in filter(None, names):
        for task in ALIASES.get(name, (name,)):
            if not is_offline_task(task):
                index = task_manager(True).task_index
                if task not in index:
                    close = difflib.get_close_matches(task, list(index), n=5, cutoff=0.6)
                    hint = f"close matches: {', '.join(close)}" if close else "no close match in lm-eval's index"
                    raise UnknownNameError(
                        f"unknown lm-eval task {task!r}; {hint} (offline tasks: {', '.join(OFFLINE_TASKS)})")
            if task not in out:
                out.append(task)
    if not out:
        raise HarnessError(f"no task given; offline tasks: {', '.join(OFFLINE_TASKS)}")
    return out


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@cache
def _hub_unreachable(host: str, port: int, timeout: float) -> str | None:
    result: dict[str, BaseException | None] = {}

    def connect() -> None:  # getaddrinfo ignores socket timeouts, so run in a thread
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["err"] = None
        except OSError as err:
            result["err"] = err

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if "err" not in result:
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    err = result["err"]
    return None if err is None else f"cannot reach {host}:{port} ({type(err).__name__}: {err})"


def hub_unavailable_reason(timeout: float = HUB_CHECK_SECONDS) -> str | None:
    """Why hub tasks cannot run here, or None when the hub answers.

    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set: None (lm-eval reads the local cache, and a
    missing dataset becomes OfflineError when loaded). Otherwise one TCP connection to the hub
    endpoint (``HF_ENDPOINT``) with a short timeout, remembered for the process.
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    reason = _hub_unreachable(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443),
                              timeout)
    return None if reason is None else f"hub tasks need the Hugging Face hub: {reason}"


def task_config(yaml_path: str | Path) -> dict:
    """A task YAML as a config dict, its ``dataset_kwargs.data_files`` made absolute (relative to
    the YAML file) and checked, since ``datasets`` would resolve them against the working directory.

    Raises:
        HarnessError: a data file does not exist.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = Path(yaml_path)
    cfg = dict(load_yaml(str(yaml_path), resolve_func=True))
    name = cfg.get("task", yaml_path.stem)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if isinstance(files, str):
        files = {"test": files}
    resolved = {}
    for split, rel in (files or {}).items():
        path = (yaml_path.parent / rel).resolve()
        if not path.is_file():
            raise HarnessError(f"task {name!r}: data file {path} is missing "
                               "(regenerate with `python -m harness.metrics.taskbuild`)")
        resolved[split] = str(path)
    cfg["dataset_kwargs"] = {**kwargs, "data_files": resolved}
    return cfg


_LOADED: dict[str, Any] = {}  # task name -> lm-eval Task, loaded once per process


def load_task(name: str):
    """The lm-eval ``Task`` ``name`` (its dataset loaded), built once per process.

    Raises:
        UnknownNameError: unknown name. HarnessError: an offline task's data file is missing.
        OfflineError: a hub task with no hub access.
    """
    if name in _LOADED:
        return _LOADED[name]
    (name,) = resolve_tasks([name])
    with quiet_lmeval():
        if is_offline_task(name):
            loaded = task_manager(False).load([task_config(task_manager(False).task_index[name].yaml_path)])
        else:
            reason = hub_unavailable_reason()
            if reason is not None:
                raise OfflineError(f"{name}: {reason}")
            try:
                loaded = task_manager(True).load([name])
            except (OSError, ConnectionError) as err:  # datasets / hub errors when offline
                raise OfflineError(f"{name}: could not load its data from the hub ({type(err).__name__})") from None
    tasks = loaded["tasks"]
    _LOADED[name] = tasks[name] if name in tasks else list(tasks.values())
    return _LOADED[name]


# -- rows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMetric:
    """One task metric of one evaluation (its record: :meth:`row`).

    Attributes:
        task: the lm-eval task name (stored in the ``method`` column).
        metric: the store's metric name (lm-eval's, ``perplexity`` renamed ``lmeval_perplexity``;
            ``token_perplexity`` is ours).
        value: the metric value (inf when the model's outputs were not finite).
        stderr: lm-eval's standard error, or None where lm-eval gives none.
        higher_is_better: the direction lm-eval declares.
        lm_eval_version: the lm-eval version that computed it.
        extra: lm-eval's metric key, documents scored, task version, conventions.
    """

    task: str
    metric: str
    value: float
    stderr: float | None
    higher_is_better: bool | None
    lm_eval_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, perturbation: dict[str, Any] | None = None, clean_value: float | None = None) -> Row:
        """The metric's record: method = the task, lm-eval's direction, collapsed when not finite, ``extra`` with
        the task, stderr and lm-eval version.

        Args:
            perturbation: the model's perturbation (None: the clean model).
            clean_value: the clean model's value of the same (task, metric), for a perturbed evaluation.
        """
        extra = {**self.extra, "task": self.task, "stderr": self.stderr, "lm_eval": self.lm_eval_version}
        return Row(self.metric, self.value, perturbation, extra, clean_value,
                   {"method": self.task, "higher_is_better": self.higher_is_better,
                    "collapsed": not math.isfinite(self.value)})


def _number(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# -- evaluation --------------------------------------------------------------------------------


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` (default special tokens) starts with the BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


class LMEvaluator:
    """lm-eval tasks on one in-memory model; build it on the clean model, reuse it under any
    perturbation (the HFLM instances hold the model object itself).

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel``), in eval mode.
        tokenizer: its tokenizer; a private copy is given to lm-eval (it sets a pad token).
        batch_size: multiple-choice requests per forward pass (short sequences: batching pays).
        rolling_batch_size: rolling windows per forward pass (each up to ``max_length`` tokens,
            with a (batch, length, vocab) float32 log-softmax: keep it small).
        max_length: context length for lm-eval (default: the model config's).
        prefix_token_id: the rolling prefix token (default: lm-eval's, BOS else EOS).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 16, rolling_batch_size: int = 1,
                 max_length: int | None = None, prefix_token_id: int | None = None) -> None:
        self.model = model
        self.tokenizer = copy.deepcopy(tokenizer)
        self.batch_size = batch_size
        self.rolling_batch_size = rolling_batch_size
        self.adds_bos = tokenizer_adds_bos(self.tokenizer)
        self._max_length = max_length
        self._prefix = prefix_token_id
        self._lms: dict[bool, Any] = {}

    def hflm(self, rolling: bool):
        """The ``HFLM`` for rolling (``add_bos_token=False``) or multiple-choice tasks (the
        tokenizer's own BOS handling); two instances, since their batch sizes differ."""
        if rolling not in self._lms:
            from lm_eval.models.huggingface import HFLM

            with quiet_lmeval():
                self._lms[rolling] = HFLM(
                    pretrained=self.model, tokenizer=self.tokenizer, backend="causal",
                    batch_size=self.rolling_batch_size if rolling else self.batch_size, max_length=self._max_length,
                    add_bos_token=False if rolling else None, prefix_token_id=self._prefix,
                    softmax_dtype=torch.float32,
                )
        return self._lms[rolling]

    @property
    def conventions(self) -> dict[str, Any]:
        """How tokens were made and scored (stored in every row's ``extra``)."""
        lm = self.hflm(rolling=True)
        prefix = lm.prefix_token_id
        return {
            "tokenizer_adds_bos": self.adds_bos,
            "rolling_prefix_token_id": prefix,
            "rolling_prefix_token": self.tokenizer.convert_ids_to_tokens(prefix),
            "rolling_special_tokens": False,
            "choice_context_bos": self.adds_bos,
            "max_length": lm.max_length,
            "softmax_dtype": "float32",
            "batch_size": self.batch_size,
            "rolling_batch_size": self.rolling_batch_size,
            "token_perplexity": "harness.metrics.evaluate per document: no special tokens, no BOS, "
                                "first token of each max_length chunk not predicted",
        }

    def run(self, tasks: str | Sequence[str], *, limit: int | None = None,
            token_perplexity: bool = True) -> list[TaskMetric]:
        """Evaluate ``tasks`` on the model as it is now.

        Args:
            tasks: task names (comma list or sequence; ``offline`` = both shipped tasks).
            limit: score only the first ``limit`` documents of each task.
            token_perplexity: add a ``token_perplexity`` row (ours) for each rolling task.

        Returns:
            One :class:`TaskMetric` per task metric (groups too, ``extra["group"] = True``).

        Raises:
            UnknownNameError, HarnessError, OfflineError: see :func:`load_task`.

        Cost: lm-eval's requests (one forward pass per rolling window; one per choice) plus, with
        ``token_perplexity``, one forward pass over each rolling document.
        """
        names = resolve_tasks(tasks)
        loaded = {name: load_task(name) for name in names}
        rows: list[TaskMetric] = []
        for rolling in (True, False):
            group = [n for n in names if _is_rolling(loaded[n]) == rolling]
            if group:
                rows += self._evaluate(group, loaded, rolling, limit, token_perplexity)
        return rows

    def _evaluate(self, names: list[str], loaded: dict, rolling: bool, limit: int | None,
                  token_perplexity: bool) -> list[TaskMetric]:
        from lm_eval import simple_evaluate

        lm = self.hflm(rolling)
        objs = [t for n in names for t in (loaded[n] if isinstance(loaded[n], list) else [loaded[n]])]
        started = time.perf_counter()
        with quiet_lmeval(), no_env_probe(), no_kv_cache(self.model), torch.no_grad():
            out = simple_evaluate(
                model=lm, tasks=objs, task_manager=task_manager(False), limit=limit, bootstrap_iters=1000,
                log_samples=True, random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            )
        seconds = time.perf_counter() - started
        version = lm_eval_version()
        conventions = self.conventions
        rows = []
        for task, metrics in out["results"].items():
            directions = out.get("higher_is_better", {}).get(task, {})
            n = out.get("n-samples", {}).get(task, {}).get("effective")
            for key, raw in metrics.items():
                if "," not in key or "_stderr," in key:
                    continue
                name, filt = key.split(",", 1)
                value = _number(raw)
                if value is None:
                    continue
                rows.append(TaskMetric(
                    task=task, metric=RENAMED_METRICS.get(name, name), value=value,
                    stderr=_number(metrics.get(f"{name}_stderr,{filt}")), higher_is_better=directions.get(name),
                    lm_eval_version=version,
                    extra={"lm_eval_metric": key, "n_docs": n, "limit": limit, "seconds": seconds,
                           "task_version": out.get("versions", {}).get(task), "group": task in out.get("groups", {}),
                           "conventions": conventions},
                ))
            if token_perplexity and rolling and task in out.get("samples", {}):
                rows.append(self._token_perplexity(task, out["samples"][task], version, conventions, limit))
        return rows

    def _token_perplexity(self, task: str, samples: list[dict], version: str, conventions: dict,
                          limit: int | None) -> TaskMetric:
        from harness.metrics.perplexity import evaluate

        chunk = self.hflm(rolling=True).max_length
        nll_sum, n_pred, lm_ll, lm_tokens, collapsed = 0.0, 0, 0.0, 0, False
        for sample in samples:
            ids = self.tokenizer(sample["target"], add_special_tokens=False, verbose=False)["input_ids"]
            lm_ll += float(sample["filtered_resps"][0] if isinstance(sample["filtered_resps"], list)
                           else sample["filtered_resps"])
            lm_tokens += len(ids)
            for start in range(0, len(ids), chunk):
                piece = torch.tensor(ids[start:start + chunk], dtype=torch.long)[None]  # (1, T)
                if piece.shape[1] < 2:
                    continue
                res = evaluate(self.model, piece)
                collapsed |= res.collapsed
                nll_sum += res.nll * res.n_tokens
                n_pred += res.n_tokens
        mean = nll_sum / max(n_pred, 1)
        value = math.inf if collapsed or mean > 700 else math.exp(mean)
        rolling_ppl = math.exp(-lm_ll / lm_tokens) if lm_tokens and -lm_ll / lm_tokens < 700 else math.inf
        return TaskMetric(
            task=task, metric="token_perplexity", value=value, stderr=None, higher_is_better=False,
            lm_eval_version=version,
            extra={"n_docs": len(samples), "limit": limit, "predicted_tokens": n_pred, "conventions": conventions,
                   "lmeval_loglikelihood": lm_ll, "lmeval_tokens": lm_tokens,
                   "lmeval_token_perplexity": rolling_ppl},
        )


def _is_rolling(task: Any) -> bool:
    tasks = task if isinstance(task, list) else [task]
    return all(t.get_config("output_type") == "loglikelihood_rolling" for t in tasks)


# -- direct computation (cross-check and benchmark) --------------------------------------------


def rolling_windows(tokens: Sequence[int], prefix_token_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's own rolling windows: ``(context, continuation)`` pairs, disjoint, context 1."""
    from lm_eval import utils

    return [utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(list(tokens), prefix_token_id, max_length, 1)]


@torch.no_grad()
def rolling_loglikelihood(model: torch.nn.Module, tokens: Sequence[int], prefix_token_id: int,
                          max_length: int) -> float:
    """Sum of log P(token) over ``tokens`` the way lm-eval's rolling loglikelihood defines it,
    computed directly: one plain forward pass per window, float32 log-softmax.

    Returns:
        The total log-likelihood (nats, <= 0).
    """
    device = input_device(model)
    total = 0.0
    for context, continuation in rolling_windows(tokens, prefix_token_id, max_length):
        inp = torch.tensor([(context + continuation)[:-1]], device=device)  # (1, T)
        logits = model(input_ids=inp, use_cache=False).logits[0, -len(continuation):]  # (C, V)
        logp = F.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(continuation, device=device)
        total += float(logp.gather(-1, target[:, None]).sum())
    return total
