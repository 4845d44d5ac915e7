"""Typed training config. Recipes are YAML files (``mnv2/recipes/*.yaml``) holding values only; CLI flags
override them; the resolved config is saved as ``config.yaml`` in the run directory and in each checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mnv2.data.preprocessing import DEFAULT_INPUT_SIZE
from mnv2.data.transforms import AugmentConfig
from mnv2.errors import ConfigError
from mnv2.models.layers import PADDING_MODES
from mnv2.models.mobilenetv2 import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from mnv2.tasks import DEFAULT_TASK, TASKS
from mnv2.typed import option, option_fields, strict_from_dict

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("exp", "cosine", "onecycle", "poly")
AMP_MODES = ("auto", "bf16", "off")
BN_MODES = ("train", "frozen")
FREEZE_HELP = "none | stem | stage:N (stem and stages < N) | backbone (all but the classifier)"


def flag(default: Any = None, help: str = "", **kw):
    """A config field that is also a ``mnv2 train`` flag (``--field-name``; :func:`mnv2.typed.option`)."""
    return option(default, help, **kw)


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` in a CLI flag means "keep the recipe's value".

    Learning rate: ``lr`` is given per ``lr_batch`` images and scaled linearly with ``batch_size`` (paper: 0.045
    per 96, §6.1 of the paper via P-v4). ``decay_rate`` per ``decay_epochs`` applies to the ``exp`` schedule.
    Fields made with :func:`flag` are ``mnv2 train`` flags; those with ``resume=True`` may change on ``--resume``.
    """

    recipe: str = "default"
    task: str = flag(DEFAULT_TASK, "what to train (a module of mnv2.tasks)", choices=tuple(TASKS))
    # data
    data: str = flag("fashion-mnist", "fashion-mnist (built in) or an image folder (root/train, root/val or "
                     "root/<class>)")  # fmt: skip
    data_root: str | None = flag(None, "directory holding the Fashion-MNIST IDX files (else cache/Debian/download)")
    val_split: float = flag(0.1, "val fraction when --data is one folder of classes")
    strict: bool = flag(False, "fail on corrupt or non-image files instead of skipping")
    workers: int = flag(2, "DataLoader worker processes for image folders", resume=True)
    train_limit: int | None = None  # use only the first N train / val samples (smoke tests, quick trials)
    val_limit: int | None = None
    # model
    model: str | None = flag(None, "registered model name (overrides --width)")
    width: float = flag(0.35, "width multiplier")
    resolution: int = flag(32, "input size in pixels (>= 32)")
    stem_stride: int = flag(2, "2 as published; 1 for small images", choices=(1, 2))
    padding: str = flag("torch", "torch (symmetric) or tf (TF 'SAME', as TF-slim and Keras)", choices=PADDING_MODES)
    dropout: float = 0.2
    bn_momentum: float | None = flag(None, "BatchNorm running-statistics momentum, PyTorch convention (new = (1-m) old "
                                     "+ m batch); default: the recipe's, else the model's or --init's")  # fmt: skip
    # optimisation
    epochs: int = flag(10, "epochs (on --resume: a larger value extends the run); given, it overrides the recipe's "
                       "--steps", resume=True)  # fmt: skip
    steps: int | None = flag(None, "optimizer steps to train for: --epochs is derived from the train set's size (the "
                             "detection and segmentation recipes give a budget, so a small set still gets enough "
                             "steps); written into config.yaml as epochs")  # fmt: skip
    min_epochs: int = flag(0, "with a step budget (--steps): train at least this many epochs, so a larger set is "
                           "seen this often whatever the budget (0 = no floor)")  # fmt: skip
    batch_size: int = flag(128, "global batch size (split over processes)")
    optimizer: str = flag("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = flag(0.1, "learning rate per --lr-batch images (scaled linearly)")
    lr_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = flag(5e-5, "L2 on conv/linear weights (not BN, biases, depthwise)")
    rmsprop_decay: float = 0.9  # paper: "RMSPropOptimizer with both decay and momentum set to 0.9"
    rmsprop_eps: float = 1.0  # TF-slim --opt_epsilon=1.0 inside the sqrt; torch adds eps outside: sqrt(1.0) = 1.0
    schedule: str = flag("onecycle", "learning-rate schedule", choices=SCHEDULES)
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # linear warm-up in optimizer steps (recipes that train by --steps); becomes warmup_epochs
    decay_rate: float = 0.98  # exp schedule: ×0.98 per decay_epochs (paper §6.1)
    decay_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    poly_power: float = 0.9  # poly schedule: (1 - progress) ** power (TF DeepLab's learning_power, §6.3)
    label_smoothing: float = flag(0.0, "label smoothing (TF-slim: 0.1)")
    ema_decay: float = flag(0.0, "weight EMA decay (0 = off; TF-slim: 0.9999)")
    grad_clip: float = flag(0.0, "max global gradient norm (0 = off)")
    precise_bn: int = flag(0, "recompute BatchNorm statistics on this many train images before each evaluation (0 = "
                           "off): new layers' running statistics lag far behind in short fine-tunes")  # fmt: skip
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # the task's own options (Task.options, typed there: detection's score function, anchors and tiles;
    # segmentation's output stride, ASPP, ignore index and class weights); their flags are `mnv2 train` flags too
    options: dict = field(default_factory=dict)
    # engine
    amp: str = flag("auto", "auto (bf16 on CUDA / AMX CPUs), bf16 or off", choices=AMP_MODES)
    channels_last: bool = True
    compile: bool = flag(False, "torch.compile the model")
    keep_memory: bool = True  # CPU: keep freed activation memory instead of returning it to the OS every step
    threads: int | None = flag(None, "torch CPU threads (default: the cores free now)", resume=True)
    seed: int = flag(0, "seed of initialisation, order, augmentation and dropout")
    eval_batch_size: int = 500
    # fine-tuning
    init: str | None = flag(None, "fine-tune from this checkpoint (its head is replaced for new classes)")
    freeze: str = flag("none", FREEZE_HELP)
    bn: str = flag("train", "train (update BN statistics) or frozen (use the checkpoint's)", choices=BN_MODES)
    qat: bool = flag(False, "quantization-aware fine-tuning of --init: trains the simulated INT8 model; then run "
                     "mnv2 quantize")  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = strict_from_dict(AugmentConfig, self.augment, "augment")
        if isinstance(self.augment.scale, list):
            self.augment = dataclasses.replace(self.augment, scale=tuple(self.augment.scale))
        self._check_numbers()
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}"),
            (self.bn in BN_MODES, "bn must be train or frozen"),
            (self.task in TASKS, f"task must be one of {tuple(TASKS)}"),
            (self.poly_power > 0, "poly_power must be > 0"),
            (isinstance(self.precise_bn, int) and self.precise_bn >= 0, "precise_bn must be an integer >= 0"),
            (self.padding in PADDING_MODES, f"padding must be one of {PADDING_MODES}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be an integer >= 1"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be an integer >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            # ModelEma averages every buffer, and the per-channel observers' buffers change shape on first use.
            (not self.qat or not self.ema_decay, "qat does not combine with weight EMA: set --ema-decay 0"),
            (not self.qat or not self.compile, "qat does not combine with --compile (fake-quant observers)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{msg} (recipe {self.recipe!r}); got {self._value_for(msg)!r}")
        parse_freeze(self.freeze)
        typed = self.task_options()  # the options are the task's, and valid
        if typed is not None:  # every option's value written out, so config.yaml reproduces the run
            self.options = {f.name: getattr(typed, f.name) for f in dataclasses.fields(typed)}

    def task_options(self) -> Any:
        """The task's typed options (``Task.options``) of this run: ``options`` checked against them."""
        cls = TASKS[self.task].options
        if cls is None:
            if self.options:
                raise ConfigError(f"task {self.task!r} takes no options (recipe {self.recipe!r}); got {self.options!r}")
            return None
        return strict_from_dict(cls, self.options, f"{self.task} options (recipe {self.recipe!r})")

    def _check_numbers(self) -> None:
        """Every number finite and in range, whether it comes from a flag, a recipe or a saved run (``--resume``)."""
        r = f" (recipe {self.recipe!r})"
        ints = {  # name: (lowest value, None allowed)
            "epochs": (1, False), "batch_size": (1, False), "eval_batch_size": (1, False), "lr_batch": (1, False),
            "workers": (0, False), "threads": (1, True), "resolution": (MIN_INPUT_SIZE, False),
            "train_limit": (1, True), "val_limit": (1, True), "seed": (0, False), "steps": (1, True),
            "warmup_steps": (0, False), "min_epochs": (0, False),
        }  # fmt: skip
        for name, (low, optional) in ints.items():
            v = getattr(self, name)
            if v is None and optional:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}{' or unset' if optional else ''}{r}; got {v!r}")
        if self.resolution > MAX_INPUT_SIZE:
            raise ConfigError(f"resolution must be at most {MAX_INPUT_SIZE} pixels{r}; got {self.resolution}")
        inf = math.inf
        floats = {  # name: (low, high, low inclusive, high inclusive)
            "lr": (0, inf, False, False), "weight_decay": (0, inf, True, False), "momentum": (0, 1, True, False),
            "label_smoothing": (0, 1, True, False), "ema_decay": (0, 1, True, False),
            "grad_clip": (0, inf, True, False),
            "dropout": (0, 1, True, False), "val_split": (0, 1, True, False), "width": (0, inf, False, False),
            "rmsprop_decay": (0, 1, True, False), "rmsprop_eps": (0, inf, False, False),
            "warmup_epochs": (0, inf, True, False), "decay_rate": (0, 1, False, True),
            "decay_epochs": (0, inf, False, False), "min_lr_ratio": (0, 1, True, True),
            "poly_power": (0, inf, False, False),
        }  # fmt: skip
        for name, (low, high, low_in, high_in) in floats.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v >= low if low_in else v > low) and (v <= high if high_in else v < high)
            if not ok:
                rng = f"{'[' if low_in else '('}{low}, {high if high < inf else 'inf'}{']' if high_in else ')'}"
                raise ConfigError(f"{name} must be a finite number in {rng}{r}; got {v!r}")
        check_augment(self.augment, r)

    def _value_for(self, msg: str) -> Any:
        return getattr(self, msg.split()[0], None)

    @property
    def scaled_lr(self) -> float:
        """Peak learning rate for ``batch_size`` (linear scaling rule)."""
        return self.lr * self.batch_size / self.lr_batch

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"]["scale"] = list(d["augment"]["scale"])
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """Build from a recipe, a ``config.yaml`` or a checkpoint's config. Those written before the options were
        the task's held them at the top level (every task's, whatever the run's): its own task's move into
        ``options``, the others are dropped."""
        if isinstance(values, dict) and any(k in values for k in OPTION_OWNERS):
            values = dict(values)
            task = values.get("task", DEFAULT_TASK)
            own = {f.name for f in _option_fields(task)}
            values["options"] = dict(values.get("options") or {})
            for name in OPTION_OWNERS:
                if name in values:
                    value = values.pop(name)
                    if name in own:
                        values["options"].setdefault(name, value)
            # options added since, at the values that reproduce such a run (a resumed run keeps its model)
            options_cls = TASKS[task].options if task in TASKS else None
            for name, value in getattr(options_cls, "BEFORE", {}).items():
                values["options"].setdefault(name, value)
        return strict_from_dict(cls, values, source)


