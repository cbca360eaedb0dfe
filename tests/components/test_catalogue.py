"""The kfp signatures (written out, as kfp reads them) held to the step catalogue and to JobSpec's fields: a
row or a JobSpec field added without its inputs, or an input without its row, fails here."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields

from components import jobs
from components.check_args import check_args
from components.evaluate import evaluate
from components.pretrain import pretrain
from components.report import run_report
from components.steps import CHECK_MEMORY, EVALUATION_STEPS, PIPELINE_STEPS, evaluation_row, report_parameter
from launch.spec import JobSpec
from pipeline.dag import unmix_swav_pipeline
from trainer import steps as catalogue

KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean", dict: "Dict", list: "List"}


def _inputs(component) -> dict[str, str]:
    return {name: spec.type for name, spec in component.component_spec.inputs.items()}


def _pipeline_parameters() -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(unmix_swav_pipeline.pipeline_func).parameters)


def _field_type(name: str) -> str:
    hints = typing.get_type_hints(JobSpec)
    return KFP_TYPES[typing.get_origin(hints[name]) or hints[name]]


def test_every_catalogue_step_has_one_pipeline_row_and_back():
    assert [row.key for row in PIPELINE_STEPS] == [row.key for row in catalogue.STEPS]
    assert [row.key for row in EVALUATION_STEPS] == [row.key for row in catalogue.EVALUATIONS]
    assert all(row.data in catalogue.DATA_FLAGS for row in catalogue.STEPS)
    assert len({row.slug for row in catalogue.STEPS}) == len(catalogue.STEPS)
    for row in EVALUATION_STEPS:  # each evaluate task finds its row again from its command and label share
        assert evaluation_row(row.step.command, row.step.labels_percent or 0) is row
    assert CHECK_MEMORY == "8Gi"
    # the export ships the head of this evaluation; its folder is no step's
    assert catalogue.step(catalogue.CLASSIFIER_STEP).command == "eval-linear"
    assert catalogue.EXPORT_FOLDER not in catalogue.BY_KEY
    # what the check step checks of each step's data: splits a staged dataset or a folder can hold
    from trainer.data.sources import SPLITS

    assert all(row.splits and set(row.splits) <= set(SPLITS) for row in catalogue.STEPS)
    assert set(catalogue.MONITOR_SPLITS) <= set(SPLITS) and catalogue.step("pretrain").splits == ("train",)
    assert all(not row.key.startswith(catalogue.EXPORT_FOLDER) for row in catalogue.STEPS)


def test_job_options_are_jobspecs_fields_and_every_launching_component_takes_them_under_those_names():
    assert set(jobs.JOB_OPTIONS) | set(jobs.PER_STEP) | set(jobs.NOT_OPTIONS) == {f.name for f in fields(JobSpec)}
    assert "job_backend" in jobs.JOB_OPTIONS and "memory_per_node" in jobs.JOB_OPTIONS
    for component in (pretrain, evaluate, check_args):
        inputs = _inputs(component)
        assert {option: inputs.get(option) for option in jobs.JOB_OPTIONS} == {
            option: _field_type(option) for option in jobs.JOB_OPTIONS}, component.name
        assert inputs["launcher"] == "String"


def test_every_job_option_and_step_parameter_is_a_pipeline_parameter_with_jobspecs_default():
    parameters = _pipeline_parameters()
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(JobSpec)}
    assert set(jobs.PIPELINE_PARAMETERS.values()) <= set(parameters)
    # the pipeline's own defaults: its image, the step pod's namespace, the GPU pool, its Secret
    own = {"image", "namespace", "node_selector", "tolerations", "s3_secret_name"}
    for option in set(jobs.JOB_OPTIONS) - own:
        assert parameters[jobs.PIPELINE_PARAMETERS[option]].default == defaults[option], option
    for row in PIPELINE_STEPS:
        assert {row.args, row.num_nodes, row.gpus_per_node} <= set(parameters), row.key
        assert parameters[row.gpus_per_node].default == defaults["gpus_per_node"]


def test_the_check_step_takes_every_steps_flags_and_sizes():
    inputs = _inputs(check_args)
    for row in PIPELINE_STEPS:
        assert inputs[row.args] == "List" and inputs[row.num_nodes] == inputs[row.gpus_per_node] == "Integer"
    assert {"images_url", "detection_url", "storage_root", "run_id", "arch", "preset", "config_url",
            "knn_monitor"} <= set(inputs)


def test_the_report_step_takes_one_url_per_step_and_one_per_twin():
    expected = {report_parameter(row.key) for row in PIPELINE_STEPS} | {
        report_parameter(row.key, baseline=True) for row in EVALUATION_STEPS}
    assert set(_inputs(run_report)) - {"run_root"} == expected
    assert report_parameter("eval-semisup-1pct", baseline=True) == "semisup_1pct_random_url"
