"""What a stage's Slurm job runs on each node (launcher/slurm_job.py: StageTask), without a cluster: the nxd stages
on trn1 run NxD's per-node script (the one tests/golden/nxd_*.node.sh pins), every other stage the plain launch."""

from __future__ import annotations

import os

from core import paths
from core.stages import Stage
from launcher.compose import compose
from launcher.nxd_env import node_command
from launcher.plan import make_plan
from launcher.slurm_executor import python_of, stage_task
from launcher.slurm_job import StageTask
from launcher.validate import resolve_run_dir

SEED_70B = ["+model=llama3_70b", "parallel=tp32_pp8", "cluster=hyperpod", "dry_run=true"]


def test_nxd_stages_on_trn1_run_the_per_node_script():
    composed = compose(SEED_70B)
    plan = make_plan(composed, resolve_run_dir(composed))
    cfg = plan.cfg
    tasks = {sp.stage: stage_task(plan, sp) for sp in plan.stages}
    for stage in (Stage.compile, Stage.train):
        script = tasks[stage].node_script
        assert script == node_command(cfg, plan.run_dir, stage, python_of(cfg), str(paths.cache_dir(cfg)))
        exec_line = script.splitlines()[-1]
        assert exec_line.startswith("exec neuron_parallel_compile " if stage == Stage.compile else "exec /")
        assert "--master_port=44000" in exec_line and "ip_local_reserved_ports" in script
        # the plan shows that command (placeholders for what each node fills in)
        shown = next(sp.command for sp in plan.stages if sp.stage == stage)
        assert shown[0] == ("neuron_parallel_compile" if stage == Stage.compile else python_of(cfg))
        assert "--master_port=44000" in shown and shown[-3:] == ["launcher.job", str(plan.run_dir), stage.value]
    for stage in (Stage.download, Stage.data, Stage.convert, Stage.export):
        assert tasks[stage].node_script == "", stage


def test_cpu_stages_have_no_node_script():
    composed = compose(["parallel=cpu_dp2", "cluster=slurm", "cluster.accelerator=cpu", "dry_run=true"])
    plan = make_plan(composed, resolve_run_dir(composed))
    assert all(stage_task(plan, sp).node_script == "" for sp in plan.stages)


def test_the_task_runs_its_node_script_with_bash(tmp_path, monkeypatch):
    out = tmp_path / "ran"
    monkeypatch.setenv("SLURM_NODEID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    task = StageTask(
        run_dir=str(tmp_path),
        stage="compile",
        nodes=16,
        procs=32,
        max_requeues=0,
        node_script=f'export X=1\necho "node $SLURM_NODEID x $X" > {out}\nexec true',
    )
    (tmp_path / "stages" / "compile").mkdir(parents=True)
    result = task()
    assert out.read_text() == "node 3 x 1\n" and result["state"] == "completed"
    assert os.environ.get("X") is None


def test_the_plan_shows_the_interpreter_the_jobs_run():
    argv = ["parallel=cpu_dp2", "cluster=slurm", "cluster.accelerator=cpu", "cluster.python=/opt/venv/bin/python"]
    composed = compose([*argv, "dry_run=true"])
    plan = make_plan(composed, resolve_run_dir(composed))
    assert {sp.command[0] for sp in plan.stages} == {"/opt/venv/bin/python"}
    local = compose(["cluster.python=/opt/venv/bin/python", "dry_run=true"])  # local runs use this interpreter
    assert python_of(local.cfg) != "/opt/venv/bin/python"
