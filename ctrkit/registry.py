"""Model registry: name -> paper, year, framework classes and fixed hyper-parameters.

This module does not import torch (the CLI lists models without it); the model class is imported
only by :func:`build_torch_model`.
"""

from __future__ import annotations

import importlib
import inspect
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


def build_torch_model(name: str, schema: Any, hparams: dict | None = None) -> tuple[Any, list[str]]:
    """Build the PyTorch model registered as ``name``.

    Registry defaults are merged under ``hparams`` (explicit values win; ``None`` values count as
    not given, so the model's own default applies). Only the keywords that the
    constructor accepts are passed; the others are returned, sorted, as ``ignored`` so the CLI can
    warn about them, together with keywords the model accepts but does not use in this
    configuration (``model.unused_hparams``, e.g. ``hidden_units`` of plain AutoInt).

    Returns:
        ``(model, ignored)``.

    Raises:
        ConfigError: unknown name, or an invalid hyper-parameter value (the message names it).
    """
    info = get_model_info(name)
    cls = _load(info.torch_class)
    given = {k: v for k, v in (hparams or {}).items() if v is not None}
    merged = {**info.defaults, **given}
    params = inspect.signature(cls).parameters
    accepted = {k for k, p in params.items() if k != "schema" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in merged.items() if k in accepted}
    ignored = {k for k in merged if k not in accepted}
    try:
        model = cls(schema, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"model {info.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {info.name}: invalid hyper-parameter: {exc}") from None
    ignored |= {k for k in getattr(model, "unused_hparams", ()) if k in given}
    return model, sorted(ignored)
