"""`python -m pipeline submit`: create a run of the compiled pipeline on Kubeflow Pipelines with kfp.Client.

Credentials, the ways Kubeflow Pipelines takes them (kfp.Client's own options, nothing of ours on the wire):
a bearer token (`--token-file`, `$KF_PIPELINES_TOKEN`, `--token`; e.g. `kubectl create token default-editor -n
PROFILE --audience pipelines.kubeflow.org`), in a pod the projected pipelines token kfp knows
($KF_PIPELINES_SA_TOKEN_PATH or /var/run/secrets/kubeflow/pipelines/token), the session cookie of a multi-user
front door (`--cookies 'authservice_session=...'`, or oauth2-proxy's), or, without `--host`, the kubeconfig's
token through the API server's service proxy (`--kube-context`, `--kfp-namespace`); in a pod without `--host`,
kfp's in-cluster address. Before anything is uploaded, `--param` names, types and choices are checked
against the pipeline (as compile checks them) and one GET of the healthz endpoint (no retries, bounded by
PROBE_TIMEOUT) turns 401 / 403 / 404 / a login redirect / no answer into one line naming the fix.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launch.k8s_names import check_dns_label
from pipeline.compile import DEFAULT_OUTPUT, POD_IDENTITY, check_parameters, parse_params
from pipeline.platform import mounts_s3_secret
from trainer.errors import UserError
from trainer.run.boundary import one_line

TOKEN_ENV = "KF_PIPELINES_TOKEN"
PROBE_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds of the healthz probe
HEALTHZ = "/apis/v2beta1/healthz"
_PORT_FORWARD = "e.g. `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and --host http://localhost:8080"
_CREDENTIALS = (f"pass a token (--token-file FILE or ${TOKEN_ENV}; e.g. `kubectl create token default-editor -n "
                "PROFILE --audience pipelines.kubeflow.org`) or the front door's session cookie (--cookies "
                "'authservice_session=...' from your browser)")


def add_arguments(parser) -> None:
    parser.add_argument("--host", default=None,
                        help="Kubeflow Pipelines API endpoint (default $KF_PIPELINES_ENDPOINT; none: through the "
                             "Kubernetes API server's proxy with the kubeconfig's credentials, or in-cluster)")
    parser.add_argument("--package", type=Path, default=DEFAULT_OUTPUT,
                        help="compiled pipeline YAML (default: %(default)s, what `python -m pipeline compile` writes)")
    parser.add_argument("--experiment", default="unmix-swav")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user)")
    parser.add_argument("--service-account", default=None,
                        help="the account the steps run as (default: Kubeflow Pipelines' own, default-editor in a "
                             "profile namespace, pipeline-runner single-user; k8s/kubeflow-profile grants either the "
                             "launcher's rights over TrainJobs or PyTorchJobs)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter (repeatable), e.g. storage_root=s3://bucket/runs")
    parser.add_argument("--token-file", type=Path, default=None, help="file holding a bearer token")
    parser.add_argument("--token", default=None,
                        help=f"bearer token (visible to other users in `ps`: prefer --token-file or ${TOKEN_ENV})")
    parser.add_argument("--cookies", default=None,
                        help="Cookie header for a multi-user front door, e.g. 'authservice_session=...'")
    parser.add_argument("--kube-context", default=None, help="kubeconfig context (without --host)")
    parser.add_argument("--kfp-namespace", default="kubeflow",
                        help="namespace Kubeflow Pipelines runs in (the proxy path without --host)")


def bearer_token(args) -> tuple[str | None, str]:
    """The explicit token and where it came from: --token, --token-file, then $KF_PIPELINES_TOKEN."""
    if args.token:
        return args.token.strip(), "--token"
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise UserError(f"--token-file {args.token_file} cannot be read ({one_line(error)}); write the token "
                            "there or pass it in $KF_PIPELINES_TOKEN") from error
        if not token:
            raise UserError(f"--token-file {args.token_file} is empty; write the bearer token into it")
        return token, "--token-file"
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    return None, ""


def _pod_token_path() -> Path | None:
    """The projected pipelines token kfp reads in a pod (ServiceAccountTokenVolumeCredentials), if present."""
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH

    path = Path(os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH)
    return path if path.is_file() else None


def refusal(status: int, host: str, namespace: str | None, how: str) -> UserError:
    """The one line for an HTTP status from Kubeflow Pipelines (or its front door)."""
    sent = f" (sent: {how})" if how else " (no credentials sent)"
    if status == 401:
        return UserError(f"Kubeflow Pipelines at {host} refused the credentials (401){sent}; {_CREDENTIALS}")
    if status == 403:
        where = f"namespace {namespace}" if namespace else "the default namespace (pass --namespace PROFILE)"
        return UserError(f"Kubeflow Pipelines at {host} forbids this account to create runs in {where} (403){sent}; "
                         "ask the profile's owner to add you as a contributor, or use a token of an account that "
                         "is one")
    if status == 404:
        return UserError(f"no Kubeflow Pipelines API at {host} (404 on {HEALTHZ}); --host is the pipelines "
                         f"endpoint, e.g. https://kubeflow.example.com/pipeline or, {_PORT_FORWARD}")
    if 300 <= status < 400:
        return UserError(f"{host} redirects to a login page ({status}): a front door (Dex, oauth2-proxy) wants a "
                         f"session; {_CREDENTIALS}")
    return UserError(f"Kubeflow Pipelines at {host} answered {status}; check that its ml-pipeline service runs "
                     "(kubectl get pods -n kubeflow) and try again")


def probe(host: str, token: str | None, cookies: str | None, namespace: str | None, how: str,
          ca_cert: str | None = None) -> dict[str, Any]:
    """One GET of the healthz endpoint as kfp will call it; its JSON (e.g. multi_user), or a UserError."""
    import urllib3

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookies:
        headers["Cookie"] = cookies
    try:
        pool = urllib3.PoolManager(ca_certs=ca_cert) if ca_cert else urllib3.PoolManager()
        response = pool.request(
            "GET", host.rstrip("/") + HEALTHZ, headers=headers, redirect=False, retries=False,
            timeout=urllib3.Timeout(connect=PROBE_TIMEOUT[0], read=PROBE_TIMEOUT[1]))
    except (OSError, urllib3.exceptions.HTTPError, ValueError) as error:  # refused, unknown host, timeout, TLS
        raise UserError(f"could not reach Kubeflow Pipelines at --host {host} ({one_line(error)}); check the URL, "
                        f"{_PORT_FORWARD}") from error
    if response.status != 200:
        raise refusal(response.status, host, namespace, how)
    try:
        return json.loads(response.data)
    except ValueError as error:  # an HTML login page with 200
        raise UserError(f"{host}{HEALTHZ} answered a page, not the pipelines API (a login page of a front door?); "
                        f"{_CREDENTIALS}") from error


@contextmanager
def _quiet_kfp():
    """kfp logs a full response dump (logging.exception) per failed attempt and warns about server versions:
    the one line below says it all."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logging.disable(previous)


