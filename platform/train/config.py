"""Training configuration: one YAML file holds every setting, command-line overrides win.

The file maps onto the dataclasses below (sections ``model``, ``data``, ``loss``, ``optimizer``,
``train``, ``validation``, ``scaling``, ``run``). Every key is checked: an unknown key, a value
of the wrong type or out of range raises :class:`~facenet_platform.core.errors.ConfigError`
naming the key (``loss.margin``), the file, what was wrong and what is allowed.

Overrides are ``dotted.key=value`` strings (``--set loss.margin=0.3``); the value is parsed as
YAML (``0.3`` is a float, ``true`` a bool, ``null`` None, ``[2, 4, 2]`` a list).

The resolved configuration (defaults filled in, overrides applied, derived values such as
``data.resize`` computed) is what the training workers receive and what every checkpoint
stores as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from facenet_platform.core.errors import ConfigError

CONFIG_FILE = "config.yaml"

ARCHITECTURES = ("inception_resnet_v1", "inception_resnet_v1_scaled")
FREEZE_MODES = ("none", "stem", "all_but_last")
LOSSES = ("triplet", "softmax_center")
MINING = ("semihard", "hard")
STANDARDIZATION = ("prewhiten", "fixed")
OPTIMIZERS = ("adam", "rmsprop", "sgd", "adagrad")
SCHEDULES = ("constant", "exponential", "cosine")


@dataclass
class ModelConfig:
    """The embedding network."""

    #: ``inception_resnet_v1`` (davidsandberg's network, :mod:`facenet_platform.core.model`) or
    #: ``inception_resnet_v1_scaled`` (same blocks, widths x ``width``, ``repeats`` blocks per
    #: stage, "same" padding so that inputs down to 32 px work: for training small nets on CPU).
    architecture: Literal["inception_resnet_v1", "inception_resnet_v1_scaled"] = "inception_resnet_v1"
    input_size: int = 160
    embedding_size: int = 512
    #: start from the 20180408-102900 weights (inception_resnet_v1 only). Convolutions load at
    #: any input size; the bottleneck loads only when embedding_size is 512.
    pretrained: bool = True
    #: conv + bias (the pretrained graph has batch norm folded in) or conv + batch norm. Default:
    #: True when pretrained, False from scratch.
    folded_batch_norm: bool | None = None
    dropout_keep_prob: float = 0.8
    weight_decay: float = 0.0
    #: momentum of the batch-norm moving statistics (None: the network's 0.995, meant for
    #: 100k-step runs; short runs from scratch need ~0.99 or the statistics used at validation
    #: and export lag far behind the weights)
    batch_norm_momentum: float | None = None
    #: ``none``; ``stem`` (the convolutions before the first block); ``all_but_last`` (everything
    #: except the last ``trainable_blocks`` blocks, counting the bottleneck as one).
    freeze: Literal["none", "stem", "all_but_last"] = "none"
    trainable_blocks: int = 2
    #: inception_resnet_v1_scaled only: width multiplier and blocks per stage (A, B, C).
    width: float = 1.0
    repeats: list[int] = field(default_factory=lambda: [5, 10, 5])


@dataclass
class DataConfig:
    """The labelled image-folder dataset (``root/<person>/<image>``) and batch sampling."""

    root: str | None = None
    #: restrict to the people of an LFW-style people file (``peopleDevTrain.txt``)
    people_file: str | None = None
    min_images_per_person: int = 2
    max_people: int | None = None
    #: P people x K images per *global* batch; P must be a multiple of the number of workers.
    people_per_batch: int = 45
    images_per_person: int = 40
    #: square centre crop of the source image in pixels before resizing (None: whole image).
    #: LFW's 250 x 250 deep-funneled images: 150.
    center_crop: int | None = None
    #: side the (cropped) image is resized to; random crops of input_size are taken from it.
    #: Default: round(input_size * 182 / 160) as davidsandberg trains (182 -> 160).
    resize: int | None = None
    random_crop: bool = True
    random_flip: bool = True
    #: maximum random rotation in degrees (0 disables)
    random_rotate: float = 0.0
    #: ``fixed`` ((x - 127.5) / 128, how davidsandberg trained 20180408-102900) or
    #: ``prewhiten`` (per image); the names of ``core.standardization.STANDARDIZATIONS``. Default: the
    #: pretrained model's (``fixed``) when fine-tuning, ``prewhiten`` from scratch. Checkpoints
    #: and exports record it, FaceEmbedder must use the same.
    standardization: Literal["prewhiten", "fixed"] | None = None


@dataclass
class LossConfig:
    name: Literal["triplet", "softmax_center"] = "triplet"
    #: triplet: margin alpha on squared distances of L2-normalised embeddings
    margin: float = 0.2
    #: ``semihard`` (every anchor-positive pair with the closest negative farther than the
    #: positive, FaceNet) or ``hard`` (batch-hard: hardest positive and negative per anchor)
    mining: Literal["semihard", "hard"] = "semihard"
    #: softmax_center: center loss factor lambda, center decay alpha (c <- c - (1 - alpha) *
    #: delta_c, davidsandberg's center_loss_alfa), pre-logit norm penalty factor and order p
    center_loss_factor: float = 0.01
    center_alpha: float = 0.95
    prelogits_norm_factor: float = 5e-4
    prelogits_norm_p: float = 1.0


@dataclass
class OptimizerConfig:
    name: Literal["adam", "rmsprop", "sgd", "adagrad"] = "adam"
    learning_rate: float = 0.01
    #: ``constant``; ``exponential`` (x decay_factor every decay_epochs, staircase);
    #: ``cosine`` (to 0 over all epochs)
    schedule: Literal["constant", "exponential", "cosine"] = "constant"
    decay_epochs: float = 10.0
    decay_factor: float = 1.0
    momentum: float = 0.9
    #: Adam/RMSprop epsilon (davidsandberg uses 0.1 for Adam)
    epsilon: float = 0.1


@dataclass
class TrainLoopConfig:
    epochs: int = 10
    #: global steps per epoch; default: enough P x K batches to see every image once
    steps_per_epoch: int | None = None
    seed: int = 0
    #: steps between TensorBoard step scalars (0: epoch scalars only)
    log_every_steps: int = 1


@dataclass
class ValidationConfig:
    #: an LFW-style pairs file (pairsDevTest.txt); None disables validation
    pairs: str | None = None
    #: the folder that holds the pair images (default: the pairs file's folder)
    lfw_dir: str | None = None
    #: use only this many pairs (half matched, half mismatched) to save time
    max_pairs: int | None = None
    batch_size: int = 64
    #: folds for the accuracy (a single-fold View 1 file is split into interleaved folds)
    n_folds: int = 10
    #: also measure accuracy before the first step (reported with epoch 1 as val_accuracy_initial)
    before_training: bool = False


@dataclass
class ScalingSection:
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    #: TensorFlow intra-op threads per worker (default: the CPUs in resources_per_worker)
    threads_per_worker: int | None = None


@dataclass
class RunSection:
    name: str | None = None
    #: local directory (default ~/ray_results) or any pyarrow filesystem URI (s3://, gs://, ...)
    storage_path: str | None = None
    #: restarts from the last checkpoint after a worker failure (-1: unlimited)
    max_failures: int = 3
    #: checkpoints kept (the best by validation accuracy, or the latest without validation)
    num_to_keep: int = 2
    #: start from this checkpoint directory (model, optimizer and epoch) instead of from scratch
    resume_from: str | None = None
    #: where TensorBoard event files go (default: <storage_path>/<name>/tensorboard for a local
    #: storage path, else a local temporary folder)
    tensorboard_dir: str | None = None
    #: ``ray.init(address=...)``: None starts a local Ray, "auto" joins the running cluster
    ray_address: str | None = None


@dataclass
class TrainConfig:
    """Every setting of a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)

    # -- derived values ---------------------------------------------------------------------

    @property
    def local_people(self) -> int:
        """People per worker per step."""
        return self.data.people_per_batch // self.scaling.num_workers

    @property
    def global_batch_size(self) -> int:
        return self.data.people_per_batch * self.data.images_per_person

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.scaling.num_workers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        path.write_text(self.to_yaml())
        return path


