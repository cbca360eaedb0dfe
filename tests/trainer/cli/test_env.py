"""trainer.env: every environment variable is parsed and range-checked once, before any work.

Each bad value goes through the real CLI twice: in-process (`trainer.cli.main`, the refusal helper: exit 2,
one `error:` line, no traceback, nothing written) and as `python -m trainer pretrain` in a fresh process
(which also proves no module explodes at import), within a time bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refusal import refused

from trainer import env

ROOT = Path(__file__).resolve().parents[3]
RANKS = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
# A refusal before any work is Python's start-up plus the CLI's imports (under a second here); the bound leaves
# room for a loaded machine and is far below what the faults it replaces took (a 30-minute rendezvous hang).
REFUSAL_BOUND_S = 10.0

# (variables set, the variable the refusal must name, a text the line must hold besides)
BAD = [
    ({"RANK": "0x1"}, "RANK", "an integer from 0"),
    ({"RANK": "-1"}, "RANK", "'-1'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE", "an integer from 1"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE", "'two'"),
    ({**RANKS, "RANK": "2"}, "RANK", "not below WORLD_SIZE=2"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK", "'x'"),
    ({**RANKS, "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK", "not below LOCAL_WORLD_SIZE=2"),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK", "not below WORLD_SIZE=1"),
    ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE", "an integer from 1"),
    ({**RANKS, "MASTER_PORT": "http"}, "MASTER_PORT", "from 1 to 65535"),
    ({**RANKS, "MASTER_PORT": "70000"}, "MASTER_PORT", "'70000'"),
    ({**RANKS, "MASTER_ADDR": "http://head:29500/"}, "MASTER_ADDR", "a host name or IP address"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR", "not set"),
    ({"UNMIX_STORAGE_RETRIES": "0"}, "UNMIX_STORAGE_RETRIES", "an integer from 1 to 100"),
    ({"UNMIX_STORAGE_RETRIES": "many"}, "UNMIX_STORAGE_RETRIES", "'many'"),
    ({"UNMIX_STORAGE_RETRY_DELAY": "-1"}, "UNMIX_STORAGE_RETRY_DELAY", ">= 0.01"),
    ({"UNMIX_READ_TIMEOUT_S": "abc"}, "UNMIX_READ_TIMEOUT_S", "'abc'"),
    ({"UNMIX_READ_TIMEOUT_S": "nan"}, "UNMIX_READ_TIMEOUT_S", "<= 86400"),
    ({"UNMIX_SHARD_READAHEAD_MB": "8.5"}, "UNMIX_SHARD_READAHEAD_MB", "an integer"),
    ({"UNMIX_SHARDS_AHEAD": "-1"}, "UNMIX_SHARDS_AHEAD", "from 0 to 64"),
    ({"UNMIX_SHARD_CACHE": "s3://bucket/cache"}, "UNMIX_SHARD_CACHE", "off or a local folder"),
    ({"UNMIX_SHARD_CACHE_GB": "10GB"}, "UNMIX_SHARD_CACHE_GB", "'10GB'"),
    ({"UNMIX_VERIFY_SHARDS": "off"}, "UNMIX_VERIFY_SHARDS", "0 or 1"),
    ({"UNMIX_INDEX_CACHE": "   "}, "UNMIX_INDEX_CACHE", "a folder or fsspec URL"),
    ({"UNMIX_MAX_IMAGE_PIXELS": "0"}, "UNMIX_MAX_IMAGE_PIXELS", "from 1"),
    ({"UNMIX_LOCK_LEASE_S": "x"}, "UNMIX_LOCK_LEASE_S", "'x'"),
    ({"UNMIX_LOCK_LEASE_S": "0"}, "UNMIX_LOCK_LEASE_S", ">= 1"),
    ({"UNMIX_PROGRESS_EVERY_S": "0"}, "UNMIX_PROGRESS_EVERY_S", "> 0"),
    ({"UNMIX_COLLECTIVE_TIMEOUT_MIN": "x"}, "UNMIX_COLLECTIVE_TIMEOUT_MIN", "'x'"),
    ({"UNMIX_COLLECTIVE_TIMEOUT_MIN": "inf"}, "UNMIX_COLLECTIVE_TIMEOUT_MIN", "<= 10080"),
    ({"UNMIX_DEBUG": "yes"}, "UNMIX_DEBUG", "0 or 1"),
]
IDS = [" ".join(f"{name}={value}" for name, value in variables.items() if name not in RANKS or name == named)
       for variables, named, _ in BAD]


def pretrain(dump: Path) -> list[str]:
    return ["pretrain", "--preset", "demo_cpu", "--device", "cpu", "--data_path", "builtin:shapes",
            "--dump_path", str(dump)]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No parsed variable set: each case sets only its own."""
    for variable in env.PARSED:
        monkeypatch.delenv(variable.name, raising=False)
    return monkeypatch


