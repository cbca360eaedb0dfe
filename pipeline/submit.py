"""`python -m pipeline submit --host URL`: create a run of the compiled pipeline with kfp.Client."""

from __future__ import annotations

from pathlib import Path

from pipeline.compile import COMPILED_PATH, parse_params
from trainer.errors import UserError
from trainer.run.boundary import one_line


def add_arguments(parser) -> None:
    parser.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint")
    parser.add_argument("--package", type=Path, default=COMPILED_PATH, help="compiled pipeline YAML")
    parser.add_argument("--experiment", default="unmix-swav")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user)")
    parser.add_argument("--service-account", default="unmix-swav-launcher",
                        help="runs the steps; needs the Role in k8s/ to manage PyTorchJobs (or TrainJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter (repeatable), e.g. storage_root=s3://bucket/runs")


def run(args) -> None:
    import kfp
    import urllib3

    if not args.package.exists():
        raise UserError(f"{args.package} does not exist; run `python -m pipeline compile` first")
    arguments = parse_params(args.param)
    try:
        client = kfp.Client(host=args.host, namespace=args.namespace)
        result = client.create_run_from_pipeline_package(
            str(args.package), arguments=arguments, run_name=args.run_name, experiment_name=args.experiment,
            namespace=args.namespace, service_account=args.service_account)
    except (OSError, urllib3.exceptions.HTTPError) as error:  # refused, unknown host, timeout, TLS
        raise UserError(f"could not reach Kubeflow Pipelines at --host {args.host} ({one_line(error)}); check the "
                        "URL, e.g. `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and "
                        "--host http://localhost:8080") from error
    print(f"created run {result.run_id} on {args.host}")
