"""Training configuration: YAML + overrides, resolution, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from facenet_platform.core.errors import ConfigError
from facenet_platform.train.config import (
    TrainConfig,
    config_from_dict,
    load_config,
    parse_override,
)

MINIMAL = {"data": {"root": "/data/faces"}}


def write(tmp_path: Path, data, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_are_resolved():
    cfg = config_from_dict(MINIMAL)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.architecture == "inception_resnet_v1" and cfg.model.pretrained
    assert cfg.model.folded_batch_norm is True  # pretrained weights have BN folded in
    assert cfg.data.resize == 182  # davidsandberg: 182 -> random crop 160
    assert cfg.data.standardization == "fixed"  # how 20180408-102900 was trained (core default)
    assert cfg.loss.margin == 0.2 and cfg.loss.center_alpha == 0.95
    assert cfg.scaling.threads_per_worker == 1
    assert cfg.global_batch_size == 45 * 40 and cfg.local_batch_size == 1800


def test_from_scratch_defaults_to_batch_norm_and_scaled_resize():
    cfg = config_from_dict({**MINIMAL, "model": {
        "architecture": "inception_resnet_v1_scaled", "pretrained": False, "input_size": 64,
        "embedding_size": 128}})
    assert cfg.model.folded_batch_norm is False
    assert cfg.data.resize == 73  # round(64 * 182 / 160)
    assert cfg.data.standardization == "prewhiten"


def test_yaml_file_and_overrides(tmp_path):
    path = write(tmp_path, {**MINIMAL, "loss": {"margin": 0.25}, "train": {"epochs": 3}})
    cfg = load_config(path, ["loss.margin=0.3", "loss.mining=hard", ("train.epochs", 7),
                             "model.repeats=[1, 2, 1]", "data.center_crop=150"])
    assert cfg.loss.margin == 0.3 and cfg.loss.mining == "hard"
    assert cfg.train.epochs == 7 and cfg.model.repeats == [1, 2, 1]
    assert cfg.data.center_crop == 150
    # the resolved config round-trips through YAML (what checkpoints store)
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_parse_override():
    assert parse_override("loss.margin=0.3") == ("loss.margin", 0.3)
    assert parse_override("run.storage_path=s3://bucket/runs") == ("run.storage_path", "s3://bucket/runs")
    assert parse_override("data.max_people=null") == ("data.max_people", None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("loss.margin")


@pytest.mark.parametrize("data,match", [
    ({**MINIMAL, "loss": {"margn": 0.3}}, r"unknown key loss\.margn; did you mean loss\.margin"),
    ({**MINIMAL, "los": {}}, r"unknown key los; did you mean loss"),
    ({**MINIMAL, "loss": {"margin": "big"}}, r"loss\.margin must be a number, got 'big'"),
    ({**MINIMAL, "loss": {"mining": "semi-hard"}},
     r"loss\.mining must be one of 'semihard', 'hard'.*did you mean 'semihard'"),
    ({**MINIMAL, "train": {"epochs": 1.5}}, r"train\.epochs must be an integer"),
    ({**MINIMAL, "train": {"epochs": 0}}, r"train\.epochs must be >= 1"),
    ({**MINIMAL, "data": {"root": "x", "random_flip": "yes"}}, r"data\.random_flip must be true or false"),
    ({**MINIMAL, "model": {"repeats": [1, 2]}}, r"model\.repeats must be three block counts"),
    ({**MINIMAL, "loss": {"margin": -0.1}}, r"loss\.margin must be >= 0"),
    ({}, r"data\.root is required"),
    ({**MINIMAL, "scaling": {"num_workers": 4}},
     r"people_per_batch \(45\) must be a multiple of scaling\.num_workers \(4\)"),
    ({**MINIMAL, "data": {"root": "x", "images_per_person": 1}},
     r"images_per_person must be >= 2 for the triplet loss"),
    ({**MINIMAL, "model": {"architecture": "inception_resnet_v1_scaled"}},
     r"pretrained.*only for architecture inception_resnet_v1"),
    ({**MINIMAL, "model": {"folded_batch_norm": False}}, r"folded_batch_norm: false cannot load"),
    ({**MINIMAL, "model": {"input_size": 64}}, r"input_size must be >= 75"),
    ({**MINIMAL, "data": {"root": "x", "resize": 100}}, r"data\.resize \(100\) must be >= model\.input_size \(160\)"),
    ({**MINIMAL, "scaling": {"resources_per_worker": ["CPU"]}}, r"scaling\.resources_per_worker must be a mapping"),
    ({**MINIMAL, "loss": "triplet"}, r"loss must be a mapping of keys, got 'triplet'"),
])
def test_errors_name_the_key_and_the_rule(tmp_path, data, match):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)  # the file is named
    assert isinstance(info.value, ValueError)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer, got {.x.: 1}"):
        load_config(write(tmp_path, MINIMAL), ["train.epochs.x=1"])


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    cfg = load_config(path)
    assert cfg.data.root


def test_cli_print_config_and_errors(tmp_path, capsys):
    from facenet_platform.cli import main

    path = write(tmp_path, MINIMAL)
    assert main(["train", "--config", str(path), "--set", "loss.margin=0.3", "--epochs", "4",
                 "--name", "x", "--storage-path", str(tmp_path / "runs"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["loss"]["margin"] == 0.3 and printed["train"]["epochs"] == 4
    assert printed["run"]["tensorboard_dir"] == str(tmp_path / "runs" / "x" / "tensorboard")
    assert main(["train", "--config", str(path), "--set", "loss.margn=0.3", "--print-config"]) == 1
    err = capsys.readouterr().err
    assert "unknown key loss.margn; did you mean loss.margin" in err and err.count("\n") == 1
