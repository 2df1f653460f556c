"""Validation before any engine starts: unknown keys, engine settings, minibatch sizes, LIBSVM
files. Every refusal is a ConfigError whose message names the valid keys, range or line."""

from __future__ import annotations

import copy
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim import schema
from fedsim.build import resolve
from fedsim.errors import ConfigError
from fedsim.tasks.data import load_libsvm

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def refused(compose, *overrides: str) -> str:
    """The message of the ConfigError that composing ``overrides`` raises."""
    with pytest.raises(ConfigError) as err:
        compose(*overrides)
    return str(err.value)


@functools.cache
def _hydra(overrides: tuple[str, ...]) -> dict:
    from hydra import compose, initialize_config_dir

    from fedsim.build import to_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_dict(compose("config", overrides=list(overrides)))


def composed(*overrides: str) -> dict:
    """The config as Hydra composes it for ``resolve`` (not resolved; a fresh copy)."""
    return copy.deepcopy(_hydra(overrides))


def resolve_refuses(cfg: dict) -> str:
    """The message of the ConfigError that resolving ``cfg`` raises."""
    with pytest.raises(ConfigError) as err:
        resolve(cfg)
    return str(err.value)


# --- unknown keys --------------------------------------------------------------------------


def test_an_unknown_key_in_any_group_is_refused_with_the_valid_keys(compose):
    """Generic over conf/'s group directories (a new group is covered the day it lands); the
    message lists every unknown key, each with the valid keys of its option."""
    groups = sorted(g for g in schema.section_groups() if g != "method")  # method: next test
    message = refused(compose, "engine=inline", *(f"+{g}.not_a_key=1" for g in groups))
    parts = message.split("; unknown ")
    assert len(parts) == len(groups)
    for group, part in zip(groups, parts, strict=True):
        assert f"key {group}.not_a_key for {group} '" in part
        assert "name" in part.split("valid keys: ")[1].split(", ")


def test_an_unknown_method_key_names_the_methods_keys(compose):
    message = refused(compose, "engine=inline", "+method.foo=1")
    assert "unknown key method.foo for method 'fedavg'" in message
    assert "client_lr, local_epochs, local_optimizer, local_solver, local_steps" in message


def test_an_unknown_top_level_key_names_the_top_level_keys(compose):
    message = refused(compose, "engine=inline", "+foo=1")
    assert "unknown key foo at the top level" in message
    assert "method, num_clients, num_rounds" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("+output.colour=1",), "unknown key output.colour in output; valid keys: plot, progress"),
        (
            ("engine=ray", "+engine.client_resources.memory=1"),
            "in engine.client_resources; valid keys: num_cpus, num_gpus",
        ),
    ],
)
def test_unknown_nested_keys_are_refused(compose, overrides, message):
    assert message in refused(compose, "engine=inline", *overrides)


def test_a_key_that_resolving_derives_may_not_be_set_by_hand(compose):
    message = refused(compose, "engine=inline", "method=tamuna", "+method.cohort_size=5")
    assert "method.cohort_size is derived" in message and "derives 10, not 5" in message
    # a key another method derives is no key of this one
    assert "unknown key method.mu for method 'fedavg'" in refused(
        compose, "engine=inline", "+method.mu=1"
    )


@pytest.mark.parametrize("method", ["tamuna", "fedavg", "fivegcs_cc"])
def test_a_resolved_config_resolves_again(compose, method):
    """Keys a resolve adds (cohort_size, mu, omega, method.compressor ...) pass a second one."""
    once = compose("engine=inline", f"method={method}")
    twice = resolve(copy.deepcopy(once))
    assert set(twice["method"]) == set(once["method"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_declares_only_known_keys(name):
    """Each experiment only sets keys its options declare (a full resolve of the a9a ones takes
    seconds: their smoothness constants; the experiments' own tests resolve them)."""
    assert schema.unknown_keys(composed(f"+experiment={name}")) == []


def test_an_experiments_cohort_size_composes_with_full_participation(compose):
    """sampler=full declares cohort_size (unused) for experiments written for a cohort sampler."""
    cfg = compose("+experiment=local_training_quadratic", "method=scaffnew", "sampler=full")
    assert cfg["sampler"]["name"] == "full"


def test_free_form_tables_are_not_checked(compose):
    cfg = compose("engine=inline", "+tuned.fedavg.client_lr=0.1")
    assert cfg["tuned"] == {"fedavg": {"client_lr": 0.1}}


def test_an_option_follows_its_own_defaults_list(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "base.yaml").write_text("name: base\nlr: 1.0\n")
    (tmp_path / "method" / "child.yaml").write_text("defaults:\n  - base\nname: child\nmu: 0\n")
    cfg = {"seed": 0, "method": {"name": "child", "lr": 2.0, "mu": 1, "nu": 3}}
    (found,) = schema.unknown_keys(cfg, tmp_path)
    assert found.path == "method.nu" and found.valid == ("lr", "mu", "name")
    with pytest.raises(ConfigError, match="valid choices: base, child"):
        schema.unknown_keys({"method": {"name": "other"}}, tmp_path)


# --- engine settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_cpus": 0}, "engine.num_cpus must be an integer >= 1, got 0"),
        ({"num_cpus": 1.5}, "engine.num_cpus must be an integer >= 1"),
        ({"round_timeout": 0}, "engine.round_timeout must be null (no limit) or a number"),
        ({"round_timeout": -1}, "of seconds > 0, got -1"),
        ({"client_resources": {"num_cpus": 0}}, "client_resources.num_cpus must be a finite"),
        ({"client_resources": {"num_gpus": -1}}, "client_resources.num_gpus must be a finite"),
    ],
)
def test_impossible_ray_settings_are_refused(settings, message):
    cfg = composed("engine=ray")
    cfg["engine"].update(settings)
    assert message in resolve_refuses(cfg)