def resolve_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[TrainConfig, list[str]]:
    """Turn the step budget into whole epochs for this train set (issue 24: a recipe tuned on a large set gives a
    200-image set a few hundred steps in as many epochs; here every set gets the budget's steps, and at least
    ``min_epochs`` passes over a larger set), and
    ``warmup_steps`` into ``warmup_epochs``. The result holds epochs only, so ``config.yaml`` and ``--resume``
    reproduce the run whatever the data becomes."""
    spe = max(1, steps_per_epoch)
    notes = []
    if config.steps is not None:
        budget = max(1, math.ceil(config.steps / spe))
        epochs = max(budget, config.min_epochs)
        warm = f", linear warm-up over the first {config.warmup_steps}" if config.warmup_steps else ""
        floor = f" (at least {config.min_epochs} epochs: {epochs * spe} steps)" if epochs > budget else ""
        notes.append(f"{epochs} epochs of {spe} steps for a budget of {config.steps} optimizer steps{floor}{warm} "
                     "(--epochs N overrides it)")  # fmt: skip
        config = dataclasses.replace(config, epochs=epochs, steps=None)
    if config.warmup_steps:
        warmup = min(config.warmup_steps, config.epochs * spe) / spe
        config = dataclasses.replace(config, warmup_epochs=warmup, warmup_steps=0)
    return config, notes


