"""The time from each first-run mistake on a Kubeflow cluster (issue 27) to its one-line refusal.

Each mistake is made as a user makes it: a real command line in a fresh process, timed from the process's
start to its exit (imports included), with its exit code and its `error:` line. `python -m pipeline submit |
compile | job-manifest` and `python -m trainer` run as typed; the stage, check and pretrain (launching) steps
run as their pods run them: the compiled pipeline's own container command for the step (`sh -ec ... python3 -m
kfp.dsl.executor_main`, from pipeline/unmix_swav_pipeline.yaml) with the executor input the KFP driver would
give it, wired from the compiled defaults and the row's `--param`s.

No Kubeflow here: where a server is needed, the TEST STUBS on loopback answer (127.0.0.1 only):
tests/pipeline/fake_kfp_api.py (a Kubeflow Pipelines API answering 401 / 403 / 404) and
tests/launch/fake_kube_api.py (a Kubernetes API server with a missing CRD, a forbidden verb, an unknown
namespace, a webhook refusing an unknown ClusterTrainingRuntime, a job whose pod exits 2), reached through a
kubeconfig as the launcher's own client reaches a cluster; moto's S3 server on loopback for the stage step (the
endpoint an S3 Secret names). Run storage is a local folder; the datasets are generated and staged here with
the product's own staging (components/staged.py).

Each row's contract is checked: exit code 2 (unless the row says otherwise), exactly one `error:` line (the
check step prints one per failing step and a summary; its rows say how many), the row's expected words in the
first line, no Traceback. A broken contract prints FAIL in the row and the script exits 1. Prints
measurements only: seconds are the median of `--repeats` runs, on a shared machine.

    python benchmarks/bench_first_run.py [--repeats 3] [--markdown] [--width 110] [--only WORD]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_data import loopback_s3  # noqa: E402

from tests.launch.fake_kube_api import FakeKubeApi, condition, unknown_runtime_denial  # noqa: E402  (test stub, loopback)
from tests.pipeline.fake_kfp_api import FakeKfpApi  # noqa: E402  (test stub, loopback)
from tests.servers import free_port  # noqa: E402

COMPILED = REPO / "pipeline" / "unmix_swav_pipeline.yaml"
RUN_ID = "3f1c0a2e-0000-4000-8000-00000000b1a5"  # what {{$.pipeline_job_uuid}} becomes


@dataclass
class Mistake:
    what: str
    shown: str  # the command, short, as the user typed it (or the step that ran)
    argv: list[str]  # the process's command line
    expect: str  # words the first `error:` line must hold (it is this refusal, not another failure)
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    errors: int = 1  # `error:` lines the contract allows
    cwd: Path = REPO


@dataclass
class Outcome:
    seconds: list[float]
    codes: list[int]
    output: str  # stdout + stderr of the last run

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error:")]

    def broken(self, mistake: Mistake) -> list[str]:
        """What the run broke of the row's contract (empty when it kept it)."""
        problems = []
        if set(self.codes) != {mistake.code}:
            problems.append(f"exit {sorted(set(self.codes))}, not {mistake.code}")
        if len(self.error_lines) != mistake.errors:
            problems.append(f"{len(self.error_lines)} error: lines, not {mistake.errors}")
        if self.error_lines and mistake.expect not in self.error_lines[0]:
            problems.append(f"first error: line lacks {mistake.expect!r}")
        if "Traceback" in self.output:
            problems.append("a Traceback")
        return problems


def clean_env(work: Path) -> dict[str, str]:
    """This machine's environment without ambient credentials or cluster settings; the repo on the path;
    `python3` (the step's container command calls it) is this interpreter."""
    dropped = ("KF_PIPELINES_", "KUBERNETES_", "AWS_", "KUBECONFIG", "HOSTNAME", "UNMIX_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(work / "home"),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}",
               KF_PIPELINES_SA_TOKEN_PATH=str(work / "no-pod-token"))  # not in a pod
    return env


