"""Model registry: name -> paper, year, framework classes and fixed hyper-parameters.

This module imports neither torch nor TensorFlow (the CLI lists models without them); a model
class is imported only when a model is built (:func:`build_torch_model`, :func:`build_tf_model`,
:func:`build_model`) or its keywords are resolved (:func:`resolved_hparams`).

The PyTorch and TensorFlow class of a name take the same constructor arguments (names, defaults,
order) and compute the same function; :mod:`ctrkit.parity` maps the weights between them.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrkit.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    Attributes:
        name: registry name (lower case), e.g. ``"deepfm"``.
        title: display name, e.g. ``"DeepFM"``.
        paper: short citation.
        year: publication year.
        torch_class: ``"module:Class"`` of the PyTorch implementation.
        tf_class: ``"module:Class"`` of the TensorFlow implementation, or None.
        defaults: hyper-parameters implied by the name (e.g. ``{"use_dnn": True}`` for autoint+);
            explicit hyper-parameters passed to :func:`build_model` take precedence.
        embedding_width: ``(num_fields, hparams) -> floats per embedding-table row``, summed over
            the model's tables (every table has one row per vocabulary entry and dense field);
            what :func:`embedding_bytes` multiplies by the rows. ``hparams`` are the merged
            hyper-parameters; an absent ``embed_size`` means the constructor's default (checked
            against the built models by the tests).
    """

    name: str
    title: str
    paper: str
    year: int
    torch_class: str
    tf_class: str | None = None
    defaults: dict = field(default_factory=dict)
    embedding_width: Callable[[int, Mapping[str, Any]], int] | None = None
    #: the model attends over behaviour sequences: a schema without a sequence field is refused
    needs_sequence: bool = False


def _width(default_embed_size: int, per_field: bool = False, linear: bool = False) -> Callable[[int, Mapping], int]:
    """Row width of a model's tables: ``embed_size`` (times ``F`` for field-aware rows), plus 1 for a first-order term."""

    def width(num_fields: int, hparams: Mapping[str, Any]) -> int:
        size = int(hparams.get("embed_size") or default_embed_size)
        return size * (num_fields if per_field else 1) + (1 if linear else 0)

    return width


def _model(
    name: str, title: str, paper: str, year: int, path: str, width: Callable[[int, Mapping], int], **defaults: Any
) -> ModelInfo:
    """The entry of a model implemented in both frameworks, as ``module:Class`` in each package."""
    return ModelInfo(name, title, paper, year, "ctrkit.pytorch.models." + path, "ctrkit.tensorflow.models." + path,
                     defaults, width)


def _sequence_model(info: ModelInfo) -> ModelInfo:
    """``info`` marked as needing a sequence field (DIN, DIEN)."""
    return dataclasses.replace(info, needs_sequence=True)


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        _model("lr", "LR", "Richardson et al., Predicting Clicks, WWW 2007", 2007, "lr:LR", lambda f, h: 1),
        _model("dnn", "DNN", "Cheng et al., Wide & Deep Learning (deep part), DLRS 2016", 2016, "dnn:DNN", _width(16)),
        _model("fm", "FM", "Rendle, Factorization Machines, ICDM 2010", 2010, "fm:FM", _width(16, linear=True)),
        _model("ffm", "FFM", "Juan et al., Field-aware Factorization Machines, RecSys 2016", 2016, "ffm:FFM",
               _width(4, per_field=True, linear=True)),
        _model("deepfm", "DeepFM", "Guo et al., DeepFM, IJCAI 2017", 2017, "deepfm:DeepFM", _width(16, linear=True)),
        _model("dcn", "DCN", "Wang et al., Deep & Cross Network, ADKDD 2017", 2017, "dcn:DCN", _width(16)),
        _model("afm", "AFM", "Xiao et al., Attentional Factorization Machines, IJCAI 2017", 2017, "afm:AFM",
               _width(16, linear=True)),
        _model("xdeepfm", "xDeepFM", "Lian et al., xDeepFM, KDD 2018", 2018, "xdeepfm:XDeepFM", _width(16, linear=True)),
        _model("autoint", "AutoInt", "Song et al., AutoInt, CIKM 2019", 2019, "autoint:AutoInt", _width(16),
               use_dnn=False),
        _model("autoint+", "AutoInt+", "Song et al., AutoInt, CIKM 2019", 2019, "autoint:AutoInt", _width(16),
               use_dnn=True),
        _model("onn", "ONN", "Yang et al., Operation-aware Neural Networks for User Response Prediction, "
               "Neural Networks 2020 (arXiv 2019)", 2019, "onn:ONN", _width(2, per_field=True)),
        _model("fibinet", "FiBiNET", "Huang et al., FiBiNET, RecSys 2019", 2019, "fibinet:FiBiNET",
               _width(10, linear=True)),
        _model("dcnv2", "DCN-V2", "Wang et al., DCN V2, WWW 2021", 2021, "dcnv2:DCNV2", _width(16)),
        _sequence_model(_model("din", "DIN", "Zhou et al., Deep Interest Network, KDD 2018", 2018, "din:DIN",
                               _width(16))),
        _sequence_model(_model("dien", "DIEN", "Zhou et al., Deep Interest Evolution Network, AAAI 2019", 2019,
                               "dien:DIEN", _width(16))),
    )
}

