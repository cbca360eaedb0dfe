"""Kubernetes' grammars for the values a job carries, checked here before any job exists.

The API server (and Kueue, and the container runtime) refuse a bad name, label, image reference, toleration or
quantity only when the job is created, which for an evaluation step is after days of pretraining. Each check
raises UserError with one line: the option, its value, and what would work. The rules follow
k8s.io/apimachinery/pkg/util/validation (names, labels), k8s.io/apimachinery/pkg/api/resource (quantities),
the core API's toleration validation and the distribution/reference grammar (images).

`escape_vars` is the other half of a pod's args: the kubelet expands `$(NAME)` in command and args to the
container's variable, so a user's literal `$(...)` must reach it as `$$(...)`.
"""

from __future__ import annotations

import re
from typing import Any

from trainer.errors import UserError

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_1123_LABEL = re.compile(rf"^{_LABEL}$")
_DNS_1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_MAX, SUBDOMAIN_MAX = 63, 253
ANNOTATIONS_MAX = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB

# distribution/reference: [domain[:port]/]path[:tag][@algorithm:hex]; path components are lowercase.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
                    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
                    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$")
IMAGE_NAME_MAX = 255
IMAGE_EXAMPLE = "ghcr.io/org/unmix-swav:1.0 or registry.local:5000/unmix-swav@sha256:<64 hex digits>"

# resource.Quantity: a non-negative decimal with an optional binary-SI, decimal-SI or exponent suffix.
_QUANTITY = re.compile(r"^\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")
_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))}}
QUANTITY_EXAMPLE = "e.g. 32, 500m, 256Gi, 1e9"

TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
INT32_MAX = 2**31 - 1
MAX_TIMEOUT_S = 30 * 24 * 3600  # a step that runs longer than a month is stuck, not slow

_VAR_OPENER = re.compile(r"\$(?=[$(])")


def _refuse(option: str, value: object, fix: str) -> None:
    raise UserError(f"{option} {value!r} is not valid: {fix}")


def check_dns_label(option: str, value: str, max_length: int = LABEL_MAX) -> None:
    """A DNS-1123 label (namespaces, most object names): lowercase letters, digits, '-'."""
    if not isinstance(value, str) or len(value) > max_length or not _DNS_1123_LABEL.match(value):
        _refuse(option, value, f"use at most {max_length} lowercase letters, digits and '-', starting and ending "
                               "with a letter or digit, e.g. team-a")


def is_dns_subdomain(value: str, max_length: int = SUBDOMAIN_MAX) -> bool:
    """A DNS-1123 subdomain (PriorityClass, ClusterTrainingRuntime, LocalQueue names): labels joined by '.'."""
    return isinstance(value, str) and len(value) <= max_length and bool(_DNS_1123_SUBDOMAIN.match(value))


def check_dns_subdomain(option: str, value: str, max_length: int = SUBDOMAIN_MAX) -> None:
    if not is_dns_subdomain(value, max_length):
        _refuse(option, value, f"use at most {max_length} lowercase letters, digits, '-' and '.', each part "
                               "starting and ending with a letter or digit, e.g. high-priority")


def check_label_key(option: str, key: str) -> None:
    """A qualified name: [DNS-1123 subdomain prefix '/'] name of at most 63 [A-Za-z0-9-_.]."""
    parts = key.split("/") if isinstance(key, str) else []
    name, prefixes = (parts[-1], parts[:-1]) if 1 <= len(parts) <= 2 else ("", [])
    fine = (len(name) <= LABEL_MAX and bool(_QUALIFIED_NAME.match(name))
            and all(is_dns_subdomain(prefix) for prefix in prefixes))
    if not fine:
        _refuse(option, key, "a key is [prefix/]name: name at most 63 letters, digits, '-', '_' or '.' starting "
                             "and ending with a letter or digit, prefix a DNS subdomain, e.g. nvidia.com/gpu.present")


def check_label_value(option: str, value: str) -> None:
    """A label value: empty, or at most 63 [A-Za-z0-9-_.] starting and ending with a letter or digit."""
    if not isinstance(value, str) or len(value) > LABEL_MAX or not _LABEL_VALUE.match(value):
        _refuse(option, value, "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
                               "or digit (or nothing), e.g. true")


