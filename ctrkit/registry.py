"""Model registry: name -> paper, year, framework classes and fixed hyper-parameters.

This module does not import torch (the CLI lists models without it); the model class is imported
only by :func:`build_torch_model`.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
from dataclasses import dataclass, field
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
            explicit hyper-parameters passed to :func:`build_torch_model` take precedence.
    """

    name: str
    title: str
    paper: str
    year: int
    torch_class: str
    tf_class: str | None = None
    defaults: dict = field(default_factory=dict)


_T = "ctrkit.pytorch.models."

MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("lr", "LR", "Richardson et al., Predicting Clicks, WWW 2007", 2007, _T + "lr:LR"),
        ModelInfo("dnn", "DNN", "Cheng et al., Wide & Deep Learning (deep part), DLRS 2016", 2016, _T + "dnn:DNN"),
        ModelInfo("fm", "FM", "Rendle, Factorization Machines, ICDM 2010", 2010, _T + "fm:FM"),
        ModelInfo("ffm", "FFM", "Juan et al., Field-aware Factorization Machines, RecSys 2016", 2016, _T + "ffm:FFM"),
        ModelInfo("deepfm", "DeepFM", "Guo et al., DeepFM, IJCAI 2017", 2017, _T + "deepfm:DeepFM"),
        ModelInfo("dcn", "DCN", "Wang et al., Deep & Cross Network, ADKDD 2017", 2017, _T + "dcn:DCN"),
        ModelInfo("afm", "AFM", "Xiao et al., Attentional Factorization Machines, IJCAI 2017", 2017, _T + "afm:AFM"),
        ModelInfo("xdeepfm", "xDeepFM", "Lian et al., xDeepFM, KDD 2018", 2018, _T + "xdeepfm:XDeepFM"),
        ModelInfo(
            "autoint", "AutoInt", "Song et al., AutoInt, CIKM 2019", 2019, _T + "autoint:AutoInt",
            defaults={"use_dnn": False},
        ),
        ModelInfo(
            "autoint+", "AutoInt+", "Song et al., AutoInt, CIKM 2019", 2019, _T + "autoint:AutoInt",
            defaults={"use_dnn": True},
        ),
    )
}

ALIASES: dict[str, str] = {
    "autoint_plus": "autoint+",
    "autointplus": "autoint+",
    "autoint-plus": "autoint+",
    "xdeep_fm": "xdeepfm",
    "deep_fm": "deepfm",
    "logistic_regression": "lr",
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


#: Attributes :func:`build_torch_model` sets on the model it returns: the registry name and every
#: constructor keyword the model was built with, defaults included (what a checkpoint must record
#: so that the same model can be built again).
NAME_ATTRIBUTE = "ctrkit_name"
HPARAMS_ATTRIBUTE = "ctrkit_hparams"


def _constructor_keywords(cls: Any) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters
    return {k: p for k, p in params.items() if k != "schema" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _plain(value: Any) -> Any:
    """Python's own types, recursively (tuples as lists, numpy scalars as int/float/bool).

    Checkpoints are loaded with ``weights_only=True``, which refuses other types, and JSON and the
    resume check compare lists.
    """
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (bool, str, int, float)) or value is None:
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # not an Integral
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def resolved_hparams(name: str, hparams: dict | None = None) -> dict[str, Any]:
    """Every constructor keyword of model ``name`` with the value it gets from ``hparams``.

    Registry defaults are merged under ``hparams`` and the constructor's own defaults fill the
    rest; keywords the constructor does not take are left out. Two hyper-parameter dicts build
    the same model exactly when their resolved forms are equal (an old checkpoint recorded only
    the values a user set; resolving it makes it comparable with a new one).
    """
    info = get_model_info(name)
    keywords = _constructor_keywords(_load(info.torch_class))
    given = {k: v for k, v in (hparams or {}).items() if v is not None}
    merged = {**info.defaults, **given}
    resolved = {}
    for key, param in keywords.items():
        if key in merged:
            resolved[key] = merged[key]
        elif param.default is not param.empty:
            resolved[key] = param.default
    return _plain(resolved)


def model_name_of(model: Any) -> str | None:
    """The registry name of a model object, or None for a model the registry does not know.

    A model from :func:`build_torch_model` carries its name; otherwise the class decides, and a
    class registered under several names (AutoInt, AutoInt+) by the registry defaults it matches.
    """
    name = getattr(model, NAME_ATTRIBUTE, None)
    if name:
        return str(name)
    cls = type(model)
    path = f"{cls.__module__}:{cls.__qualname__}"
    candidates = [info for info in MODELS.values() if info.torch_class == path]
    for info in candidates:
        if all(getattr(model, key, None) == value for key, value in info.defaults.items()):
            return info.name
    return candidates[0].name if len(candidates) == 1 else None


def build_torch_model(name: str, schema: Any, hparams: dict | None = None) -> tuple[Any, list[str]]:
    """Build the PyTorch model registered as ``name``.

    Registry defaults are merged under ``hparams`` (explicit values win; ``None`` values count as
    not given, so the model's own default applies). Only the keywords that the
    constructor accepts are passed; the others are returned, sorted, as ``ignored`` so the CLI can
    warn about them, together with keywords the model accepts but does not use in this
    configuration (``model.unused_hparams``, e.g. ``hidden_units`` of plain AutoInt).

    The model gets two attributes, ``ctrkit_name`` (the registry name) and ``ctrkit_hparams``
    (:func:`resolved_hparams`: every constructor keyword, defaults included), which the trainer
    writes to checkpoints and ``metrics.json``.

    Returns:
        ``(model, ignored)``.

    Raises:
        ConfigError: unknown name, or an invalid hyper-parameter value (the message names it).
    """
    info = get_model_info(name)
    cls = _load(info.torch_class)
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
    setattr(model, HPARAMS_ATTRIBUTE, resolved_hparams(info.name, given))
    return model, sorted(ignored)