ALIASES: dict[str, str] = {
    "autoint_plus": "autoint+",
    "autointplus": "autoint+",
    "autoint-plus": "autoint+",
    "xdeep_fm": "xdeepfm",
    "deep_fm": "deepfm",
    "logistic_regression": "lr",
    "nffm": "onn",
    "dcn_v2": "dcnv2",
    "dcn-v2": "dcnv2",
    "dcn-m": "dcnv2",
}


def get_model_info(name: str) -> ModelInfo:
    """Look a model up by name (case-insensitive; aliases such as ``autoint_plus`` accepted)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    try:
        return MODELS[key]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def _load(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


#: Attributes :func:`build_model` sets on the model it returns: the registry name and every
#: constructor keyword the model was built with, defaults included (what a checkpoint must record
#: so that the same model can be built again).
NAME_ATTRIBUTE = "ctrkit_name"
HPARAMS_ATTRIBUTE = "ctrkit_hparams"


def _constructor_keywords(cls: Any) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters
    return {k: p for k, p in params.items() if k != "schema" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def plain(value: Any) -> Any:
    """Python's own types, recursively (tuples as lists, numpy scalars as int/float/bool).

    Checkpoints are loaded with ``weights_only=True``, which refuses other types, and JSON, Keras
    configs and the resume check compare lists.
    """
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (bool, str, int, float)) or value is None:
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # not an Integral
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


#: the frameworks a model can be built in, and the package each one needs
FRAMEWORKS: dict[str, str] = {"torch": "torch", "tf": "tensorflow"}


def _check_framework(framework: str) -> str:
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    return framework


def _class_path(info: ModelInfo, framework: str) -> str:
    path = info.torch_class if _check_framework(framework) == "torch" else info.tf_class
    if path is None:
        raise ConfigError(f"model {info.name} has no {framework} implementation")
    return path


def _installed_framework() -> str:
    """The first framework of :data:`FRAMEWORKS` that is installed (found without importing it)."""
    for framework, package in FRAMEWORKS.items():
        if importlib.util.find_spec(package) is not None:
            return framework
    raise ConfigError("neither PyTorch nor TensorFlow is installed; install ctrkit[torch] or ctrkit[tf]")


def resolved_hparams(name: str, hparams: dict | None = None, framework: str | None = None) -> dict[str, Any]:
    """Every constructor keyword of model ``name`` with the value it gets from ``hparams``.

    Registry defaults are merged under ``hparams`` and the constructor's own defaults fill the
    rest; keywords the constructor does not take are left out. Two hyper-parameter dicts build
    the same model exactly when their resolved forms are equal (an old checkpoint recorded only
    the values a user set; resolving it makes it comparable with a new one). Both frameworks'
    classes have the same constructor, so the result does not depend on ``framework``, which
    only picks the class to inspect (default: the first installed framework).
    """
    info = get_model_info(name)
    keywords = _constructor_keywords(_load(_class_path(info, framework or _installed_framework())))
    given = {k: v for k, v in (hparams or {}).items() if v is not None}
    merged = {**info.defaults, **given}
    resolved = {}
    for key, param in keywords.items():
        if key in merged:
            resolved[key] = merged[key]
        elif param.default is not param.empty:
            resolved[key] = param.default
    return plain(resolved)


@dataclass(frozen=True)
class Hparam:
    """One constructor keyword of a model: its default (registry defaults applied) and its meaning."""

    name: str
    default: Any
    meaning: str = ""


def model_hparams(name: str) -> list[Hparam]:
    """Every constructor keyword of model ``name``, in order, with its default and meaning.

    Read from the PyTorch class's source (its ``__init__`` defaults and the ``Args:`` section of its
    docstring), so that ``ctrkit models`` imports no framework; registry defaults (``use_dnn`` of
    autoint+) replace the constructor's. The tests check the defaults against
    :func:`resolved_hparams`, which builds them from the class itself.
    """
    import ast

    info = get_model_info(name)
    module, _, class_name = info.torch_class.partition(":")
    source = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == class_name)
    init = next(node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    meanings = _docstring_args(ast.get_docstring(cls) or "")
    positional = init.args.args
    pairs = list(zip(positional[len(positional) - len(init.args.defaults):], init.args.defaults))
    pairs += [(arg, default) for arg, default in zip(init.args.kwonlyargs, init.args.kw_defaults) if default]
    out = []
    for arg, node in pairs:
        try:
            default = plain(ast.literal_eval(node))
        except ValueError:  # a constant's name: shown as written
            default = ast.unparse(node)
        default = plain(info.defaults.get(arg.arg, default))
        out.append(Hparam(arg.arg, default, meanings.get(arg.arg, "")))
    return out


def _docstring_args(doc: str) -> dict[str, str]:
    """``name -> meaning`` from the ``Args:`` section of a Google-style docstring (continuation lines joined)."""
    meanings: dict[str, str] = {}
    lines = doc.split("Args:", 1)[1].splitlines() if "Args:" in doc else []
    current = None
    for line in lines[1:]:
        if not line.strip():
            if current:
                break
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, text = line.strip().partition(":")
        keys = [k.strip() for k in key.split(",")]
        if indent <= 4 and sep and all(k and " " not in k for k in keys):
            for name in keys:  # "dropout, batch_norm: of the MLP." -> "(dropout, batch_norm) of the MLP."
                meanings[name] = f"({', '.join(keys)}) {text.strip()}" if len(keys) > 1 else text.strip()
            current = keys[-1]
        elif current and indent > 4:
            meanings[current] = f"{meanings[current]} {line.strip()}".strip()
        else:
            break
    return {k: v.replace("``", "") for k, v in meanings.items()}


def model_name_of(model: Any) -> str | None:
    """The registry name of a model object (either framework), or None for a model the registry does not know.

    A model from :func:`build_model` carries its name; otherwise the class decides, and a class
    registered under several names (AutoInt, AutoInt+) by the registry defaults it matches.
    """
    name = getattr(model, NAME_ATTRIBUTE, None)
    if name:
        return str(name)
    cls = type(model)
    path = f"{cls.__module__}:{cls.__qualname__}"
    candidates = [info for info in MODELS.values() if path in (info.torch_class, info.tf_class)]
    for info in candidates:
        if all(getattr(model, key, None) == value for key, value in info.defaults.items()):
            return info.name
    return candidates[0].name if len(candidates) == 1 else None


def build_model(name: str, schema: Any, hparams: dict | None = None, framework: str = "torch") -> tuple[Any, list[str]]:
    """Build the model registered as ``name`` in ``framework`` (``"torch"`` or ``"tf"``).

    Registry defaults are merged under ``hparams`` (explicit values win; ``None`` values count as
    not given, so the model's own default applies). Only the keywords that the
    constructor accepts are passed; the others are returned, sorted, as ``ignored`` so the CLI can
    warn about them, together with keywords the model accepts but does not use in this
    configuration (``model.unused_hparams``, e.g. ``hidden_units`` of plain AutoInt).

    The model gets two attributes, ``ctrkit_name`` (the registry name) and ``ctrkit_hparams``
    (:func:`resolved_hparams`: every constructor keyword, defaults included), which the trainers
    write to checkpoints and ``metrics.json``. The same call in the other framework validates the
    same way, ignores the same keys and records the same hyper-parameters. A TensorFlow model
    takes Keras's global dtype policy (build it inside ``precision_policy`` for bf16).

    Example::

        model, ignored = build_model("deepfm", store.schema, {"embed_size": 8}, framework="tf")

    Returns:
        ``(model, ignored)``.

    Raises:
        ConfigError: unknown name or framework, or an invalid hyper-parameter value (the message
            names it).
    """
    info = get_model_info(name)
    cls = _load(_class_path(info, framework))
    given = {k: v for k, v in (hparams or {}).items() if v is not None}
    merged = {**info.defaults, **given}
    accepted = _constructor_keywords(cls)
    kwargs = {k: v for k, v in merged.items() if k in accepted}
    ignored = {k for k in merged if k not in accepted}
    try:
        model = cls(schema, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"model {info.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {info.name}: invalid hyper-parameter: {exc}") from None
    ignored |= {k for k in getattr(model, "unused_hparams", ()) if k in given}
    setattr(model, NAME_ATTRIBUTE, info.name)
    setattr(model, HPARAMS_ATTRIBUTE, resolved_hparams(info.name, given, framework))
    return model, sorted(ignored)


def build_torch_model(name: str, schema: Any, hparams: dict | None = None) -> tuple[Any, list[str]]:
    """:func:`build_model` in PyTorch: ``(model, ignored)``."""
    return build_model(name, schema, hparams, framework="torch")


def build_tf_model(name: str, schema: Any, hparams: dict | None = None) -> tuple[Any, list[str]]:
    """:func:`build_model` in TensorFlow (Keras 3): ``(model, ignored)``."""
    return build_model(name, schema, hparams, framework="tf")


# ---------------------------------------------------------------------------------------------
# Memory: the embedding tables dominate a CTR model's memory (ONN's and FFM's rows are F times
# wider than the others'), so training refuses a configuration whose tables cannot fit instead of
# swapping for hours.
# ---------------------------------------------------------------------------------------------

#: bytes of one float32 parameter
FLOAT_BYTES = 4
#: copies of every embedding table that training keeps: the weights, their gradient (a dense
#: table-sized tensor in the torch backward), and Adam's two moment estimates
TRAINING_COPIES = 4


def _merged_hparams(info: ModelInfo, hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**info.defaults, **{k: v for k, v in (hparams or {}).items() if v is not None}}


def embedding_bytes(name: str, schema: Any, hparams: Mapping[str, Any] | None = None) -> int:
    """Bytes of the float32 embedding tables of model ``name`` built on ``schema`` with ``hparams``.

    ``rows x width x 4`` where ``rows`` is the vocabulary plus one row per dense field and
    ``width`` the model's floats per row (:attr:`ModelInfo.embedding_width`: ``F * embed_size``
    for ONN, ``F * embed_size + 1`` for FFM, ``embed_size`` (+ 1 with a first-order term) for the
    others). Imports neither framework.

    Example::

        embedding_bytes("onn", store.schema, {"embed_size": 4})  # (V + n_dense) * F * 4 * 4
    """
    info = get_model_info(name)
    num_fields = len(schema.sparse) + len(schema.dense) + len(schema.sequence)
    rows = int(schema.total_vocab) + len(schema.dense)
    width = info.embedding_width(num_fields, _merged_hparams(info, hparams)) if info.embedding_width else 0
    return rows * width * FLOAT_BYTES


def _cgroup_memory_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max`` or v1), or None when unlimited/unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text)
    return None


def available_memory_bytes() -> int | None:
    """Physical memory of this machine (``os.sysconf``), or the cgroup limit when lower; None if unknown."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = None
    limits = [v for v in (physical, _cgroup_memory_limit()) if v]
    return min(limits) if limits else None