# ------------------------------------------------------------------------------------------
# dict <-> dataclass with checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` checked against the type hint ``tp`` (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}{hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, key, where): _coerce(v, vt, f"{key}.{k}", where)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        raise bad
    raise bad  # pragma: no cover - a type hint this module does not handle


def _build(cls: type, data: Any, prefix: str, where: str):
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {prefix[:-1] or 'the file'} must be a mapping of keys, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, 1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else ""
        raise ConfigError(
            f"{where}: unknown key {prefix}{key}{hint} (valid keys{' of ' + prefix[:-1] if prefix else ''}: "
            f"{', '.join(names)})"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(data[name], tp, f"{prefix}{name}", where)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    if any(not k for k in keys):
        raise ConfigError(f"{where}: {dotted!r} is not a dotted key such as loss.margin")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: cannot set {dotted}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.margin=0.3"`` -> ``("loss.margin", 0.3)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. --set loss.margin=0.3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def config_from_dict(data: Mapping | None, where: str = "config",
                     overrides: Sequence[str | tuple[str, Any]] = ()) -> TrainConfig:
    """Build, override, check and resolve a configuration from a plain mapping."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the file must be a mapping of sections (model:, data:, "
                          f"loss:, ...), got {type(data).__name__}")
    tree: dict = _deep_copy(dict(data or {}))
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(tree, key, value, f"{where} (override {key})")
    cfg = _build(TrainConfig, tree, "", where)
    return resolve(cfg, where)


def _deep_copy(d: Any) -> Any:
    if isinstance(d, Mapping):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_config(path: str | os.PathLike | None,
                overrides: Sequence[str | tuple[str, Any]] = ()) -> TrainConfig:
    """Read a YAML config file (or only defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return config_from_dict({}, "defaults", overrides)
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_dict(data, str(path), overrides)


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def resolve(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Check cross-field rules and fill in derived defaults (returns the same object)."""
    m, d, l, o, t, v, s, r = (cfg.model, cfg.data, cfg.loss, cfg.optimizer, cfg.train,
                              cfg.validation, cfg.scaling, cfg.run)
    min_size = 75 if m.architecture == "inception_resnet_v1" else 32
    _check(m.input_size >= min_size, where,
           f"model.input_size must be >= {min_size} for {m.architecture}, got {m.input_size}")
    _check(m.embedding_size >= 1, where, f"model.embedding_size must be >= 1, got {m.embedding_size}")
    _check(0.0 < m.dropout_keep_prob <= 1.0, where,
           f"model.dropout_keep_prob must be in (0, 1], got {m.dropout_keep_prob}")
    _check(m.weight_decay >= 0, where, f"model.weight_decay must be >= 0, got {m.weight_decay}")
    if m.batch_norm_momentum is not None:
        _check(0.0 < m.batch_norm_momentum < 1.0, where,
               f"model.batch_norm_momentum must be in (0, 1), got {m.batch_norm_momentum}")
    _check(m.trainable_blocks >= 1, where,
           f"model.trainable_blocks must be >= 1, got {m.trainable_blocks}")
    _check(m.width > 0, where, f"model.width must be > 0, got {m.width}")
    _check(len(m.repeats) == 3 and all(x >= 0 for x in m.repeats), where,
           f"model.repeats must be three block counts >= 0 (stages A, B, C), got {m.repeats}")
    if m.pretrained:
        _check(m.architecture == "inception_resnet_v1", where,
               "model.pretrained: the 20180408-102900 weights exist only for "
               "architecture inception_resnet_v1; set model.pretrained: false to train "
               f"{m.architecture} from scratch")
        _check(m.folded_batch_norm in (None, True), where,
               "model.folded_batch_norm: false cannot load the pretrained weights (their batch "
               "norm is folded into the convolutions); use it with model.pretrained: false")
    if m.folded_batch_norm is None:
        m.folded_batch_norm = bool(m.pretrained)

    _check(d.root is not None, where,
           "data.root is required: the image-folder dataset (<root>/<person>/<image>.jpg)")
    _check(d.min_images_per_person >= 1, where,
           f"data.min_images_per_person must be >= 1, got {d.min_images_per_person}")
    _check(d.people_per_batch >= 1 and d.images_per_person >= 1, where,
           "data.people_per_batch and data.images_per_person must be >= 1")
    if l.name == "triplet":
        _check(d.images_per_person >= 2, where,
               "data.images_per_person must be >= 2 for the triplet loss (an anchor needs a positive)")
        _check(d.people_per_batch >= 2, where,
               "data.people_per_batch must be >= 2 for the triplet loss (negatives come from "
               "other people)")
        _check(d.min_images_per_person >= 2, where,
               "data.min_images_per_person must be >= 2 for the triplet loss")
    _check(s.num_workers >= 1, where, f"scaling.num_workers must be >= 1, got {s.num_workers}")
    _check(d.people_per_batch % s.num_workers == 0, where,
           f"data.people_per_batch ({d.people_per_batch}) must be a multiple of "
           f"scaling.num_workers ({s.num_workers}): each worker takes whole identities")
    if d.center_crop is not None:
        _check(d.center_crop >= 1, where, f"data.center_crop must be >= 1, got {d.center_crop}")
    if d.standardization is None:
        from facenet_platform.core.weights import PRETRAINED

        d.standardization = PRETRAINED.standardization if m.pretrained else "prewhiten"
    if d.resize is None:
        d.resize = int(round(m.input_size * 182 / 160))
    _check(d.resize >= m.input_size, where,
           f"data.resize ({d.resize}) must be >= model.input_size ({m.input_size})")
    _check(0 <= d.random_rotate <= 180, where,
           f"data.random_rotate must be in [0, 180] degrees, got {d.random_rotate}")

    _check(l.margin >= 0, where, f"loss.margin must be >= 0, got {l.margin}")
    _check(0.0 <= l.center_alpha <= 1.0, where,
           f"loss.center_alpha must be in [0, 1], got {l.center_alpha}")
    _check(l.center_loss_factor >= 0 and l.prelogits_norm_factor >= 0, where,
           "loss.center_loss_factor and loss.prelogits_norm_factor must be >= 0")
    _check(l.prelogits_norm_p > 0, where,
           f"loss.prelogits_norm_p must be > 0, got {l.prelogits_norm_p}")

    _check(o.learning_rate > 0, where, f"optimizer.learning_rate must be > 0, got {o.learning_rate}")
    _check(o.decay_epochs > 0, where, f"optimizer.decay_epochs must be > 0, got {o.decay_epochs}")
    _check(0 < o.decay_factor <= 1, where,
           f"optimizer.decay_factor must be in (0, 1], got {o.decay_factor}")
    _check(o.epsilon > 0 and o.momentum >= 0, where,
           "optimizer.epsilon must be > 0 and optimizer.momentum >= 0")

    _check(t.epochs >= 1, where, f"train.epochs must be >= 1, got {t.epochs}")
    if t.steps_per_epoch is not None:
        _check(t.steps_per_epoch >= 1, where,
               f"train.steps_per_epoch must be >= 1, got {t.steps_per_epoch}")
    _check(t.log_every_steps >= 0, where, "train.log_every_steps must be >= 0")

    if v.max_pairs is not None:
        _check(v.max_pairs >= 2, where, f"validation.max_pairs must be >= 2, got {v.max_pairs}")
    _check(v.batch_size >= 1, where, f"validation.batch_size must be >= 1, got {v.batch_size}")
    _check(v.n_folds >= 2, where, f"validation.n_folds must be >= 2, got {v.n_folds}")

    if s.threads_per_worker is None:
        s.threads_per_worker = max(1, int(round(s.resources_per_worker.get("CPU", 1.0))))
    _check(s.threads_per_worker >= 1, where, "scaling.threads_per_worker must be >= 1")
    _check(r.num_to_keep >= 1, where, f"run.num_to_keep must be >= 1, got {r.num_to_keep}")
    _check(r.max_failures >= -1, where, f"run.max_failures must be >= -1, got {r.max_failures}")
    return cfg


def flag_overrides(args) -> list[tuple[str, Any]]:
    """The typed CLI flags of ``facenet-platform train`` as ``(dotted key, value)`` overrides."""
    out = []
    for flag, key in TYPED_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out.append((key, value))
    return out


#: typed flags of ``facenet-platform train`` -> the config key they set
TYPED_FLAGS: dict[str, str] = {
    "--data-root": "data.root",
    "--epochs": "train.epochs",
    "--steps-per-epoch": "train.steps_per_epoch",
    "--num-workers": "scaling.num_workers",
    "--loss": "loss.name",
    "--margin": "loss.margin",
    "--learning-rate": "optimizer.learning_rate",
    "--name": "run.name",
    "--storage-path": "run.storage_path",
    "--resume-from": "run.resume_from",
    "--ray-address": "run.ray_address",
}
