"""The shipped launch scripts, checked without a cluster or a GPU: the SLURM example renders to valid llmkit
commands (srun and scontrol stubbed), and benchmarks/gpu_check.sh keeps its stages within the machine's 480 s."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_slurm_example_renders_one_valid_launch_per_machine(tmp_path):
    from llmkit.environment import Machines, check_machines, check_processes

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a17\\ngpu-a18\\n'\n")
    # srun: run the task once per node, as SLURM would, with that node's SLURM_NODEID
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'for id in 0 1; do SLURM_NODEID=$id "$@"; done\n')
    (bin_dir / "llmkit").write_text('#!/bin/sh\necho llmkit "$@"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_NNODES": "2", "SLURM_JOB_NAME": "mlm", "SLURM_GPUS_ON_NODE": "8", "RESUME": "--resume"}
    result = subprocess.run(["bash", str(ROOT / "recipes" / "slurm" / "pretrain.sbatch")], env=env,
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        args = shlex.split(line)
        value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
        assert args[:3] == ["llmkit", "pretrain", "bert-base-gpu"] and "--resume" in args
        assert value("-o") == str(tmp_path / "runs" / "mlm")
        machines = Machines(int(value("--num-machines")), int(value("--machine-rank")), value("--main-process-ip"),
                            int(value("--main-process-port")))
        assert machines == Machines(2, rank, "gpu-a17", 29500)
        check_machines(machines)  # what llmkit checks before launching
        check_processes(int(value("--num-processes")), gpus=8, machines=2)  # 16 = 2 machines x 8 GPUs


def test_gpu_check_stages_fit_the_machines_limit():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    budgets = [int(b) for b in re.findall(r'^stage "[^"]+" (\d+) ', script, re.M)]
    assert len(budgets) == 4 and sum(budgets) + 5 * len(budgets) <= 480, budgets  # + each stage's kill grace
    assert "benchmarks/results" not in script and 'out="${OUT:-$(mktemp -d /tmp/' in script  # outside the tree


@pytest.mark.skipif(not os.environ.get("LLMKIT_GPU_DRY_RUN_PYTHON"), reason="needs a virtual environment like the "
                    "GPU machine's (no datasets/evaluate): LLMKIT_GPU_DRY_RUN_PYTHON=venv/bin/python; ~2.5 min")
def test_gpu_check_dry_run_passes_in_an_environment_like_the_gpu_machines(tmp_path):
    python = os.environ["LLMKIT_GPU_DRY_RUN_PYTHON"]
    tag = subprocess.run([python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True).stdout.strip()
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), tag], check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                            text=True, timeout=600, env={**env, "PYTHON": python, "OUT": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-5000:]
    for figure in ("llmkit-bert", "hf-bert", "llmkit-modernbert", "hf-modernbert", "llmkit-finetune",
                   "hf-finetune", "llmkit-fill-mask", "pipeline-fill-mask", "llmkit-predict", "pipeline-predict"):
        assert re.search(rf"^  {figure} +[\d,]+ ", result.stdout, re.M), figure
    assert (tmp_path / "gpu-check-dry.log").is_file()


def test_any_free_port_is_refused_over_several_machines():
    """Each machine would pick its own free port and they would never meet."""
    from llmkit.environment import Machines, check_machines
    from llmkit.errors import ConfigError

    check_machines(Machines(1, None, None, 0))
    with pytest.raises(ConfigError, match="works on one machine only"):
        check_machines(Machines(2, 0, "10.0.0.1", 0))
