"""Shared by the DIN/DIEN runners of DeepCTR-Torch (``run_deepctr_torch_seq.py``) and DeepCTR
(``run_deepctr_tf_seq.py``), whose feature-column APIs and DIN/DIEN signatures are the same; started
by ``bench_sequence_speed.py``. Needs numpy and the standard library only.

How the Taobao store of ``bench_sequence_speed.py`` becomes DeepCTR's inputs:

* every sparse field ``f`` -> ``SparseFeat(f, vocab, 16)``; the price -> ``DenseFeat("price", 1)``
  (DeepCTR feeds it to the DNN as a number, ours embeds it as one more field vector);
* every sequence field (``hist_btag``, ``hist_cate``, ``hist_brand``, sharing the vocabularies of
  ``btag``, ``cate_id``, ``brand``) -> ``VarLenSparseFeat(SparseFeat("hist_" + shared, ...,
  embedding_name=shared), 50, length_name="seq_length")``, with ``history_feature_list`` = the
  shared fields in the store's order: the candidate is the concatenation of their embeddings and a
  behaviour the concatenation of the three items at one step, as ours (``behaviours()``), ``E = 48``;
* DeepCTR masks a history by its length (the first ``seq_length`` steps), the store left-pads with
  id 0: the runners get the sequences right-aligned -- the same items in the same order (oldest
  first), moved to the front -- and ``seq_length`` = the number of non-padding steps;
* DIEN's negatives (``neg_hist_<shared>``, same embeddings) are those of our ``AuxiliaryLoss``: the
  behaviour at the same step of the next row of the same batch (``(b + 1) mod B``; batches of
  ``batch_size`` consecutive rows of the dumped order, which every contender trains on unshuffled),
  taken at the step of row ``b``'s own history and right-aligned with row ``b``'s shift. Where the
  next row has padding at that step, ours drops the negative term and DeepCTR scores the padding id's
  embedding (the synthetic histories are full 50-step ones nearly always).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

LENGTH = "seq_length"


def right_align(seq: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``out[b, j] = seq[b, j + shift[b]]`` for ``j < L - shift[b]``, else 0: ``[N, L]``."""
    n, length = seq.shape
    steps = np.arange(length)[None, :] + shift[:, None]  # (N, L)
    out = np.take_along_axis(seq, np.minimum(steps, length - 1), axis=1)
    out[steps >= length] = 0
    return out


def next_row_in_batch(seq: np.ndarray, batch_size: int) -> np.ndarray:
    """``out[b] = seq[(b + 1) mod B]`` within each batch of ``batch_size`` consecutive rows
    (the last one possibly shorter), i.e. ``torch.roll(seq, -1, dims=0)`` per batch."""
    index = np.arange(len(seq))
    start = index // batch_size * batch_size
    size = np.minimum(batch_size, len(seq) - start)
    return seq[start + (index - start + 1) % size]


def load(spec: dict[str, Any], negatives: bool) -> dict[str, Any]:
    """The dumped train (first ``train_rows``) and test rows as DeepCTR input dicts.

    Returns ``{"meta", "train_x", "train_y", "test_x", "test_y", "history"}``; ``history`` is the
    list of shared fields (DeepCTR's ``history_feature_list``).
    """
    data = Path(spec["data_dir"])
    meta = json.loads((data / "meta.json").read_text())
    n = int(spec["train_rows"])
    out: dict[str, Any] = {"meta": meta, "history": [s["shares"] for s in meta["sequences"]]}
    for split, limit in (("train", n), ("test", None)):
        sparse = np.load(data / f"{split}_sparse.npy")[:limit]
        dense = np.load(data / f"{split}_dense.npy")[:limit].astype(np.float32)
        seqs = [np.load(data / f"{split}_seq_{s['name']}.npy")[:limit] for s in meta["sequences"]]
        mask = np.any([s > 0 for s in seqs], axis=0)  # (N, L): a step is a behaviour when any item is
        length = mask.sum(axis=1)
        shift = seqs[0].shape[1] - length  # left padding of each row
        x: dict[str, np.ndarray] = {name: sparse[:, j] for j, name in enumerate(meta["field_names"])}
        x.update({name: dense[:, j] for j, name in enumerate(meta["dense_names"])})
        for s, seq in zip(meta["sequences"], seqs):
            x["hist_" + s["shares"]] = right_align(seq, shift)
            if negatives:
                x["neg_hist_" + s["shares"]] = right_align(next_row_in_batch(seq, spec["batch_size"]), shift)
        x[LENGTH] = length.astype(np.int32)
        out[f"{split}_x"] = x
        out[f"{split}_y"] = np.load(data / f"{split}_label.npy")[:limit].astype(np.float32)
    return out


