"""FuxiCTR's option names, read as ctrkit's: in ``--config`` files and ``ctrkit.train`` keywords.

A user coming from FuxiCTR (https://github.com/reczoo/FuxiCTR) brings its ``model_config.yaml``:
a ``Base`` section and one section per experiment, with ``embedding_dim``, ``net_dropout``,
``learning_rate``, ``embedding_regularizer: 1.e-8`` ... :func:`translate` turns such options into
ctrkit's, one of five ways, each decided by the key (and, for a few, its value):

* **renamed** (:data:`RENAMED`): ``embedding_dim`` is ``embed_size``, ``net_regularizer`` is
  ``weight_decay`` ... The value is kept (``l2(1.e-5)`` regulariser strings are read as the number);
* **model keywords** (:data:`MODEL_KEYWORDS`): FuxiCTR's ``reduction_ratio``, ``use_residual``,
  ``hidden_activations`` ... go to ``model_args`` under the model's own keyword name;
* **what ctrkit always does** (:data:`FIXED`): ``task: binary_classification``, ``shuffle: True``,
  ``metrics: [logloss, AUC]`` are accepted; another value is refused, naming ctrkit's nearest option;
* **bookkeeping** (:data:`IGNORED`): ``verbose``, ``save_best_only`` ... do not change the model, and
  are ignored;
* **no equivalent** (:data:`REFUSED`): ``dataset_id``, ``din_sequence_field`` ... are refused with
  ctrkit's way of saying it (``unknown option 'dataset_id' (FuxiCTR's); ctrkit: --data STORE``).

Every accepted FuxiCTR key gives one note line naming ctrkit's option. A FuxiCTR key and the ctrkit
option it names, both given with different values, are refused naming both. Some keys mean
something that depends on the model (FuxiCTR's AutoInt ``attention_dim`` is the width of all heads
together, ctrkit's the width of one; AFM's is ctrkit's ``attention_factor``); those are read the
FuxiCTR way when the options are FuxiCTR's (:func:`looks_like_fuxictr`).

This module imports neither framework nor the models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ctrkit.errors import ConfigError

#: FuxiCTR key -> the ctrkit option it is (values are converted by :func:`_value_of`).
RENAMED: dict[str, str] = {
    "embedding_dim": "embed_size",
    "net_dropout": "dropout",
    "dnn_hidden_units": "hidden_units",
    "learning_rate": "lr",
    "embedding_regularizer": "embedding_l2",
    "net_regularizer": "weight_decay",
    "num_cross_layers": "cross_layers",
    "crossing_layers": "cross_layers",
    "cin_hidden_units": "cin_layer_units",
    "early_stop_patience": "patience",
    "aux_loss_alpha": "aux_loss_weight",
    "gpu": "gpu_ids",
    "model_root": "model_save_dir",
}

#: FuxiCTR key -> the model keyword (``--model_args``) it is in ctrkit's models.
MODEL_KEYWORDS: dict[str, str] = {
    "hidden_activations": "activation",
    "dnn_activations": "activation",
    "attention_hidden_units": "attention_units",
    "attention_hidden_activations": "attention_activation",
    "attention_activation": "attention_activation",
    "aux_hidden_units": "aux_hidden_units",
    "use_residual": "use_residual",
    "use_scale": "scaled_attention",
    "reduction_ratio": "reduction_ratio",
    "bilinear_type": "bilinear_type",
    "model_structure": "model_structure",
    "use_low_rank_mixture": "use_low_rank_mixture",
    "low_rank": "low_rank",
    "num_experts": "num_experts",
}


def _is_false(value: Any) -> bool:
    return value is False or str(value).strip().lower() in ("false", "0", "no", "off")


def _is_true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def _is_none(value: Any) -> bool:
    return value is None or value == [] or value == {} or str(value).strip().lower() in ("", "null", "none")


def _is_zero(value: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return all(float(item) == 0.0 for item in items)
    except (TypeError, ValueError):
        return False


def _metrics_ctrkit_reports(value: Any) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return all(str(item).strip().lower() in ("logloss", "auc", "gauc") for item in items)


def _default_embedding_init(value: Any) -> bool:
    """FuxiCTR's default ``partial(nn.init.normal_, std=1e-4)``: ctrkit's N(0, 1e-4^2) embedding rows."""
    text = str(value).replace(" ", "")
    match = re.search(r"normal_?\(?.*std=([0-9.eE+-]+)\)", text)
    try:
        return bool(match) and float(match.group(1)) == 1e-4
    except ValueError:
        return False


#: FuxiCTR key -> (does the value match what ctrkit always does?, what ctrkit does / its nearest option).
FIXED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": (lambda v: str(v).strip().lower() == "binary_classification",
             "ctrkit trains binary click models only (--loss BCE)"),
    "metrics": (_metrics_ctrkit_reports, "ctrkit reports auc and logloss (and gauc with a user column); "
                                         "--monitor picks the one that early stopping watches"),
    "shuffle": (_is_true, "ctrkit always shuffles the training rows (by --seed and epoch)"),
    "embedding_initializer": (_default_embedding_init, "embedding rows are N(0, 1e-4^2), FuxiCTR's default; "
                                                       "--init sets the Linear layers"),
    "embedding_dropout": (_is_zero, "--dropout (the DNN's; embeddings get none)"),
    "attention_dropout": (_is_zero, "--dropout (the model's one dropout rate)"),
    "use_wide": (_is_false, "--model autoint+ (adds a DNN, not a wide part)"),
    "layer_norm": (_is_false, "--batch_norm (the DNN's normalisation)"),
    "use_attention": (_is_true, "--model fm (AFM without attention is FM)"),
    "attention_output_activation": (_is_none, "--model_args attention_activation (the hidden layers')"),
    "gru_type": (lambda v: str(v).strip().upper() == "AUGRU", "DIEN's interest evolution is an AUGRU"),
    "dien_neg_seq_field": (_is_none, "DIEN's negatives are the same step of the next row's sequence"),
    "eval_steps": (_is_none, "ctrkit validates once per epoch (--checkpoint_every N saves last every N steps)"),
    "group_id": (_is_none, "the dataset spec's group column (ctrkit preprocess table --spec)"),
    "use_features": (_is_none, "the dataset spec's features (ctrkit preprocess table --spec)"),
    "feature_specs": (_is_none, "the dataset spec's features (ctrkit preprocess table --spec)"),
    "feature_config": (_is_none, "the dataset spec's features (ctrkit preprocess table --spec)"),
    "feature_cols": (_is_none, "the dataset spec's features (ctrkit preprocess table --spec)"),
    "label_col": (_is_none, "the dataset spec's label (ctrkit preprocess table --spec)"),
}

#: FuxiCTR keys that do not change the model or its training: ignored, with a note.
IGNORED: dict[str, str] = {
    "verbose": "ctrkit shows a progress bar on a terminal and one line per epoch",
    "pickle_feature_encoder": "the store holds the encoder; runs copy it as encoder.npz",
    "save_best_only": "ctrkit writes best and last checkpoints",
    "debug_mode": "no debug mode",
    "dataset_id": "the rows come from --data STORE (a store built by `ctrkit preprocess`)",
    "model_id": "the run is named by --model_save_dir",
    "expid": "the run is named by --model_save_dir",
}

#: FuxiCTR keys with no ctrkit equivalent -> ctrkit's nearest option (the refusal names it).
REFUSED: dict[str, str] = {
    "data_root": "--data STORE (a store built by `ctrkit preprocess`)",
    "data_format": "--data STORE (a store built by `ctrkit preprocess`)",
    "train_data": "ctrkit preprocess ... --out STORE, then --data STORE",
    "valid_data": "ctrkit preprocess ... --valid FILE",
    "test_data": "ctrkit preprocess ... --test FILE",
    "min_categr_count": "ctrkit preprocess ... --min-count N",
    "din_target_field": "the store's sequence fields and the field they share a vocabulary with (spec `shares`)",
    "din_sequence_field": "the store's sequence fields (the dataset spec's sequences)",
    "dien_target_field": "the store's sequence fields and the field they share a vocabulary with (spec `shares`)",
    "dien_sequence_field": "the store's sequence fields (the dataset spec's sequences)",
    "din_use_softmax": "--model_args attention_activation (DIN's attention weights are not normalised)",
    "use_attention_softmax": "--model_args attention_activation (DIEN's attention scores)",
    "attention_type": "--model_args attention_units (DIEN's attention is an MLP)",
    "aux_activation": "--model_args aux_hidden_units (the auxiliary net's sizes)",
    "reduce_lr_on_plateau": "--lr_patience N and --lr_factor F",
    "enable_sum_pooling": "--model_args behaviour_sum=true|false (DIEN's MLP also sees the behaviour sum and "
                          "its product with the candidate, the authors' input; on by default)",
    "embedding_initializer": "--init (Linear layers; embedding rows are N(0, 1e-4^2))",
}

#: kinds of key (:func:`_translate_one`)
READ, SAME, UNKNOWN = "read", "same", "unknown"
#: the FuxiCTR section every experiment of a model_config.yaml inherits
BASE_SECTION = "Base"
_LOSSES = {"binary_crossentropy": "BCE", "bce": "BCE", "bceloss": "BCE", "binary_cross_entropy": "BCE"}


def flatten_layout(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], str | None]:
    """A FuxiCTR ``model_config.yaml`` (``Base`` plus one experiment section) as one mapping.

    Returns ``(options, experiment id)``; a mapping that is not in that layout comes back unchanged
    with ``None``. Several experiments are refused, naming them (ctrkit runs one).
    """
    sections = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if not data or len(sections) != len(data):
        return dict(data), None
    experiments = {k: v for k, v in sections.items() if k != BASE_SECTION}
    if BASE_SECTION not in sections and not any("model" in v for v in experiments.values()):
        return dict(data), None
    if len(experiments) != 1:
        names = ", ".join(experiments) or "none"
        raise ConfigError(f"{source}: a FuxiCTR model_config.yaml with {len(experiments)} experiments ({names}); "
                          "ctrkit runs one: keep its section (and Base) in the file")
    (name, options), = experiments.items()
    return {**dict(sections.get(BASE_SECTION, {})), **dict(options)}, str(name)


def looks_like_fuxictr(options: Mapping[str, Any], experiment: str | None = None) -> bool:
    """Options written for FuxiCTR: its file layout, or a key only FuxiCTR has (``embedding_dim`` ...)."""
    return experiment is not None or any(key in RENAMED or key in REFUSED or key in IGNORED for key in options)


def _l2(key: str, value: Any) -> Any:
    """A FuxiCTR regulariser: a number, or ``"l2(1.e-5)"``; ``l1`` has no ctrkit equivalent."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace(" ", "")
    match = re.fullmatch(r"l2\((.+)\)", text)
    if match:
        return match.group(1)
    if text.startswith(("l1(", "l1_l2(")):
        raise ConfigError(f"{key}: {value!r} (FuxiCTR's L1) has no ctrkit equivalent; ctrkit: an L2, "
                          "--embedding_l2 and --weight_decay")
    return value