def check_augment(aug: AugmentConfig, where: str = "") -> None:
    """Refuse augmentation values out of range (``augment.scale`` must be two areas 0 < lo <= hi <= 1)."""
    scale = aug.scale
    ok = (
        isinstance(scale, (tuple, list))
        and len(scale) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale)
        and 0 < scale[0] <= scale[1] <= 1
    )
    if not ok:
        raise ConfigError(
            f"augment.scale must be two area fractions [lo, hi] with 0 < lo <= hi <= 1{where}; got {scale!r}"
        )
    probs = {"hflip": aug.hflip, "random_erasing": aug.random_erasing}
    for name, v in probs.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
            raise ConfigError(f"augment.{name} must be a probability in [0, 1]{where}; got {v!r}")
    if not (isinstance(aug.color_jitter, (int, float)) and math.isfinite(aug.color_jitter) and aug.color_jitter >= 0):
        raise ConfigError(f"augment.color_jitter must be a finite number >= 0{where}; got {aug.color_jitter!r}")
    for name in ("crop_padding", "randaugment_n", "randaugment_m"):
        v = getattr(aug, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"augment.{name} must be an integer >= 0{where}; got {v!r}")


def parse_freeze(spec: str) -> tuple[str, int]:
    """``"stage:3"`` → ``("stage", 3)``; validates the ``--freeze`` value."""
    kind, _, n = spec.partition(":")
    if kind in ("none", "stem", "backbone") and not n:
        return kind, 0
    if kind == "stage" and n.isdigit() and 0 <= int(n) <= 7:
        return kind, int(n)
    raise ConfigError(f"--freeze {spec!r} is not valid; use {FREEZE_HELP} (N in 0..7)")


