"""What a Kubernetes API error means for the user: one line with the fix, or None when a retry may cure it.

The launcher and the preflight get errors two ways: a kubernetes ApiException (status, JSON body), or
kubeflow-training's RuntimeError with the ApiException as `__cause__`. Refusals the cluster's setup causes
(401, 403, a missing CRD or namespace, a webhook denial) are user errors: exit 2, never retried; a 5xx or
a lost connection is not.
"""

from __future__ import annotations

import json
from typing import Any

from trainer.errors import UserError

PREFLIGHT_HINT = "`python -m pipeline preflight` checks every piece"


def api_exception(error: BaseException | None) -> Any | None:
    """The ApiException in `error`'s chain (itself, its __cause__ or __context__), if any."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(getattr(error, "status", None), int):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def status_of(error: BaseException) -> int | None:
    found = api_exception(error)
    return found.status if found is not None else None


def message_of(error: BaseException) -> str:
    """The API server's own message (the Status body's `message`), else the exception's first line."""
    found = api_exception(error)
    body = getattr(found, "body", None) if found is not None else None
    if body:
        try:
            message = json.loads(body).get("message")
            if message:
                return str(message).splitlines()[0][:400]
        except (ValueError, AttributeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
            return text.strip().splitlines()[0][:200] if text.strip() else f"HTTP {found.status}"
    return (str(error).splitlines() or [type(error).__name__])[0][:400]


def _missing_namespace(error: BaseException) -> bool:
    found = api_exception(error)
    try:
        details = json.loads(getattr(found, "body", None) or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return details.get("kind") == "namespaces"


def refusal(error: BaseException, doing: str, resource: str, namespace: str, fix_rbac: str) -> UserError | None:
    """The user error for `error`, raised while `doing` (e.g. "creating TrainJob ml/x") on `resource` (plural
    and group, e.g. trainjobs.trainer.kubeflow.org/v1alpha1), or None when it is not the user's to fix."""
    status, message = status_of(error), message_of(error)
    if status == 401:
        return UserError(f"the Kubernetes API refused the launcher's credentials (401) while {doing}: use a valid "
                         "service account token in the pod, or a kubeconfig whose user is still valid")
    if status == 403 and "admission webhook" in message:
        return UserError(f"{doing} was denied by an admission webhook: {message}; fix what it names (e.g. apply "
                         "k8s/trainer-v2/cluster for the ClusterTrainingRuntime, or set training_runtime)")
    if status == 403:
        return UserError(f"{doing} is forbidden: {message}; {fix_rbac}")
    if status == 404 and _missing_namespace(error):
        return UserError(f"namespace {namespace!r} does not exist ({message}); create it or set the namespace "
                         "parameter to your Kubeflow profile's namespace")
    if status == 404:
        return UserError(f"the API server does not serve {resource} ({doing}: 404): install its operator (Kubeflow "
                         "Trainer v2 with JobSet for trainjob, the Training Operator v1 for pytorchjob) or choose "
                         f"the job_backend the cluster has; {PREFLIGHT_HINT}")
    if status in (400, 409, 422):
        return UserError(f"the API server refused {doing} ({status}): {message}; {PREFLIGHT_HINT}")
    return None