def test_ray_settings_in_range_resolve(compose):
    cfg = compose("engine=ray", "engine.num_cpus=1", "engine.round_timeout=null")
    assert cfg["engine"]["num_cpus"] == 1 and cfg["engine"]["round_timeout"] is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"run_timeout": 0}, "engine.run_timeout must be a finite number > 0"),
        ({"round_timeout": -5}, "engine.round_timeout must be null (no limit)"),
        ({"port": 9205}, "engine.port=9205 is one of the SuperNodes' ports 9200..9219"),
        ({"supernode_port": 65530}, "must be a TCP port in [1, 65516]"),
        ({"superlink": "nohost"}, "engine.superlink must be HOST:PORT"),
        ({"insecure": "maybe"}, "engine.insecure must be true or false"),
    ],
)
def test_impossible_deployment_settings_are_refused(settings, message):
    cfg = composed("engine=deployment")
    cfg["engine"].update(settings)
    assert message in resolve_refuses(cfg)


# --- minibatch sizes -----------------------------------------------------------------------

# Overrides a method needs to compose (its sampler or a manifold task) and to draw minibatches.
_NEEDS = {"clipped_rr_cli": ("sampler=cyclic",), "rsgd": ("task=pca_sphere",)}


def _batch_methods() -> list[str]:
    return sorted(
        p.stem
        for p in (CONF / "method").glob("*.yaml")
        if "batch_size" in (yaml.safe_load(p.read_text()) or {})
    )


@pytest.mark.parametrize("method", _batch_methods())
def test_a_batch_larger_than_every_client_is_refused_for_every_method(compose, method):
    option = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
    sgd = ("method.local_solver=sgd",) if option.get("local_solver") == "gd" else ()
    extra = (*_NEEDS.get(method, ()), *sgd)
    message = refused(
        compose, "engine=inline", f"method={method}", *extra, "method.batch_size=100000"
    )
    assert "method.batch_size=100000 exceeds the data of every client" in message
    assert "the largest holds 100 samples" in message


def test_a_batch_larger_than_some_clients_is_clamped_with_one_warning(compose, caplog):
    """569 breast_cancer samples sorted over 20 clients: 11 hold 28, 9 hold 29."""
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        cfg = compose(
            "engine=inline",
            "task=logreg_sklearn",
            "partition=sorted",
            "method=robust_momentum",
            "method.batch_size=29",
        )
    assert cfg["method"]["batch_size"] == 29  # each small client draws min(29, n_m)
    (record,) = [r for r in caplog.records if "batch_size" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "exceeds the data of 11 of 20 clients (the smallest holds 28 samples)" in (
        record.getMessage()
    )


def test_a_batch_is_not_checked_where_no_minibatch_is_drawn(compose):
    cfg = compose("engine=inline", "method=fedavg", "method.batch_size=100000")  # local_solver gd
    assert cfg["method"]["batch_size"] == 100000


# --- LIBSVM files --------------------------------------------------------------------------

GOOD = b"# a comment\n+1 1:0.5 3:1\n\n-1 qid:2 2:1.5 # trailing\n"


@pytest.mark.parametrize(
    ("tail", "line", "reason"),
    [
        (b"-1 1:abc\n", 5, "feature value 'abc' (index 1) is not a number"),
        (b"oops 1:1\n", 5, "label 'oops' is not a number"),
        (b"+1 1:1 7\n", 5, "feature '7' is not INDEX:VALUE"),
        (b"+1 x:1\n", 5, "feature index 'x' is not an integer"),
        (b"+1 3:1 2:1\n", 5, "feature index 2 after 3: indices must increase"),
        (b"+1 -2:1\n", 5, "feature index -2 is negative"),
        (b"+1 1:1\n-1 1:\n", 6, "feature value '' (index 1) is not a number"),
    ],
)
def test_a_corrupt_libsvm_file_names_the_file_and_line(tmp_path, tail, line, reason):
    path = tmp_path / "bad.svm"
    path.write_bytes(GOOD + tail)
    with pytest.raises(ConfigError) as err:
        load_libsvm(path)
    assert str(err.value) == f"{path}: line {line}: not a LIBSVM line: {reason}"


def test_a_binary_file_is_refused_without_dumping_its_bytes(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ConfigError) as err:
        load_libsvm(path)
    message = str(err.value)
    assert message == f"{path}: line 1: not a LIBSVM line: label '\\x89PNG' is not a number"
    assert message.isascii() and message.isprintable()


def test_a_long_bad_token_is_shortened(tmp_path):
    path = tmp_path / "long.svm"
    path.write_bytes(b"+1 1:" + b"z" * 5000 + b"\n")
    with pytest.raises(ConfigError, match=r"line 1: .*'z{40}'… \(index 1\)") as err:
        load_libsvm(path)
    assert len(str(err.value)) < 200 + len(str(path))


def test_a_libsvm_task_reports_the_bad_line_before_any_engine_starts(compose, tmp_path):
    path = tmp_path / "a9a"
    path.write_bytes(b"+1 1:1\n-1 2:1\n+1 2:nope\n")
    message = refused(compose, "engine=inline", "task=logreg_libsvm", f"task.path={path}")
    assert (
        message
        == f"{path}: line 3: not a LIBSVM line: feature value 'nope' (index 2) is not a number"
    )


# --- the command line ----------------------------------------------------------------------


def test_the_cli_refuses_an_added_key_with_exit_2_and_no_traceback(tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "fedsim", "engine=inline", "+method.foo=1", "num_rounds=1"]
        + [f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "unknown key method.foo for method 'fedavg'; valid keys: batch_size" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "metrics.csv").exists()