def _gpu_ids(value: Any) -> Any:
    """FuxiCTR's ``gpu: -1`` is the CPU, ``gpu: N`` one GPU."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return value
    return [] if number < 0 else [number]


def _monitor(value: Any) -> Any:
    """FuxiCTR's ``monitor``: a metric name, or ``{metric: weight}`` (one metric maps, a weighted sum not)."""
    if not isinstance(value, Mapping):
        return value
    if len(value) == 1:
        return str(next(iter(value)))
    raise ConfigError(f"monitor {dict(value)!r} (FuxiCTR's weighted sum of metrics) has no ctrkit "
                      "equivalent; ctrkit: --monitor auc, gauc or logloss (one metric)")


class _Options:
    """The translated options, remembering which key set each one (to name both keys of a conflict)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.model_args: dict[str, Any] = {}
        self.model_args_origin: dict[str, str] = {}

    def set(self, name: str, value: Any, origin: str) -> None:
        self._put(self.values, self.origin, name, value, origin)

    def set_model_arg(self, name: str, value: Any, origin: str) -> None:
        self._put(self.model_args, self.model_args_origin, name, value, origin)

    def _put(self, values: dict, origins: dict, name: str, value: Any, origin: str) -> None:
        if name in values and not _same(values[name], value):
            raise ConfigError(f"{origins[name]}: {values[name]!r} and {origin}: {value!r} set the "
                              f"same option ({name}); keep one")
        values.setdefault(name, value)
        origins.setdefault(name, origin)


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip().lower() == str(b).strip().lower()


#: FuxiCTR keys ``ctrkit train`` also takes as (hidden) flags, ``--embedding_dim 16``: the renamed
#: ones, but ``gpu`` (``--gpu`` already abbreviates ``--gpu_ids``, with its own syntax)
FLAG_ALIASES = tuple(sorted(set(RENAMED) - {"gpu"} | {"regularizer"}))


def translate(options: Mapping[str, Any], *, source: str, known: set[str], model: str | None = None,
              experiment: str | None = None, fuxictr: bool | None = None) -> tuple[dict[str, Any], list[str]]:
    """``options`` with FuxiCTR's keys read as ctrkit's: ``(ctrkit options, notes)``.

    Args:
        options: option name -> value (dashes already turned into underscores).
        source: what the options came from, for messages (``--config run.yaml``, ``ctrkit.train``).
        known: ctrkit's option names (the :class:`~ctrkit.config.TrainConfig` fields).
        model: the model given elsewhere (a flag), when ``options`` has none.
        experiment: the FuxiCTR experiment id (its section name), for ``model_root``.
        fuxictr: read the keys both projects have the FuxiCTR way (default: when the options
            look like FuxiCTR's, :func:`looks_like_fuxictr`); the command line passes False.

    Raises:
        ConfigError: a FuxiCTR key with no ctrkit equivalent (naming ctrkit's nearest option), a
            FuxiCTR value ctrkit cannot honour, two keys setting one option differently, or a key
            neither knows (with the closest ctrkit option).
    """
    fuxictr = looks_like_fuxictr(options, experiment) if fuxictr is None else fuxictr
    try:
        result, read, same = _translate(options, known, str(options.get("model") or model or "").strip().lower(),
                                        fuxictr, experiment)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    notes = []
    if read:
        notes.append(f"{source}: FuxiCTR's names read as ctrkit's: {', '.join(read)}")
    if same:
        notes.append(f"{source}: FuxiCTR's {', '.join(same)}: nothing to set in ctrkit (their values are "
                     "what it does, or they do not change a run)")
    return result, notes


def _translate(options: Mapping[str, Any], known: set[str], model: str, fuxictr: bool,
               experiment: str | None) -> tuple[dict[str, Any], list[str], list[str]]:
    """:func:`translate` without the source: ``(ctrkit options, renamed keys, keys needing nothing)``."""
    out = _Options()

    def ctrkits(key: str) -> bool:
        return key in known and not (fuxictr and key in _READ_THE_FUXICTR_WAY)

    for key, value in options.items():  # ctrkit's own names first: a FuxiCTR alias then conflicts with them
        if ctrkits(key) and key == "model_args" and isinstance(value, Mapping):
            for name, arg in value.items():
                out.set_model_arg(str(name), arg, f"model_args.{name}")
        elif ctrkits(key):
            out.set(key, value, key)
    found: dict[str, list[str]] = {READ: [], SAME: [], UNKNOWN: []}
    for key, value in options.items():
        if not ctrkits(key):
            kind, text = _translate_one(key, value, out, options, model, fuxictr, experiment)
            found[kind] += [text] if text else []
    if found[UNKNOWN]:
        raise ConfigError(f"unknown option(s) {', '.join(_with_hint(k, known) for k in found[UNKNOWN])}")
    _fix_model(out, options, model, found[READ])
    result = dict(out.values)
    if out.model_args:
        result["model_args"] = out.model_args
    if "loss" in result:
        result["loss"] = _LOSSES.get(str(result["loss"]).strip().lower(), result["loss"])
    if "monitor" in result:
        result["monitor"] = _monitor(result["monitor"])
    return result, found[READ], found[SAME]


#: keys both projects have, whose FuxiCTR meaning differs: read the FuxiCTR way in FuxiCTR options
_READ_THE_FUXICTR_WAY = ("attention_dim",)


def _translate_one(key: str, value: Any, out: _Options, options: Mapping[str, Any], model: str,
                   fuxictr: bool, experiment: str | None) -> tuple[str, str]:
    """Put one FuxiCTR key into ``out``: ``(READ, "key → ctrkit option")``, ``(SAME, key)`` for a key
    that needs nothing in ctrkit, ``(UNKNOWN, key)`` for a key neither project has."""
    if key in RENAMED:
        target = RENAMED[key]
        if target in ("embedding_l2", "weight_decay"):
            value = _l2(key, value)
        elif target == "gpu_ids":
            value = _gpu_ids(value)
        elif target == "model_save_dir":
            value = f"{str(value).rstrip('/')}/{experiment or model or 'run'}"
        out.set(target, value, key)
        return READ, f"{key} → {target}" + (f" {value}" if target == "model_save_dir" else "")
    if key == "regularizer":  # LR, FM, FFM: one rate for the embeddings and the weights
        value = _l2(key, value)
        out.set("embedding_l2", value, key)
        out.set("weight_decay", value, key)
        return READ, f"{key} → embedding_l2 and weight_decay"
    if key in ("stacked_dnn_hidden_units", "parallel_dnn_hidden_units"):
        structure = str(options.get("model_structure", "parallel")).strip().lower()
        if key.startswith(structure):
            out.set("hidden_units", value, key)
            return READ, f"{key} → hidden_units"
        return SAME, f"{key} (model_structure is {structure})"
    if key == "attention_dim":
        return _attention_dim(value, out, options, model, fuxictr)
    if key in MODEL_KEYWORDS:
        out.set_model_arg(MODEL_KEYWORDS[key], value, key)
        return READ, f"{key} → --model_args {MODEL_KEYWORDS[key]}={value}"
    if key == "monitor_mode":
        return _monitor_mode(value, options)
    if key in FIXED:
        accepts, ctrkit = FIXED[key]
        if accepts(value):
            return SAME, key
        if key in REFUSED:
            raise ConfigError(f"unknown option {key!r} (FuxiCTR's) with {value!r}; ctrkit: {REFUSED[key]}")
        raise ConfigError(f"{key}: {value!r} (FuxiCTR's) has no ctrkit equivalent; ctrkit: {ctrkit}")
    if key in IGNORED:
        return SAME, key
    if key in REFUSED:
        raise ConfigError(f"unknown option {key!r} (FuxiCTR's); ctrkit: {REFUSED[key]}")
    return UNKNOWN, key


def _attention_dim(value: Any, out: _Options, options: Mapping[str, Any], model: str,
                   fuxictr: bool) -> tuple[str, str]:
    """FuxiCTR's ``attention_dim``: AFM's attention size (``attention_factor``); AutoInt's width of all
    heads together (ctrkit's is per head)."""
    if fuxictr and model == "afm":
        out.set("attention_factor", value, "attention_dim")
        return READ, "attention_dim → attention_factor"
    if fuxictr and model.startswith("autoint"):
        heads = options.get("num_heads", 1)  # FuxiCTR's AutoInt default: one head
        try:
            total, heads = int(value), int(heads)
        except (TypeError, ValueError):
            raise ConfigError(f"attention_dim {value!r} and num_heads {heads!r} must be integers") from None
        if heads <= 0 or total % heads:
            raise ConfigError(f"attention_dim {total} (FuxiCTR's: all heads together) is not divisible by "
                              f"num_heads {heads}; ctrkit: --attention_dim per head")
        out.set("attention_dim", total // heads, "attention_dim")
        out.set("num_heads", heads, "num_heads")
        return READ, f"attention_dim {total} ({heads} head(s) together) → attention_dim {total // heads} per head"
    out.set("attention_dim", value, "attention_dim")
    return READ, ""


def _monitor_mode(value: Any, options: Mapping[str, Any]) -> tuple[str, str]:
    """FuxiCTR's ``monitor_mode`` must agree with the monitored metric (ctrkit derives it)."""
    from ctrkit.training.policy import MONITORS

    monitor = options.get("monitor", "auc")
    metric = str(next(iter(monitor)) if isinstance(monitor, Mapping) and len(monitor) == 1 else monitor).lower()
    mode = str(value).strip().lower()
    if metric in MONITORS and mode != MONITORS[metric]:
        raise ConfigError(f"monitor_mode {value!r} contradicts monitor {monitor!r} (FuxiCTR's); ctrkit: --monitor "
                          f"decides it ({metric}: {MONITORS[metric]})")
    return SAME, "monitor_mode"


def _fix_model(out: _Options, options: Mapping[str, Any], model: str, notes: list[str]) -> None:
    """FuxiCTR's AutoInt with ``dnn_hidden_units`` is AutoInt+ (ctrkit names it)."""
    units = options.get("dnn_hidden_units")
    if model == "autoint" and units not in (None, [], "", "[]") and "model" in out.values:
        out.values["model"] = "autoint+"
        notes.append("model AutoInt with dnn_hidden_units → autoint+")


def _with_hint(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"{key} (did you mean {close[0]}?)" if close else key