def feature_columns(rows: dict[str, Any], embed_size: int, negatives: bool, classes: dict[str, Any]) -> list[Any]:
    """DeepCTR's feature columns of the store (see the module docstring); ``classes`` maps
    ``SparseFeat``, ``DenseFeat`` and ``VarLenSparseFeat`` to the library's."""
    sparse_feat, dense_feat, varlen = classes["SparseFeat"], classes["DenseFeat"], classes["VarLenSparseFeat"]
    meta = rows["meta"]
    vocab = dict(zip(meta["field_names"], meta["vocab_sizes"]))
    columns = [sparse_feat(name, vocabulary_size=vocab[name], embedding_dim=embed_size) for name in meta["field_names"]]
    columns += [dense_feat(name, 1) for name in meta["dense_names"]]
    prefixes = ("hist_", "neg_hist_") if negatives else ("hist_",)
    for prefix in prefixes:
        for s in meta["sequences"]:
            shared = s["shares"]
            columns.append(varlen(sparse_feat(prefix + shared, vocabulary_size=vocab[shared], embedding_dim=embed_size,
                                              embedding_name=shared), maxlen=s["max_len"], length_name=LENGTH))
    return columns


def model_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of DeepCTR's ``DIN``/``DIEN`` for the spec's recipe (both libraries).

    DIN: Dice in the activation unit, unnormalised weights (``att_weight_normalization=False``),
    as ours. DIEN: ``gru_type="AUGRU"``, ``use_negsampling=True`` (the auxiliary loss, DeepCTR's
    net is (100, 50) sigmoid like ours), ``alpha`` = our ``aux_loss_weight``, a softmax attention
    (``att_weight_normalization=True``) with a sigmoid unit; DeepCTR's GRU width is the behaviour
    width, as ours (``gru_units=0``). Both: DNN (200, 80) ReLU, no BatchNorm, no dropout, no L2.
    """
    hp = spec["hparams"]
    common = dict(dnn_hidden_units=tuple(hp["hidden_units"]), dnn_activation="relu", l2_reg_dnn=0.0,
                  l2_reg_embedding=0.0, dnn_dropout=0.0, seed=spec["seed"], task="binary")
    units = tuple(hp["attention_units"])
    if spec["model"] == "din":
        return dict(dnn_use_bn=False, att_hidden_size=units, att_activation=hp["attention_activation"],
                    att_weight_normalization=False, **common)
    if spec["model"] == "dien":
        return dict(gru_type="AUGRU", use_negsampling=hp["aux_loss_weight"] > 0, alpha=hp["aux_loss_weight"],
                    use_bn=False, att_hidden_units=units, att_activation=hp["attention_activation"],
                    att_weight_normalization=True, **common)
    raise SystemExit(f"unknown model {spec['model']!r} (din, dien)")


def build(spec: dict[str, Any], classes: dict[str, Any], **library_kwargs: Any) -> tuple[dict[str, Any], Any]:
    """The rows (:func:`load`) and the library's DIN or DIEN for the spec; ``classes`` maps
    ``SparseFeat``, ``DenseFeat``, ``VarLenSparseFeat``, ``DIN`` and ``DIEN`` to the library's;
    ``library_kwargs`` go to the model (e.g. DeepCTR-Torch's ``device``)."""
    negatives = spec["model"] == "dien" and spec["hparams"]["aux_loss_weight"] > 0
    rows = load(spec, negatives)
    columns = feature_columns(rows, spec["hparams"]["embed_size"], negatives, classes)
    model = classes[spec["model"].upper()](columns, rows["history"], **model_kwargs(spec), **library_kwargs)
    return rows, model