def list_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mnv2.recipes").iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> TrainConfig:
    """A shipped recipe by name (``paper``, ``modern``, ``fashion-mnist``, ``default``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file {name_or_path!r} does not exist")
        text, name = path.read_text(), path.stem
    else:
        if name_or_path not in list_recipes():
            raise ConfigError(f"unknown recipe {name_or_path!r}; shipped: {', '.join(list_recipes())}")
        text, name = (resources.files("mnv2.recipes") / f"{name_or_path}.yaml").read_text(), name_or_path
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {name_or_path!r} is not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {name_or_path!r} must be a mapping of config keys")
    values.setdefault("recipe", name)
    return TrainConfig.from_dict(values, f"recipe {name_or_path!r}")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return ``config`` with the non-``None`` ``overrides`` applied (validated again). A task's option is given by
    its name (``score_fn``) or as ``options.score_fn``; an option of another task than the run's is an error naming
    whose it is."""
    values = config.to_dict()
    if overrides.get("epochs") is not None and overrides.get("steps") is None:
        values["steps"] = None  # an explicit --epochs is what the user asked for, not the recipe's step budget
    task = overrides.get("task") or values["task"]
    if task != values["task"]:
        values["options"] = {}  # another task's options do not carry over
    own = {f.name for f in _option_fields(task)} if task in TASKS else set()
    for k, v in overrides.items():
        if v is None:
            continue
        name = k.removeprefix("options.")
        if name in OPTION_OWNERS:
            if name not in own:
                owners = ", ".join(OPTION_OWNERS[name])
                raise ConfigError(f"--{name.replace('_', '-')} is an option of {owners}, not of {task}")
            values["options"][name] = v
        elif k.startswith("augment."):
            values["augment"][k.split(".", 1)[1]] = v
        else:
            values[k] = v
    return TrainConfig.from_dict(values, "command-line overrides")


def _option_fields(task: str) -> list[dataclasses.Field]:
    cls = TASKS[task].options if task in TASKS else None
    return list(dataclasses.fields(cls)) if cls is not None else []


# Every task option's name and the tasks that have it (the tasks are fixed at import: computed once).
OPTION_OWNERS: dict[str, list[str]] = {}
for _task in TASKS:
    for _field in _option_fields(_task):
        OPTION_OWNERS.setdefault(_field.name, []).append(_task)


def flag_fields() -> list[dataclasses.Field]:
    """The ``mnv2 train`` flags, in declaration order: the config's fields made with :func:`flag`, then each task's
    options (``Task.options``) that are flags, each name once."""
    fields = option_fields(TrainConfig)
    seen = {f.name for f in fields}
    for name in TASKS:
        for f in _option_fields(name):
            if "help" in f.metadata and f.name not in seen:
                seen.add(f.name)
                fields.append(f)
    return fields


# What `mnv2 train --resume` may change; everything else is the saved run's.
RESUME_FLAGS = tuple(f.name for f in flag_fields() if f.metadata["resume"])


def paper_model(task: str, num_classes: int | None = None, **flags: Any):
    """A task's published model (``Task.paper``) with random weights, and its input size, for ``mnv2 summary`` and
    ``mnv2 bench``: the registry's classifier (``--model``/``--width``), or the model the task's recipe builds with
    the paper's flags. ``flags`` (``model``, ``width``, ``resolution``, ``padding``, ``output_stride``, ``aspp``;
    ``None``: the paper's) override them; ``num_classes`` defaults to the paper's class count."""
    from mnv2.models import create_model, mobilenet_v2, model_info
    from mnv2.tasks import get_task

    spec = get_task(task).paper
    classes = num_classes or spec.num_classes
    flags = {**spec.flags, **{k: v for k, v in flags.items() if v is not None}}
    if spec.recipe is not None:  # the task's model as its recipe builds it
        config = apply_overrides(load_recipe(spec.recipe), {"resolution": spec.sizes[0][0], **flags})
        return get_task(task).build_model(config, [str(i) for i in range(classes)]), config.resolution
    arch = {k: flags[k] for k in ("padding", "output_stride") if k in flags}
    if "width" in flags:
        model = mobilenet_v2(width_mult=flags["width"], num_classes=classes, **arch)
        return model, flags.get("resolution", DEFAULT_INPUT_SIZE)
    name = flags.get("model", "mobilenetv2_100")
    model = create_model(name, num_classes=classes, **arch)
    return model, flags.get("resolution") or model_info(name).default_resolution
