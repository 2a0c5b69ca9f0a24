"""``python -m harness submit``: the suites on a Slurm cluster through submitit, then one merged store.

One array task per (model, shard) runs ``pytest <your args> --model M --shard K/N --run-id RUN
--results-dir <results>/tasks/<M>-<K>of<N>`` on its own GPUs; all tasks share one run id, and when they
have finished their stores are merged into ``<results>/results.sqlite`` (``python -m reports merge``).

    python -m harness submit --model smollm2-135m,opt-350m --shards 4 --gpus-per-task 1 \\
        --max-parallel 8 --partition gpu -- suites/ --preset full --device cuda

Needs the optional extra ``[slurm]`` (submitit). ``--executor local`` runs the tasks as local processes
(submitit's local executor), which is how the tests exercise it.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.option_values import as_option_type, comma_list, positive_int
from harness.records.runinfo import new_run_id

log = logging.getLogger(__name__)

# options that submit sets on every task itself
_OWNED = ("--model", "--shard", "--run-id", "--results-dir")


@dataclass(frozen=True)
class Task:
    """One array task: a model and a shard of the selected tests."""

    model: str
    shard: int
    shards: int

    @property
    def name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.model)
        return f"{safe}-{self.shard}of{self.shards}"


def plan(models: list[str], shards: int) -> list[Task]:
    """Every (model, shard) pair, models outermost."""
    if shards < 1:
        raise HarnessError(f"--shards must be at least 1, got {shards}")
    if not models:
        raise HarnessError("submit needs at least one --model")
    return [Task(m, k, shards) for m in models for k in range(1, shards + 1)]


def task_command(task: Task, pytest_args: list[str], run_id: str, results_dir: Path) -> list[str]:
    """The pytest command line of one task (``-p fixtures.scaleout``: ``--shard``/``--run-id`` come from it)."""
    return [sys.executable, "-m", "pytest", "-p", "fixtures.scaleout", *pytest_args, "--model", task.model,
            "--shard", f"{task.shard}/{task.shards}", "--run-id", run_id,
            "--results-dir", str(results_dir / "tasks" / task.name)]


def run_task(command: list[str], cwd: str) -> int:
    """Run one task's pytest (in the array job) and return its exit status."""
    return subprocess.run(command, cwd=cwd, check=False).returncode


def _check_args(pytest_args: list[str]) -> None:
    for arg in pytest_args:
        for owned in _OWNED:
            if arg == owned or arg.startswith(f"{owned}="):
                raise HarnessError(f"{owned} is set by submit for each task: give submit's own --model / "
                                   "--shards / --results-dir instead, not in the pytest arguments")


def _executor(kind: str, folder: Path, args: argparse.Namespace):
    try:
        import submitit
    except ModuleNotFoundError:
        raise HarnessError("python -m harness submit needs submitit: pip install 'esa-harness[slurm]'") from None
    cluster = None if kind == "auto" else kind
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": args.timeout_min, "gpus_per_node": args.gpus_per_task, "tasks_per_node": 1,
              "cpus_per_task": args.cpus_per_task, "name": "esa-harness"}
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = args.max_parallel
        if args.partition:
            params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    return executor


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness submit",
        description="Run the suites as one array job per (model, shard) through submitit (Slurm), then merge "
                    "the task stores into RESULTS_DIR/results.sqlite. Pytest arguments follow `--`.")
    p.add_argument("--model", action="append", required=True, metavar="NAME",
                   help="model name; repeatable or comma list (one task per model and shard)")
    p.add_argument("--shards", type=as_option_type(positive_int, "shards"), default=1,
                   help="shards per model (default: 1)")
    p.add_argument("--gpus-per-task", type=int, default=1, help="GPUs of each task (default: 1)")
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores of each task (default: 8)")
    p.add_argument("--max-parallel", type=as_option_type(positive_int, "max parallel"), default=8,
                   help="tasks running at once (default: 8)")
    p.add_argument("--timeout-min", type=int, default=480, help="time limit of each task in minutes (default: 480)")
    p.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    p.add_argument("--results-dir", type=Path, default=Path("results"),
                   help="merged store here; task stores under RESULTS_DIR/tasks/ (default: results/)")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                   help="auto (Slurm when sbatch is there, else local processes), slurm or local (default: auto)")
    p.add_argument("--run-id", default=None, help="run id of all tasks (default: a new id)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="-- then the pytest arguments (e.g. suites/ -k bitflip)")
    return p


def submit(args: argparse.Namespace) -> int:
    """Submit, wait, merge. Returns 0 when every task passed, 1 when tests failed, 2 when a task crashed."""
    from harness.records import merge_stores

    pytest_args = list(args.pytest_args)
    if pytest_args[:1] == ["--"]:
        pytest_args = pytest_args[1:]
    _check_args(pytest_args)
    models = list(comma_list(args.model, "model names", required=False))
    tasks = plan(models, args.shards)
    if args.max_parallel < 1 or args.gpus_per_task < 0:
        raise HarnessError("--max-parallel must be at least 1 and --gpus-per-task at least 0")
    run_id = args.run_id or new_run_id()
    results = args.results_dir.resolve()
    executor = _executor(args.executor, results / "submitit", args)
    commands = [task_command(t, pytest_args, run_id, results) for t in tasks]
    cwd = str(Path.cwd())
    # Slurm caps concurrency itself (array parallelism); local processes are started in groups of the cap
    step = len(tasks) if executor.cluster == "slurm" else args.max_parallel
    codes: dict[str, int | None] = {}
    for start in range(0, len(tasks), step):
        part = tasks[start:start + step]
        jobs = executor.map_array(run_task, commands[start:start + step], [cwd] * len(part))
        log.info("submitted %d task(s) of run %s: %s", len(jobs), run_id, ", ".join(j.job_id for j in jobs))
        for task, job in zip(part, jobs, strict=True):
            try:
                codes[task.name] = job.result()
            except Exception as err:  # a task that died (timeout, node failure): merge the others
                log.error("task %s (job %s) did not finish: %s", task.name, job.job_id, str(err).splitlines()[0])
                codes[task.name] = None
    stores = [results / "tasks" / t.name / "results.sqlite" for t in tasks]
    present = [s for s in stores if s.exists()]
    for store in sorted(set(stores) - set(present)):
        log.error("no store at %s: the task recorded nothing", store)
    if present:
        summary = merge_stores(present, results)
        log.warning("merged %d task store(s) into %s: %d rows (run %s)", len(present), summary.output,
                    summary.records, run_id)
    for name, code in codes.items():
        log.info("task %s: %s", name, "crashed" if code is None else f"pytest exit {code}")
    if any(c is None or c > 1 for c in codes.values()):
        return 2
    return 1 if any(c == 1 for c in codes.values()) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m harness submit``; user mistakes print one line and return 2."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return submit(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from harness.submit import main as _main  # run_task must pickle as harness.submit.run_task, not __main__

    sys.exit(_main())