def test_every_parsed_variable_has_a_bad_value_in_the_table() -> None:
    assert {variable.name for variable in env.PARSED} - {named for _, named, _ in BAD} == {"UNMIX_RUN_ID"}  # any text


@pytest.mark.parametrize(("variables", "named", "says"), BAD, ids=IDS)
def test_bad_value_is_refused_in_process(capsys, clean_env, tmp_path: Path, variables: dict[str, str], named: str,
                                         says: str) -> None:
    for name, value in variables.items():
        clean_env.setenv(name, value)
    line = refused(capsys, pretrain(tmp_path / "run"), named, [tmp_path / "run"])
    assert says in line and f"environment variable {named}" in line, line


@pytest.mark.slow  # one process per case (about 0.4 s each)
@pytest.mark.parametrize(("variables", "named", "says"), BAD, ids=IDS)
def test_bad_value_is_refused_by_a_fresh_cli_process_before_any_work(tmp_path: Path, variables: dict[str, str],
                                                                     named: str, says: str) -> None:
    child_env = {key: value for key, value in os.environ.items() if key not in {v.name for v in env.PARSED}}
    child_env.update(variables, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "trainer", *pretrain(tmp_path / "run")], env=child_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and named in errors[0] and says in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    assert took < REFUSAL_BOUND_S, f"the refusal took {took:.1f}s"


# (variables set, the field, its parsed value)
GOOD = [
    ({}, "storage_retries", 8),
    ({"UNMIX_STORAGE_RETRIES": "3"}, "storage_retries", 3),
    ({"UNMIX_SHARD_CACHE_GB": "0.5"}, "shard_cache_gb", 0.5),
    ({"UNMIX_SHARD_CACHE_GB": ""}, "shard_cache_gb", None),  # empty counts as unset
    ({"UNMIX_SHARD_CACHE": "off"}, "shard_cache", "off"),
    ({"UNMIX_COLLECTIVE_TIMEOUT_MIN": "0.1"}, "collective_timeout_min", 0.1),
    ({"UNMIX_DEBUG": "1"}, "debug", True),
    ({**RANKS, "RANK": "1", "LOCAL_RANK": "1"}, "local_rank", 1),  # one process per GPU, no LOCAL_WORLD_SIZE
    ({**RANKS, "MASTER_ADDR": "[::1]"}, "master_addr", "[::1]"),
]


@pytest.mark.parametrize(("variables", "field", "value"), GOOD)
def test_good_values_are_typed(variables: dict[str, str], field: str, value: object) -> None:
    parsed = getattr(env.parse(variables), field)
    assert parsed == value and type(parsed) is type(value)


def test_a_changed_environment_is_parsed_again_and_an_unchanged_one_is_not(clean_env) -> None:
    first = env.current()
    assert env.current() is first
    clean_env.setenv("UNMIX_SHARDS_AHEAD", "5")
    assert env.current().shards_ahead == 5


def test_the_error_report_works_when_the_environment_is_the_error(clean_env) -> None:
    clean_env.setenv("WORLD_SIZE", "0")
    assert env.current_or_defaults().world_size == 1


def test_docs_environment_md_holds_the_readers_table() -> None:
    doc = (ROOT / "docs" / "environment.md").read_text()
    table = doc.split("do not edit by hand -->\n", 1)[1].split("<!-- end of the generated table -->", 1)[0]
    assert table == env.markdown_table(), "regenerate it: python -m trainer.env"
    for variable in env.VARIABLES:
        assert f"`{variable.name.split(', ')[0]}`" in table