def check_fits_in_memory(
    name: str,
    schema: Any,
    hparams: Mapping[str, Any] | None = None,
    available: int | None = None,
    copies: int = TRAINING_COPIES,
) -> int:
    """Refuse (one-line :class:`ConfigError`) a model whose embedding tables cannot be trained in memory.

    Training keeps ``copies`` table-sized arrays (weights, gradient, two Adam moments); their sum
    is compared with ``available`` bytes (default: :func:`available_memory_bytes`, the physical
    memory or the cgroup limit). Returns the estimate in bytes. An unknown amount of memory
    refuses nothing.

    Example::

        check_fits_in_memory(config.model, store.schema, config.hparams())  # before building the model
    """
    info = get_model_info(name)
    needed = embedding_bytes(info.name, schema, hparams) * copies
    available = available_memory_bytes() if available is None else available
    if available and needed > available:
        gib = 1 << 30
        num_fields = len(schema.sparse) + len(schema.dense) + len(schema.sequence)
        width = info.embedding_width(num_fields, _merged_hparams(info, hparams)) if info.embedding_width else 0
        rows = int(schema.total_vocab) + len(schema.dense)
        raise ConfigError(
            f"model {info.name} does not fit in memory: its embedding tables need about {needed / gib:.1f} GiB to "
            f"train ({rows:,} rows x {width} floats x {copies} copies: weights, gradient, Adam state), this "
            f"machine has {available / gib:.1f} GiB; lower --embed_size or raise the store's min_count"
        )
    return needed