def measure(mistake: Mistake, env: dict[str, str], repeats: int) -> Outcome:
    seconds, codes, output = [], [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(mistake.argv, cwd=mistake.cwd, env={**env, **mistake.env}, capture_output=True, text=True,
                              timeout=600)
        seconds.append(time.perf_counter() - started)
        codes.append(done.returncode)
        output = done.stdout + done.stderr
    return Outcome(seconds, codes, output)


# --- the compiled pipeline's steps, run as their pods run them ---------------------------------------------

class CompiledStep:
    """One task of the compiled pipeline: its container command, and its executor input wired as the KFP driver
    wires it (pipeline parameters: the compiled defaults, then the row's; upstream outputs given)."""

    def __init__(self, task: str, work: Path) -> None:
        pipeline = next(yaml.safe_load_all(COMPILED.read_text(encoding="utf-8")))
        self.task = pipeline["root"]["dag"]["tasks"][task]
        component = pipeline["components"][self.task["componentRef"]["name"]]
        executor = pipeline["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        self.command, self.args = executor["command"], executor["args"]
        self.outputs = component.get("outputDefinitions", {}).get("artifacts", {})
        self.defaults = {name: parameter.get("defaultValue")
                         for name, parameter in pipeline["root"]["inputDefinitions"]["parameters"].items()}
        self.name, self.work = task, work

    def argv(self, label: str, params: dict[str, Any], upstream: dict[str, str]) -> list[str]:
        values = {**self.defaults, **params}
        inputs = {}
        for name, source in self.task["inputs"]["parameters"].items():
            if "componentInputParameter" in source:
                inputs[name] = values[source["componentInputParameter"]]
            elif "taskOutputParameter" in source:
                inputs[name] = upstream[source["taskOutputParameter"]["outputParameterKey"]]
            else:
                constant = source["runtimeValue"]["constant"]
                inputs[name] = RUN_ID if constant == "{{$.pipeline_job_uuid}}" else constant
        outputs = self.work / "kfp" / label
        artifacts = {name: {"artifacts": [{"name": name, "uri": str(outputs / name), "metadata": {},
                                           "type": {"schemaTitle": kind["artifactType"]["schemaTitle"]}}]}
                     for name, kind in self.outputs.items()}
        executor_input = {"inputs": {"parameterValues": inputs},
                          "outputs": {"artifacts": artifacts, "outputFile": str(outputs / "executor_output.json")}}
        return [*self.command, *(json.dumps(executor_input) if arg == "{{$}}" else arg for arg in self.args)]


def kubeconfig(path: Path, api: FakeKubeApi) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": api.host}}],
        "users": [{"name": "me", "user": {"token": "stub-token"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me", "namespace": api.namespace}}]}))
    return path


def stage_datasets(work: Path) -> dict[str, str]:
    """Generated images staged with the product's staging: train and val, and train only (the seed's habit:
    --data_path /path/to/imagenet/train); a generated COCO-format detection set."""
    from components.staged import stage_images
    from trainer.data.synthetic import make_shapes
    from trainer.detr.synthetic_coco import make_shapes_coco

    make_shapes(str(work / "shapes"), num_classes=4, train_per_class=8, val_per_class=2, image_size=16, seed=0)
    make_shapes_coco(str(work / "coco"), train_images=2, val_images=1, image_size=32, seed=0)
    storage_root = str(work / "storage")
    return {"both": stage_images(storage_root, str(work / "shapes"), ["--workers", "1"]),
            "train_only": stage_images(storage_root, str(work / "shapes" / "train"), ["--workers", "1"]),
            "coco": str(work / "coco"), "storage_root": storage_root}


# --- the mistakes ------------------------------------------------------------------------------------------

PY = [sys.executable]
PIPELINE = [*PY, "-m", "pipeline"]
SUBMIT = [*PIPELINE, "submit", "--package", str(COMPILED)]  # the repo's copy: compile's output may not exist
TRAINER_FLAGS = ["--", "--data_path", "s3://bucket/imagenet", "--dump_path", "s3://bucket/runs/r1/pretrain"]


def submit_rows(stack: ExitStack, work: Path) -> list[Mistake]:
    def stub(status: int = 200) -> FakeKfpApi:
        return stack.enter_context(FakeKfpApi(status=status))  # test stub, loopback

    closed = free_port()  # nothing listens on it
    return [
        Mistake("submit: no token (401)", "submit --host H", [*SUBMIT, "--host", stub(401).host],
                "(401)"),
        Mistake("submit: account not in the profile (403)", "submit --host H --namespace team-a ($TOKEN)",
                [*SUBMIT, "--host", stub(403).host, "--namespace", "team-a"], "(403)",
                env={"KF_PIPELINES_TOKEN": "tok"}),
        Mistake("submit: wrong host path (404)", "submit --host H/wrong",
                [*SUBMIT, "--host", stub().host + "/wrong"], "(404"),
        Mistake("submit: connection refused", "submit --host http://127.0.0.1:CLOSED",
                [*SUBMIT, "--host", f"http://127.0.0.1:{closed}"], "could not reach"),
        Mistake("submit: unknown --param name", "submit --host H --param num_nodez=2",
                [*SUBMIT, "--host", stub().host, "--param", "num_nodez=2"], "not a pipeline parameter"),
        *(Mistake(f"submit: --param {param}", f"submit --host H --param {param}",
                  [*SUBMIT, "--host", stub().host, "--param", param], expect)
          for param, expect in (("gpus_per_node=four", "takes a whole number"),
                                ("job_backend=TrainJob", "use one of pytorchjob, trainjob"))),
        Mistake("submit: IRSA (s3_secret_name empty) with a package that mounts the Secret",
                "submit --host H --param s3_secret_name=", [*SUBMIT, "--host", stub().host, "--param",
                                                            "s3_secret_name="], "--s3-credentials pod-identity"),
        Mistake("submit: nothing compiled yet", "submit --host H (no build/)",
                [*PIPELINE, "submit", "--host", stub().host], "run `python -m pipeline compile",
                cwd=work),  # where no build/ is
    ]


def compile_rows(work: Path) -> list[Mistake]:
    out = str(work / "compiled.yaml")  # never the repository's copy
    return [Mistake(f"compile: --param {param}", f"compile --param {param}",
                    [*PIPELINE, "compile", "--output", out, "--param", param], expect)
            for param, expect in (("gpus_per_node=four", "takes a whole number"),
                                  ("job_backend=TrainJob", "use one of pytorchjob, trainjob"),
                                  ("num_nodez=2", "not a pipeline parameter"))]


def stage_rows(work: Path, s3: dict[str, str]) -> list[Mistake]:
    """The stage step runs first in the DAG: it is the first to use storage_root and staged_data."""
    step = CompiledStep("stage-data", work)
    return [
        Mistake("stage step: storage_root left at s3://CHANGE-ME", "stage-data (compiled defaults)",
                step.argv("stage-placeholder", {}, {}), "storage_root is s3://CHANGE-ME", env=s3),
        Mistake("stage step: staged_data names no staged dataset", "stage-data, staged_data=<a folder>",
                step.argv("stage-typo", {"storage_root": str(work / "runs" / "stage-typo"),
                                         "staged_data": str(work / "shapes")}, {}),
                "holds no manifest.json", env=s3),
    ]


def check_rows(work: Path, data: dict[str, str], cluster: dict[str, str]) -> list[Mistake]:
    step = CompiledStep("check-args", work)
    upstream = {"images_url": data["both"], "detection_url": data["coco"]}
    ready = {"storage_root": data["storage_root"]}
    steps_reading_val = 4  # kNN, linear, semi-supervised 1% and 10%; the check step adds its summary line
    return [
        Mistake("check step: storage_root left at s3://CHANGE-ME", "check-args (compiled defaults)",
                step.argv("placeholder", {}, upstream), "storage_root is s3://CHANGE-ME", env=cluster),
        Mistake("check step: staged dataset without val/ (train only)",
                "check-args, images_url=<staged from train/ only>",
                step.argv("train-only", ready, {**upstream, "images_url": data["train_only"]}),
                "has no 'val' split", env=cluster, errors=steps_reading_val + 1),
        Mistake("check step: seed's --queue_length 3840 at 2 nodes x 8 GPUs",
                "check-args, pretrain_args=[--queue_length 3840]",
                step.argv("queue", {**ready, "pretrain_args": ["--queue_length", "3840"]}, upstream),
                "--queue_length 3840", env=cluster, errors=2),
    ]


def launcher_rows(stack: ExitStack, work: Path, data: dict[str, str], base_env: dict[str, str]) -> list[Mistake]:
    step = CompiledStep("pretrain", work)
    upstream = {"images_url": data["both"]}

    def cluster(label: str, namespace: str = "ml", backend: str = "trainjob",
                create_error: tuple[int, Any] | None = None) -> tuple[FakeKubeApi, dict[str, str]]:
        api = stack.enter_context(FakeKubeApi(namespace=namespace, backend=backend))  # test stub, loopback
        api.create_error = create_error
        return api, {"KUBECONFIG": str(kubeconfig(work / f"kubeconfig-{label}", api))}

    def forbidden(message: str) -> tuple[int, Any]:
        return 403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                     "message": message}

    def run_root(label: str) -> dict[str, str]:  # each row its own root: one run's failure marker is its own
        return {"storage_root": str(work / "runs" / label)}

    rows = []
    for label, what, extra, namespace, error, expect in (
            ("crd", "launcher: TrainJob CRD not installed (404)", {}, "ml", (404, "404 page not found"),
             "does not serve trainjobs"),
            ("rbac", "launcher: create trainjobs forbidden (403)", {}, "ml", forbidden(
                'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:ml:default-editor" cannot '
                'create resource "trainjobs" in API group "trainer.kubeflow.org" in the namespace "ml"'),
             "is forbidden"),
            ("namespace", "launcher: unknown namespace", {"namespace": "team-b"}, "team-b", (404, {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": 'namespaces "team-b" not found', "details": {"name": "team-b", "kind": "namespaces"}}),
             "namespace 'team-b' does not exist"),
            ("runtime", "launcher: unknown ClusterTrainingRuntime", {"training_runtime": "torch-distributed"}, "ml",
             unknown_runtime_denial("torch-distributed"), "denied by an admission webhook")):
        _, env = cluster(label, namespace, create_error=error)
        shown = ", ".join(f"{name}={value}" for name, value in extra.items()) or "compiled defaults"
        argv = step.argv(label, {**run_root(label), **extra}, upstream)
        rows.append(Mistake(what, f"pretrain step, {shown}", argv, expect, env=env))

    # A retried launching step: the first attempt's job failed permanently (its pod exited 2), for real.
    api, env = cluster("retry", backend="pytorchjob")
    api.master_phase, api.master_terminated = "Failed", {"exitCode": 2, "reason": "Error"}
    api.statuses = [{"conditions": [condition("Running"), condition("Failed", "PyTorchJobFailed", "failed")]}]
    retried = Mistake("launcher: retry after a permanent failure (exit 2)", "pretrain step, kfp's retry",
                      step.argv("retry", {**run_root("retry"), "job_backend": "pytorchjob"}, upstream),
                      "earlier attempt of this step failed permanently", env=env)
    first = measure(retried, base_env, 1)
    print(f"[setup] retry row: the first attempt's job failed with exit {first.codes[0]} in {first.seconds[0]:.1f}s "
          f"({len(api.created)} job created)", flush=True)
    return [*rows, retried]


def manifest_rows() -> list[Mistake]:
    manifest = [*PIPELINE, "job-manifest", "pretrain"]
    return [
        Mistake("job-manifest: bad image reference", "job-manifest pretrain --image Registry.Example/Trainer:Latest",
                [*manifest, "--image", "Registry.Example/Trainer:Latest", *TRAINER_FLAGS], "image "),
        Mistake("job-manifest: bad toleration effect", "job-manifest pretrain --toleration nvidia.com/gpu:NoScheduled",
                [*manifest, "--toleration", "nvidia.com/gpu:NoScheduled", *TRAINER_FLAGS], "effect 'NoScheduled'"),
        Mistake("trainer env: RANK >= WORLD_SIZE", "RANK=2 WORLD_SIZE=2 python -m trainer pretrain ...",
                [*PY, "-m", "trainer", "pretrain", "--data_path", "/data/imagenet/train", "--dump_path", "/tmp/run"],
                "is not below WORLD_SIZE=2", env={"RANK": "2", "WORLD_SIZE": "2"}),
    ]


def tail(text: str, last: int = 15) -> str:
    return "\n".join("      " + line for line in text.splitlines()[-last:])


def shorten(line: str, width: int) -> str:
    return line if width <= 0 or len(line) <= width else line[:width - 3] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mistake; the median is printed")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--width", type=int, default=110, help="first error: line's width (0: whole)")
    parser.add_argument("--only", default="", help="only the mistakes whose description contains this word")
    args = parser.parse_args()

    results: list[tuple[Mistake, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="unmix-bench-first-run-") as folder, ExitStack() as stack:
        work = Path(folder)
        (work / "home").mkdir()
        env = clean_env(work)
        started = time.perf_counter()
        data = stage_datasets(work)
        complete = stack.enter_context(FakeKubeApi(namespace="ml", backend="trainjob")).complete_cluster()
        cluster = {"KUBECONFIG": str(kubeconfig(work / "kubeconfig", complete))}
        endpoint = stack.enter_context(loopback_s3(None))  # moto on loopback: what the S3 Secret would name
        # a pod gets these from the S3 Secret; values no path contains (error lines mask the credentials)
        s3 = {"AWS_ACCESS_KEY_ID": "stub-key-id", "AWS_SECRET_ACCESS_KEY": "stub-secret", "AWS_REGION": "us-east-1",
              "AWS_ENDPOINT_URL": endpoint}
        print(f"[setup] datasets staged in {time.perf_counter() - started:.1f}s under {work}", flush=True)
        rows = [*submit_rows(stack, work), *compile_rows(work), *stage_rows(work, s3), *check_rows(work, data, cluster),
                *launcher_rows(stack, work, data, env), *manifest_rows()]
        rows = [row for row in rows if args.only.lower() in row.what.lower()]
        print(f"{len(rows)} mistakes, {args.repeats} run(s) each, median seconds from process start to exit\n")
        print(f"{'mistake':<58} {'exit':>4} {'s':>6}  first error: line")
        for mistake in rows:
            outcome = measure(mistake, env, args.repeats)
            results.append((mistake, outcome))
            broken = outcome.broken(mistake)
            first = outcome.error_lines[0] if outcome.error_lines else "(no error: line)"
            print(f"{mistake.what:<58} {outcome.codes[-1]:>4} {statistics.median(outcome.seconds):6.2f}  "
                  f"{shorten(first, args.width)}", flush=True)
            if broken:  # what the process printed last, to see why
                print(f"    FAIL: {'; '.join(broken)}\n    $ {mistake.shown}\n{tail(outcome.output)}", flush=True)
    if args.markdown:
        print("\n| mistake | command | exit | s (median) | first `error:` line |\n|---|---|---|---|---|")
        for mistake, outcome in results:
            first = shorten(outcome.error_lines[0] if outcome.error_lines else "(none)", args.width).replace("|", "\\|")
            verdict = "" if not outcome.broken(mistake) else " **FAIL**"
            print(f"| {mistake.what}{verdict} | `{mistake.shown}` | {outcome.codes[-1]} | "
                  f"{statistics.median(outcome.seconds):.2f} | {first} |")
    failed = [mistake.what for mistake, outcome in results if outcome.broken(mistake)]
    print(f"\n{len(results) - len(failed)} of {len(results)} rows kept their contract" +
          (f"; FAIL: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
