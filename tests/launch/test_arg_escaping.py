"""A trainer flag holding `$(NAME)` reaches the trainer literally: both backends render it escaped (`$$(`), so
the kubelet's $(VAR) expansion gives it back unchanged instead of the container's variable (a path holding
`$(AWS_SECRET_ACCESS_KEY)` would otherwise put the secret into argv, params.json and the logs). The local
harness applies the kubelet's rule (launch.local.expand_kubernetes_vars) and gets the same argv. Only the
product's own placeholders (the PyTorchJob's rendezvous flags) stay live."""

from __future__ import annotations

import pytest
import yaml

from launch import k8s_names
from launch.backends import build_job, to_manifest
from launch.local import expand_kubernetes_vars, plan_replicas
from launch.spec import BACKENDS, JobSpec
from pipeline.__main__ import main as pipeline_main

SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "HOME": "/home/x", "MASTER_ADDR": "10.0.0.7"}
LITERALS = ["s3://b/$(AWS_SECRET_ACCESS_KEY)/run", "$(HOME)", "$$(HOME)", "a$$b", "$", "$$", "cost$5", "$(",
            "$$$(HOME)", "((x))", "$(not a name)", "plain"]


@pytest.mark.parametrize("text", LITERALS)
def test_the_kubelets_expansion_of_an_escaped_string_gives_the_string_back(text):
    assert expand_kubernetes_vars(k8s_names.escape_vars(text), SECRET_ENV) == text


def _spec(backend: str, trainer_args: list[str]) -> JobSpec:
    return JobSpec(command="pretrain", name="unmix-pretrain-esc", image="t", num_nodes=2, gpus_per_node=0,
                   s3_secret_name="unmix-swav-s3", job_backend=backend, trainer_args=tuple(trainer_args))


def _rendered_argv(manifest: dict, backend: str) -> list[str]:
    if backend == "trainjob":
        trainer = manifest["spec"]["trainer"]
        return [*trainer["command"], *trainer["args"]]
    container = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_render_a_secret_reference_escaped_and_the_harness_gets_the_literal(backend):
    args = ["--data_path", "s3://b/$(AWS_SECRET_ACCESS_KEY)/data", "--dump_path", "s3://b/run"]
    job = build_job(_spec(backend, args))
    argv = _rendered_argv(to_manifest(job), backend)
    trainer_part = argv[argv.index("trainer") + 2:]
    assert trainer_part[1] == "s3://b/$$(AWS_SECRET_ACCESS_KEY)/data"
    # As the kubelet expands it with the Secret's value in the container's env: the literal survives.
    assert [expand_kubernetes_vars(arg, SECRET_ENV) for arg in trainer_part] == args
    live = [arg for arg in argv if "$(" in arg.replace("$$(", "")]
    assert live == (["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
                    if backend == "pytorchjob" else [])
    for replica in plan_replicas(job, master_port=29577):
        assert replica.command[-len(args):] == args


def test_job_manifest_writes_escaped_args_and_the_typed_command_in_its_header(tmp_path, capsys):
    output = tmp_path / "job.yaml"
    typed = ["--data_path", "s3://b/$(AWS_SECRET_ACCESS_KEY)", "--dump_path", "s3://b/run"]
    assert pipeline_main(["job-manifest", "pretrain", "--backend", "pytorchjob", "--no-check", "--output", str(output),
                          "--", *typed]) == 0
    text = output.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "$(AWS_SECRET_ACCESS_KEY)" in header  # the command as typed; the kubelet never reads comments
    args = yaml.safe_load(text)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert "s3://b/$$(AWS_SECRET_ACCESS_KEY)" in args and "s3://b/$(AWS_SECRET_ACCESS_KEY)" not in args