def _in_a_pod() -> bool:
    from kubernetes import client, config

    try:
        config.load_incluster_config(client_configuration=client.Configuration())
    except config.ConfigException:
        return False
    return True


def through_kube_proxy(context: str | None, kfp_namespace: str) -> tuple[str, str | None, str | None]:
    """(host, bearer token, CA file) of ml-pipeline behind the Kubernetes API server's service proxy, with the
    kubeconfig's credentials. Computed here because kfp's own no-host path loses the proxy path: the kubeconfig
    loader's token refresh hook sets the bare server address again before each request."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(context=context, client_configuration=configuration)
    except (config.ConfigException, OSError) as error:
        raise UserError(f"no --host, and no Kubernetes credentials to reach Kubeflow Pipelines through "
                        f"({one_line(error)}); pass --host URL ({_PORT_FORWARD.removeprefix('e.g. ')}) or set "
                        "KUBECONFIG") from error
    token = (configuration.api_key.get("authorization") or "").removeprefix("Bearer ").strip() or None
    if token is None and configuration.cert_file:
        raise UserError("the kubeconfig's user authenticates with a client certificate, which kfp.Client cannot "
                        f"present; pass --host URL ({_PORT_FORWARD.removeprefix('e.g. ')})")
    host = f"{configuration.host.rstrip('/')}/api/v1/namespaces/{kfp_namespace}/services/ml-pipeline:http/proxy"
    return host, token, configuration.ssl_ca_cert


def check_package(package: Path, arguments: dict[str, Any]) -> None:
    """The package exists, is a compiled pipeline, and can run with these arguments: steps compiled to mount the S3
    Secret cannot take an empty `s3_secret_name` (Kubernetes refuses a Secret reference without a name)."""
    import yaml

    if not package.exists():
        raise UserError(f"{package} does not exist; run `python -m pipeline compile --image REG/unmix-swav:TAG` "
                        "first (it writes it), or pass --package")
    try:
        spec, *platform = yaml.safe_load_all(package.read_text(encoding="utf-8"))
        default_secret = spec["root"]["inputDefinitions"]["parameters"]["s3_secret_name"].get("defaultValue")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"{package} is not a pipeline compiled by `python -m pipeline compile` ({one_line(error)}); "
                        "compile it again") from error
    if arguments.get("s3_secret_name", default_secret) == "" and mounts_s3_secret(platform[0] if platform else None):
        raise UserError(f"s3_secret_name is empty but {package} mounts that Secret in every step: {POD_IDENTITY}")


def run(args) -> None:
    import kfp
    import kfp_server_api
    import urllib3

    arguments = check_parameters(parse_params(args.param))
    check_package(args.package, arguments)
    if args.namespace is not None:
        check_dns_label("--namespace", args.namespace)
    if args.token and args.token_file:
        raise UserError("--token and --token-file both given; pass one")
    token, how = bearer_token(args)
    credentials = None
    if token is None and _pod_token_path() is not None:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials, how = ServiceAccountTokenVolumeCredentials(str(_pod_token_path())), "the pod's pipelines token"
    host, ca_cert = args.host or os.environ.get("KF_PIPELINES_ENDPOINT"), None
    if not host and not _in_a_pod():
        host, kube_token, ca_cert = through_kube_proxy(args.kube_context, args.kfp_namespace)
        if token is None and credentials is None and kube_token:
            token, how = kube_token, "the kubeconfig's token"
    how = " and ".join(part for part in (how, "--cookies" if args.cookies else "") if part)
    where = host or f"ml-pipeline in namespace {args.kfp_namespace} (in-cluster)"
    if host:
        pod_token = _pod_token_path()
        probe_token = token or (pod_token.read_text(encoding="utf-8").strip() if credentials and pod_token else None)
        healthz = probe(host, probe_token, args.cookies, args.namespace, how, ca_cert)
        if healthz.get("multi_user") and not args.namespace:
            raise UserError(f"Kubeflow Pipelines at {host} is multi-user: pass --namespace with your profile's "
                            "namespace (kubectl get profiles, or the namespace menu of the Kubeflow UI)")
    try:
        with _quiet_kfp():
            client = kfp.Client(host=host, namespace=args.kfp_namespace, existing_token=token, cookies=args.cookies,
                                credentials=credentials, ssl_ca_cert=ca_cert)
            result = client.create_run_from_pipeline_package(
                str(args.package), arguments=arguments, run_name=args.run_name, experiment_name=args.experiment,
                namespace=args.namespace, service_account=args.service_account)
    except kfp_server_api.ApiException as error:
        if not error.status:  # kfp_server_api's wrapping of a TLS failure: no HTTP answer
            raise UserError(f"could not reach Kubeflow Pipelines at {where} ({error.reason}); check the URL and its "
                            "certificate") from None
        raise refusal(error.status, where, args.namespace, how) from None
    except (OSError, TimeoutError, urllib3.exceptions.HTTPError) as error:  # refused, unknown host, timeout, TLS
        raise UserError(f"could not reach Kubeflow Pipelines at {where} ({one_line(error)}); check the URL, "
                        f"{_PORT_FORWARD}") from None
    print(f"created run {result.run_id} on {where}")