def check_labels(option: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        check_label_key(f"{option} key", key)
        check_label_value(f"{option}[{key}]", value)


def check_annotations(option: str, annotations: dict[str, str]) -> None:
    """Annotations: qualified-name keys (as labels'), string values, at most 256 KiB in all (the API's limit)."""
    if not isinstance(annotations, dict):
        _refuse(option, annotations, "use a map of KEY: VALUE, e.g. {\"sidecar.istio.io/inject\": \"false\"}")
    for key, value in annotations.items():
        check_label_key(f"{option} key", key)
        if not isinstance(value, str):
            _refuse(f"{option}[{key}]", value, "an annotation's value is a string; quote it, e.g. \"false\"")
    if sum(len(key) + len(value) for key, value in annotations.items()) > ANNOTATIONS_MAX:
        _refuse(option, f"{len(annotations)} annotations", f"at most {ANNOTATIONS_MAX} bytes in all")


def check_image(option: str, image: str) -> None:
    """A container image reference: [registry[:port]/]path[:tag][@algorithm:hex]."""
    match = _IMAGE.match(image) if isinstance(image, str) else None
    domain = (match.group("domain") or "") if match else ""
    # As the runtimes normalise it: a first component without '.' or ':' (nor localhost) is a Docker Hub path.
    if domain and not ("." in domain or ":" in domain or domain == "localhost") \
            and not re.fullmatch(_PATH_COMPONENT, domain):
        match = None
    if match is None or len(match.group("path")) + len(domain) + 1 > IMAGE_NAME_MAX:
        _refuse(option, image, f"an image reference is [registry[:port]/]path[:tag][@sha256:digest] with a "
                               f"lowercase path, e.g. {IMAGE_EXAMPLE}")
    digest = match.group("digest")
    if digest and digest.startswith("sha256:") and len(digest) != len("sha256:") + 64:
        _refuse(option, image, "a sha256 digest has 64 hex digits")


def quantity(option: str, text: str) -> float:
    """A Kubernetes quantity as a number (bytes for memory, CPUs for cpu); refused when not one."""
    match = _QUANTITY.match(str(text))
    if not match:
        _refuse(option, text, f"not a Kubernetes quantity; {QUANTITY_EXAMPLE}")
    suffix = match.group("suffix") or ""
    number = float(match.group("number"))
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * 10 ** int(suffix[1:])
    return number * _SUFFIXES[suffix]


def check_positive_quantity(option: str, text: str) -> None:
    if quantity(option, text) <= 0:
        _refuse(option, text, f"must be above 0; {QUANTITY_EXAMPLE}")


def check_toleration(option: str, toleration: dict[str, Any]) -> None:
    """The core API's rules: operator Exists or Equal; Exists has no value; an empty key needs Exists; the
    effect one of TOLERATION_EFFECTS or empty (all); tolerationSeconds only with NoExecute."""
    operator = toleration.get("operator") or "Equal"  # the API's default
    key, value, effect = toleration.get("key") or "", toleration.get("value") or "", toleration.get("effect") or ""
    if operator not in TOLERATION_OPERATORS:
        _refuse(f"{option} operator", operator, f"use one of {', '.join(TOLERATION_OPERATORS)}")
    if effect not in ("", *TOLERATION_EFFECTS):
        _refuse(f"{option} effect", effect, f"use one of {', '.join(TOLERATION_EFFECTS)}, or none for all effects")
    if key:
        check_label_key(f"{option} key", key)
    elif operator != "Exists":
        _refuse(f"{option} operator", operator, "a toleration without a key must use Exists")
    if operator == "Exists" and value:
        _refuse(f"{option} value", value, "a toleration with operator Exists takes no value; use Equal")
    check_label_value(f"{option} value", value)
    seconds = toleration.get("tolerationSeconds", toleration.get("toleration_seconds"))
    if seconds is not None and effect != "NoExecute":
        _refuse(f"{option} tolerationSeconds", seconds, "only a NoExecute toleration takes tolerationSeconds")
    if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool)):
        _refuse(f"{option} tolerationSeconds", seconds, "use a whole number of seconds")


def check_seconds(option: str, seconds: float, minimum: float = 0, maximum: float = MAX_TIMEOUT_S) -> None:
    """A duration in seconds within [minimum, maximum] (minimum excluded when it is 0: a timeout of 0 is none)."""
    too_small = seconds <= minimum if minimum == 0 else seconds < minimum
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds or too_small \
            or seconds > maximum:
        low = "above 0" if minimum == 0 else f"at least {minimum:g}"
        _refuse(option, seconds, f"use a number of seconds {low} and at most {maximum:g}")


def escape_vars(text: str) -> str:
    """`text` as a pod's command or args must hold it to reach the container unchanged: the kubelet replaces
    `$(NAME)` by the variable and `$$` by `$`, so every `$` that starts either is doubled."""
    return _VAR_OPENER.sub("$$", text)
