"""Synthetic click logs drawn from a hidden, known click model.

The files look like real public CTR data sets, so the whole pipeline (preprocess, store, train,
evaluate, predict) can be exercised and benchmarked without the real data, and because the true
click probability of every row is known, a benchmark can say how close a model gets to the best
possible AUC (the *oracle* AUC).

Only the Criteo Kaggle format exists so far (:func:`write_synthetic_criteo`); the helpers at the
top of this module (counter-seeded row chunks, Zipf sampling, 32-bit value hashes, rank AUC,
the checks of the output paths) are format-independent, so that other formats (e.g. Taobao) can be added beside it.

Criteo format
-------------
One row per line, tab-separated, no header, no quoting, 40 fields::

    label  I1 .. I13  C1 .. C26

``label`` is 0/1; ``I*`` are integer counts (may be empty = missing; ``I2`` may be -1 or -2);
``C*`` are 8-digit lower-case hex strings (may be empty). ``unlabeled=True`` drops the label
column (39 fields, the Kaggle *test* layout); the rows are otherwise identical. The true click
probability of every row is written in row order as float32 to ``OUT + ".probs.npy"``.

Planted click model (all parameters are a function of ``seed`` only)
--------------------------------------------------------------------
*Rows.* Fields are drawn independently of each other, except as noted.

* Categorical field ``Cj`` draws a popularity rank ``r`` from a truncated power law
  ``P(r) ∝ ∫_r^{r+1} (x + q_j)^(-a_j) dx`` on ``0 .. V_j - 1``. ``V_j`` goes from 3 (C9) to
  2,000,000 (C3, C4, C12, C16, C21); ``a_j, q_j`` were fitted to the head of the real Kaggle
  file (share of the top value, distinct values and share of rows whose value is seen < 10 times
  in 10k rows). Because the vocabulary is fixed and the law heavy-tailed, the number of distinct
  values grows with the number of rows like in the real data: in 10k rows C3 has ~5.8k distinct
  values, ~70 % of rows with a value seen < 10 times; in 4M rows ~670k distinct, ~29k of them
  seen >= 10 times, 29 % of rows with a value seen < 10 times. The string of (field j, rank r)
  is a keyed bijective 32-bit mix of ``j << 27 | r``, so no two (field, value) pairs ever share
  a string.
* Integer field ``Ij`` is 0 with probability ``p0_j`` (fitted), else
  ``ceil(exp(mu_j + sigma_j * z))`` (clipped at 1e8) with ``z = 0.5 z_row + 0.866 eps_j``: a row
  latent makes the counts positively correlated. ``I2`` is -1 in ~9.4 % and -2 in ~0.06 % of rows.
* Missing values come in groups that share one uniform draw per row (nested thresholds), like
  in the real data: {I1, I10} 44.8 %; {I4, I13 19.8 %, I3 20.4 %, I6 25.1 %};
  {I5, I7, I9, I11} 4.9 %; I8 0.1 %; I12 77.3 %; {C3, C4, C12, C16, C21, C24} 3.6 %;
  {C19, C20, C25, C26} 45 %; C6 13.3 %; C22 81.8 %.

*Click model.* Every field is turned into a *token*: categorical fields into "missing", one of
the ``HEAD_RANKS`` = 65,536 most popular ranks, or "tail" (all rarer ranks share one token, i.e.
carry no signal of their own); integer fields into "missing" or their BARS bucket
``floor(ln(v)^2)`` for ``v > 2`` else ``v``. Then::

    logit = bias + sum_f  w_f(t_f)                                  (first order)
                 + sum_{(f,g)} < U_fg(t_f), U_gf(t_g) >              (low-rank pairs)
                 + sum_{(f,g,h)} sum_k A(t_f)_k B(t_g)_k C(t_h)_k     (3-way terms)
    p = sigmoid(logit),  label ~ Bernoulli(p)

* First order (:data:`CRITEO_FIRST_ORDER`): 18 categorical fields with Gaussian per-value
  effects, and 7 integer fields, either monotone in ``ln v`` or "bucket-only" (a random walk
  over the bucket index: non-monotone, so only a per-bucket one-hot model can use it). The
  other 14 fields (C6 C9 C14 C17 C20 C22 C23 C25, I2 I7 I8 I9 I10 I12) carry no first-order
  signal.
* Pairs (:data:`CRITEO_PAIRS`, rank 2-4 Gaussian factor vectors): C6×C14, C17×C23, C9×C25 and
  I7×C20 join fields without first-order signal (invisible to LR); I2×C8, I9×C4, C1×C5, C2×C13,
  C3×C11, C7×C10, C15×C18, C24×C26 add interactions on fields that also act alone.
* 3-way (:data:`CRITEO_TRIPLES`, rank 2): C9×C17×C20, I8×C14×C22, C2×C5×C23.
* Every factor table is centred under the field's marginal distribution (estimated on a fixed
  calibration sample of 131,072 rows), and pair/triple fields are independent, so each pair is a
  *pure* interaction with no main effect (no additive model can capture any of it) and each
  triple is a pure 3-way interaction (not even a pairwise model can capture it).
* Each term is scaled to a fixed standard deviation on the calibration sample, and the
  first-order sum as a whole (the integer fields are correlated), so that for every seed first
  order is ≈ 52 %, pairs ≈ 39 % and triples ≈ 9 % of the logit variance (logit sd ≈ 1.4); the
  bias is solved so that the mean click probability is 0.25.
* Resulting AUCs (seed 0): oracle ≈ 0.80 (0.80-0.81 over seeds); the true first-order part
  alone ≈ 0.72 (the ceiling of any additive model such as LR; 0.71 when values seen < 10 times
  in 800k training rows are OOV); first order + pairs ≈ 0.79 (the ceiling of a pairwise model
  such as FM). Measured with sklearn: one-hot LR on BARS tokens 0.65 / 0.70 (16k / 800k
  training rows); the same LR plus one-hot crosses of the planted pairs 0.69 / 0.75.

*Determinism.* Row ``i`` is drawn from the random stream of chunk ``i // 65536`` (seeded by
``(seed, chunk)``) and the model from streams seeded by ``seed`` alone, so the output bytes depend
only on ``(rows, seed)`` — not on ``block_rows`` — and a file of ``n`` rows is exactly the first
``n`` rows of any longer file with the same seed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ctrkit.errors import ConfigError, InputError
from ctrkit.fileio import atomic_output, check_output_path, is_stream

# ---------------------------------------------------------------------------------------------
# Format-independent helpers
# ---------------------------------------------------------------------------------------------

#: Rows per random-number chunk. Row ``i`` always comes from chunk ``i // CHUNK_ROWS``.
CHUNK_ROWS = 65_536

#: Stream keys for :func:`numpy.random.default_rng` seed sequences (arbitrary constants).
_STREAM_ROWS = 0x524F5753  # "ROWS"
_STREAM_CALIBRATION = 0x43414C49  # "CALI"
_STREAM_MODEL = 0x4D4F444C  # "MODL"
_STREAM_HASH = 0x48415348  # "HASH"

_MAX_SEED = 2**63
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_criteo` wrote.

    ``ctr`` and ``oracle_auc`` describe the labels drawn for the rows (also when the file is
    ``unlabeled`` and the labels are not written); ``oracle_auc`` is the AUC of the true click
    probabilities (as saved, float32) against those labels.
    """

    path: str
    probs_path: str | None  # None: not written (OUT was a stream and no other path was given)
    rows: int
    ctr: float
    oracle_auc: float
    seed: int = 0
    unlabeled: bool = False


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U), ties counted as one half. NaN if one class is empty."""
    labels = np.asarray(labels).astype(bool, copy=False).ravel()
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    n = labels.size
    n_pos = int(np.count_nonzero(labels))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    counts = np.diff(np.append(starts, n))
    mean_rank = starts + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.repeat(mean_rank, counts)
    rank_sum = float(ranks[labels[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _chunk_rng(seed: int, stream: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, chunk])


def _zipf_ranks(u: np.ndarray, vocab: int, exponent: float, offset: float) -> np.ndarray:
    """Map uniforms in [0, 1) to ranks 0..vocab-1 of a truncated continuous power law.

    The density is ``(x + offset) ** -exponent`` on ``[0, vocab)``; rank = floor(x), so
    ``P(rank = r) = ∫_r^{r+1}`` of the normalised density.
    """
    s = 1.0 - exponent
    if abs(s) < 1e-12:
        total = math.log1p(vocab / offset)
        x = offset * np.expm1(u * total)
    else:
        total = math.expm1(s * math.log1p(vocab / offset)) / s
        x = offset * np.expm1(np.log1p(s * total * u) / s)
    ranks = np.floor(x).astype(np.int64)
    np.clip(ranks, 0, vocab - 1, out=ranks)
    return ranks


def _zipf_probs(vocab: int, exponent: float, offset: float) -> np.ndarray:
    """Probabilities of ranks ``0 .. vocab-1`` under :func:`_zipf_ranks` (for tests / docs)."""
    x = np.arange(vocab + 1, dtype=np.float64)
    s = 1.0 - exponent
    cdf = np.log1p(x / offset) if abs(s) < 1e-12 else np.expm1(s * np.log1p(x / offset)) / s
    return np.diff(cdf) / cdf[-1]


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of uint32 (xor-shift / odd-multiply avalanche)."""
    x = x.astype(np.uint32, copy=True)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _value_hashes(field_index: int, ranks: np.ndarray, keys: tuple[int, int]) -> np.ndarray:
    """Distinct uint32 hash for every (field_index < 32, rank < 2**27) pair, keyed by the seed."""
    code = (np.uint32(field_index) << np.uint32(27)) | ranks.astype(np.uint32)
    return _mix32(_mix32(code ^ np.uint32(keys[0])) ^ np.uint32(keys[1]))


def _hex8(values: np.ndarray) -> np.ndarray:
    """uint32 array -> numpy ``S8`` array of 8 lower-case hex digits."""
    digits = _HEX_DIGITS[(values.astype(np.uint32)[:, None] >> _HEX_SHIFTS) & np.uint32(0xF)]
    return np.ascontiguousarray(digits).view("S8").ravel()


def _bars_bucket_exact(v: np.ndarray) -> np.ndarray:
    safe = np.maximum(v, 3).astype(np.float64)
    return np.where(v > 2, np.floor(np.log(safe) ** 2).astype(np.int64), v)


_BUCKET_LOOKUP_MAX = 4096
_BUCKET_LOOKUP = _bars_bucket_exact(np.arange(_BUCKET_LOOKUP_MAX, dtype=np.int64))


def _bars_bucket(values: np.ndarray) -> np.ndarray:
    """BARS integer token: ``floor(ln(v)^2)`` for ``v > 2``, else ``v`` itself."""
    v = values.astype(np.int64, copy=False)
    small = (v >= 0) & (v < _BUCKET_LOOKUP_MAX)
    if small.all():
        return _BUCKET_LOOKUP[v]
    out = _bars_bucket_exact(v)
    out[small] = _BUCKET_LOOKUP[v[small]]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _solve_bias(logits: np.ndarray, target_mean: float) -> float:
    """Bias b with mean(sigmoid(logits + b)) == target_mean (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if float(_sigmoid(logits + mid).mean()) < target_mean:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_arguments(out: str | os.PathLike, rows: int, seed: int, block_rows: int) -> str:
    """Validate the common arguments of the writers; return the output path as a string."""
    for name, value in (("rows", rows), ("seed", seed), ("block_rows", block_rows)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if rows < 1:
        raise ConfigError(f"rows must be at least 1, got {rows}")
    if not 0 <= seed < _MAX_SEED:
        raise ConfigError(f"seed must be in 0 .. 2**63 - 1, got {seed}")
    if block_rows < 1:
        raise ConfigError(f"block_rows must be at least 1, got {block_rows}")
    try:
        path = os.fspath(out)
    except TypeError:
        raise ConfigError(f"output path must be a string or path, got {out!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise InputError("output path is empty")
    if os.path.isdir(path):
        raise InputError(f"output path {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise InputError(f"cannot write {path!r}: directory {parent!r} does not exist")
    if not os.path.isdir(parent):
        raise InputError(f"cannot write {path!r}: {parent!r} is not a directory")
    return path


def _probabilities_path(path: str, probs_out: str | os.PathLike | None) -> str | None:
    """Where the true probabilities go: ``probs_out``, else ``OUT.probs.npy`` beside a regular OUT.

    OUT being stdout, a device or a FIFO, nothing is written unless ``probs_out`` is given: a
    sibling of ``/dev/null`` would be a new file in ``/dev``.
    """
    if probs_out is None:
        if is_stream(path):
            return None
        probs = path + ".probs.npy"
    else:
        probs = os.fsdecode(os.fspath(probs_out))
    if os.path.isdir(probs):
        raise InputError(f"cannot write probabilities: {probs!r} is a directory")
    parent = os.path.dirname(os.path.abspath(probs))
    if not os.path.isdir(parent):
        raise InputError(f"cannot write probabilities {probs!r}: directory {parent!r} does not exist")
    if os.path.abspath(probs) == os.path.abspath(path):
        raise ConfigError(f"the probabilities and the rows would both go to {path!r}; give another path")
    check_output_path(probs, flag="probabilities")  # e.g. a directory we may not write in
    return probs


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _with_errno(exc: OSError) -> OSError:
    """polars reports a failed write as ``OSError('No space left on device (os error 28)')`` with
    no ``errno``; give it one, so that the message is the same as for any other full disk."""
    match = _RUST_OS_ERROR.search(str(exc))
    if exc.errno is not None or match is None:
        return exc
    code = int(match.group(1))
    return OSError(code, os.strerror(code))


def _kept(*paths: str) -> str:
    """What a failed write leaves, for the message: the previous files, untouched."""
    regular = [p for p in paths if not is_stream(p)]
    previous = [p for p in regular if os.path.exists(p)]
    if previous:
        return f"the previous {' and '.join(previous)} {'is' if len(previous) == 1 else 'are'} unchanged"
    return f"nothing was written at {' or '.join(regular)}" if regular else "nothing else was touched"


# ---------------------------------------------------------------------------------------------
# Criteo
# ---------------------------------------------------------------------------------------------

CRITEO_INT_FIELDS: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT_FIELDS: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))

#: Categorical tokens that get their own parameters; rarer ranks share the "tail" token.
HEAD_RANKS = 65_536
#: Integer bucket tokens: index 0 = missing, bucket b (-2 .. _INT_MAX_BUCKET) -> b + 3.
_INT_MAX_VALUE = 100_000_000
_INT_MAX_BUCKET = int(math.floor(math.log(_INT_MAX_VALUE) ** 2))
_INT_TOKENS = _INT_MAX_BUCKET + 4


@dataclass(frozen=True)
class _CriteoCat:
    vocab: int
    exponent: float
    offset: float


@dataclass(frozen=True)
class _CriteoInt:
    p_zero: float
    mu: float
    sigma: float


#: Power-law vocabularies (V, a, q) for C1..C26, fitted to the real Kaggle head (see docstring).
CRITEO_CATS: dict[str, _CriteoCat] = {
    "C1": _CriteoCat(1_460, 1.95, 0.89),
    "C2": _CriteoCat(583, 1.85, 5.62),
    "C3": _CriteoCat(2_000_000, 1.00, 1.0),
    "C4": _CriteoCat(2_000_000, 1.10, 1.33),
    "C5": _CriteoCat(305, 2.70, 1.12),
    "C6": _CriteoCat(24, 4.00, 3.55),
    "C7": _CriteoCat(12_517, 1.10, 23.7),
    "C8": _CriteoCat(633, 2.30, 1.0),
    "C9": _CriteoCat(3, 3.85, 1.12),
    "C10": _CriteoCat(93_145, 1.00, 0.01),
    "C11": _CriteoCat(5_683, 1.20, 13.3),
    "C12": _CriteoCat(2_000_000, 1.00, 1.0),
    "C13": _CriteoCat(3_194, 1.20, 13.3),
    "C14": _CriteoCat(27, 4.00, 5.62),
    "C15": _CriteoCat(14_992, 1.40, 23.7),
    "C16": _CriteoCat(2_000_000, 1.05, 1.33),
    "C17": _CriteoCat(10, 0.70, 0.0112),
    "C18": _CriteoCat(5_652, 1.55, 10.0),
    "C19": _CriteoCat(2_173, 1.15, 0.01),
    "C20": _CriteoCat(4, 0.50, 5.0),
    "C21": _CriteoCat(2_000_000, 1.05, 1.78),
    "C22": _CriteoCat(18, 4.00, 3.98),
    "C23": _CriteoCat(15, 2.55, 2.24),
    "C24": _CriteoCat(286_181, 1.25, 3.16),
    "C25": _CriteoCat(105, 4.00, 5.62),
    "C26": _CriteoCat(142_572, 1.25, 3.16),
}

#: Integer counts: P(0), and ln-normal (mu, sigma) of the positive part, fitted to the real head.
CRITEO_INTS: dict[str, _CriteoInt] = {
    "I1": _CriteoInt(0.475, 1.10, 1.06),
    "I2": _CriteoInt(0.18, 2.64, 2.25),
    "I3": _CriteoInt(0.008, 1.95, 1.54),
    "I4": _CriteoInt(0.071, 1.61, 1.19),
    "I5": _CriteoInt(0.017, 7.95, 1.90),
    "I6": _CriteoInt(0.063, 3.87, 1.60),
    "I7": _CriteoInt(0.253, 1.61, 1.43),
    "I8": _CriteoInt(0.118, 2.30, 1.14),
    "I9": _CriteoInt(0.032, 3.81, 1.55),
    "I10": _CriteoInt(0.502, 0.00, 0.45),
    "I11": _CriteoInt(0.265, 0.69, 0.76),
    "I12": _CriteoInt(0.736, 0.00, 0.90),
    "I13": _CriteoInt(0.062, 1.79, 1.30),
}
_INT_ROW_CORRELATION = 0.5
_I2_MINUS_ONE = 0.0935
_I2_MINUS_TWO = 0.0006

#: Missing-value groups: one uniform per group and row; field missing when it is < its rate.
CRITEO_MISSING_GROUPS: tuple[dict[str, float], ...] = (
    {"I1": 0.448, "I10": 0.448},
    {"I4": 0.198, "I13": 0.198, "I3": 0.204, "I6": 0.251},
    {"I5": 0.049, "I7": 0.049, "I9": 0.049, "I11": 0.049},
    {"I8": 0.001},
    {"I12": 0.773},
    {f: 0.036 for f in ("C3", "C4", "C12", "C16", "C21", "C24")},
    {f: 0.45 for f in ("C19", "C20", "C25", "C26")},
    {"C6": 0.133},
    {"C22": 0.818},
)

#: First-order terms: field -> (sd on the logit before the global scale, shape).
#: Shapes: "value" (Gaussian per categorical value), "monotone" (tanh of ln v),
#: "bucket" (random walk over the bucket index: only a per-bucket model can use it).
CRITEO_FIRST_ORDER: dict[str, tuple[float, str]] = {
    "I1": (0.30, "monotone"),
    "I3": (0.35, "bucket"),
    "I4": (0.15, "monotone"),
    "I5": (0.25, "monotone"),
    "I6": (0.30, "bucket"),
    "I11": (0.25, "monotone"),
    "I13": (0.20, "bucket"),
    "C1": (0.35, "value"),
    "C2": (0.30, "value"),
    "C3": (0.20, "value"),
    "C4": (0.20, "value"),
    "C5": (0.30, "value"),
    "C7": (0.25, "value"),
    "C8": (0.25, "value"),
    "C10": (0.30, "value"),
    "C11": (0.30, "value"),
    "C12": (0.15, "value"),
    "C13": (0.25, "value"),
    "C15": (0.25, "value"),
    "C16": (0.15, "value"),
    "C18": (0.30, "value"),
    "C19": (0.20, "value"),
    "C21": (0.15, "value"),
    "C24": (0.25, "value"),
    "C26": (0.25, "value"),
}

#: Pure pairwise interactions: (field, field, rank, sd before the global scale).
CRITEO_PAIRS: tuple[tuple[str, str, int, float], ...] = (
    ("C6", "C14", 2, 0.45),  # neither field has a first-order effect
    ("C17", "C23", 2, 0.45),  # neither
    ("C9", "C25", 2, 0.35),  # neither
    ("I7", "C20", 2, 0.35),  # neither
    ("I2", "C8", 2, 0.30),
    ("I9", "C4", 2, 0.20),
    ("C1", "C5", 3, 0.30),
    ("C2", "C13", 4, 0.30),
    ("C3", "C11", 4, 0.30),
    ("C7", "C10", 4, 0.25),
    ("C15", "C18", 4, 0.25),
    ("C24", "C26", 4, 0.25),
)

#: Pure 3-way interactions: (field, field, field, rank, sd before the global scale).
CRITEO_TRIPLES: tuple[tuple[str, str, str, int, float], ...] = (
    ("C9", "C17", "C20", 2, 0.35),
    ("I8", "C14", "C22", 2, 0.30),
    ("C2", "C5", "C23", 2, 0.25),
)

#: Multiplies every term's sd: sets the logit spread, hence the oracle AUC (~0.80).
CRITEO_LOGIT_SCALE = 0.80
CRITEO_TARGET_CTR = 0.25
_CALIBRATION_CHUNKS = 2


@dataclass
class CriteoRows:
    """Raw Criteo feature values of a run of rows (before rendering)."""

    ints: np.ndarray  # (n, 13) int64
    int_missing: np.ndarray  # (n, 13) bool
    ranks: np.ndarray  # (n, 26) int64 popularity ranks
    cat_missing: np.ndarray  # (n, 26) bool
    u_label: np.ndarray  # (n,) float64 uniforms for the label draw

    def __len__(self) -> int:
        return self.u_label.shape[0]

    @staticmethod
    def concat(parts: Sequence[CriteoRows]) -> CriteoRows:
        if len(parts) == 1:
            return parts[0]
        return CriteoRows(
            *(np.concatenate([getattr(p, k) for p in parts]) for k in
              ("ints", "int_missing", "ranks", "cat_missing", "u_label"))
        )


def _criteo_missing_layout() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-field (group index, rate) arrays for the integer and the categorical fields."""
    int_group = np.zeros(13, np.int64)
    int_rate = np.zeros(13)
    cat_group = np.zeros(26, np.int64)
    cat_rate = np.zeros(26)
    for g, members in enumerate(CRITEO_MISSING_GROUPS):
        for name, rate in members.items():
            if name in CRITEO_INT_FIELDS:
                i = CRITEO_INT_FIELDS.index(name)
                int_group[i], int_rate[i] = g, rate
            else:
                i = CRITEO_CAT_FIELDS.index(name)
                cat_group[i], cat_rate[i] = g, rate
    return int_group, int_rate, cat_group, cat_rate


_INT_GROUP, _INT_MISS_RATE, _CAT_GROUP, _CAT_MISS_RATE = _criteo_missing_layout()
_INT_P0 = np.array([CRITEO_INTS[f].p_zero for f in CRITEO_INT_FIELDS])
_INT_MU = np.array([CRITEO_INTS[f].mu for f in CRITEO_INT_FIELDS])
_INT_SIGMA = np.array([CRITEO_INTS[f].sigma for f in CRITEO_INT_FIELDS])


def sample_criteo_chunk(seed: int, chunk: int, n: int = CHUNK_ROWS,
                        stream: int = _STREAM_ROWS) -> CriteoRows:
    """The first ``n`` rows of random chunk ``chunk`` (always drawn whole, so prefixes agree)."""
    rng = _chunk_rng(seed, stream, chunk)
    full = CHUNK_ROWS
    z_row = rng.standard_normal(full)[:n]
    eps = rng.standard_normal((full, 13))[:n]
    u_zero = rng.random((full, 13))[:n]
    u_neg = rng.random(full)[:n]
    u_group = rng.random((full, len(CRITEO_MISSING_GROUPS)))[:n]
    u_cat = rng.random((full, 26))[:n]
    u_label = rng.random(full)[:n]

    rho = _INT_ROW_CORRELATION
    z = rho * z_row[:, None] + math.sqrt(1.0 - rho * rho) * eps
    positive = np.ceil(np.exp(np.minimum(_INT_MU + _INT_SIGMA * z, math.log(_INT_MAX_VALUE))))
    ints = np.where(u_zero < _INT_P0, 0, np.clip(positive, 1, _INT_MAX_VALUE)).astype(np.int64)
    i2 = CRITEO_INT_FIELDS.index("I2")
    ints[:, i2] = np.where(u_neg < _I2_MINUS_ONE, -1,
                           np.where(u_neg < _I2_MINUS_ONE + _I2_MINUS_TWO, -2, ints[:, i2]))
    int_missing = u_group[:, _INT_GROUP] < _INT_MISS_RATE

    ranks = np.empty((n, 26), np.int64)
    for j, name in enumerate(CRITEO_CAT_FIELDS):
        spec = CRITEO_CATS[name]
        ranks[:, j] = _zipf_ranks(u_cat[:, j], spec.vocab, spec.exponent, spec.offset)
    cat_missing = u_group[:, _CAT_GROUP] < _CAT_MISS_RATE
    return CriteoRows(ints, int_missing, ranks, cat_missing, np.ascontiguousarray(u_label))


def _criteo_tokens(rows: CriteoRows) -> dict[str, np.ndarray]:
    """Token index of every field: the row index into that field's parameter tables."""
    tokens: dict[str, np.ndarray] = {}
    for j, name in enumerate(CRITEO_INT_FIELDS):
        bucket = _bars_bucket(rows.ints[:, j])
        tokens[name] = np.where(rows.int_missing[:, j], 0, bucket + 3)
    for j, name in enumerate(CRITEO_CAT_FIELDS):
        r = rows.ranks[:, j]
        tail = _criteo_token_count(name) - 1
        tokens[name] = np.where(rows.cat_missing[:, j], 0, np.where(r < HEAD_RANKS, r + 1, tail))
    return tokens


def _criteo_token_count(name: str) -> int:
    if name in CRITEO_CATS:
        return min(CRITEO_CATS[name].vocab, HEAD_RANKS) + 2  # missing, head ranks, tail
    return _INT_TOKENS


def _int_token_position() -> np.ndarray:
    """Approximate ln(v) of each integer token (for the monotone shape); 0 for missing."""
    b = np.arange(-3, _INT_MAX_BUCKET + 1, dtype=np.float64)  # token t -> bucket t - 3
    pos = np.where(b > 2, np.sqrt(np.maximum(b, 0) + 0.5), np.log(np.maximum(b, 0) + 1.0))
    pos[b < 0] = -0.5
    pos[0] = 0.0
    return pos


class CriteoClickModel:
    """The hidden Criteo click model of one seed: parameter tables, scaled and calibrated."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        hash_keys = np.random.default_rng([self.seed, _STREAM_HASH]).integers(0, 2**32, 2)
        self.hash_keys = (int(hash_keys[0]), int(hash_keys[1]))
        self.first: dict[str, np.ndarray] = {}
        self.pairs: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        self.triples: list[tuple[str, str, str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.bias = 0.0
        self._build()

    # -- construction ------------------------------------------------------------------------

    def _gauss(self, term: int, factor: int, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _STREAM_MODEL, term, factor])
        return rng.standard_normal(shape)

    def _factor(self, name: str, term: int, factor: int, rank: int) -> np.ndarray:
        """Raw factor table (tokens x rank): Gaussian per categorical value, a smooth random
        walk over buckets for integer fields; zero for the categorical tail token."""
        size = _criteo_token_count(name)
        table = self._gauss(term, factor, (size, rank))
        if name in CRITEO_CATS:
            if CRITEO_CATS[name].vocab > HEAD_RANKS:
                table[-1] = 0.0
        else:
            walk = np.cumsum(table[1:] * 0.35, axis=0)
            table[1:] = walk - walk.mean(axis=0)
        return table

    def _build(self) -> None:
        cal = CriteoRows.concat([
            sample_criteo_chunk(self.seed, c, stream=_STREAM_CALIBRATION)
            for c in range(_CALIBRATION_CHUNKS)
        ])
        tok = _criteo_tokens(cal)
        scale = CRITEO_LOGIT_SCALE
        position = _int_token_position()
        term = 0
        for name, (sd, shape) in CRITEO_FIRST_ORDER.items():
            term += 1
            if shape == "value":
                table = self._factor(name, term, 0, 1)[:, 0]
            elif shape == "monotone":
                sign = 1.0 if self._gauss(term, 1, (1,))[0] >= 0 else -1.0
                center = CRITEO_INTS[name].mu
                table = sign * np.tanh((position - center) / max(CRITEO_INTS[name].sigma, 0.5))
                table[0] = self._gauss(term, 2, (1,))[0]  # missing
            elif shape == "bucket":
                table = self._factor(name, term, 0, 1)[:, 0]
            else:  # pragma: no cover - guarded by the constant tables
                raise ValueError(shape)
            values = table[tok[name]]
            table = (table - values.mean()) / max(values.std(), 1e-12) * sd * scale
            self.first[name] = table
        # The integer fields are correlated, so the first-order sum is rescaled as a whole to
        # the variance it would have if they were independent: the same split for every seed.
        total = sum(table[tok[name]] for name, table in self.first.items())
        target = scale * math.sqrt(sum(sd * sd for sd, _ in CRITEO_FIRST_ORDER.values()))
        factor = target / max(float(np.std(total)), 1e-12)
        for name in self.first:
            self.first[name] *= factor
        for f, g, rank, sd in CRITEO_PAIRS:
            term += 1
            a = self._factor(f, term, 0, rank)
            b = self._factor(g, term, 1, rank)
            a -= a[tok[f]].mean(axis=0)
            b -= b[tok[g]].mean(axis=0)
            values = np.einsum("nk,nk->n", a[tok[f]], b[tok[g]])
            a *= sd * scale / max(values.std(), 1e-12)
            self.pairs.append((f, g, a, b))
        for f, g, h, rank, sd in CRITEO_TRIPLES:
            term += 1
            a = self._factor(f, term, 0, rank)
            b = self._factor(g, term, 1, rank)
            c = self._factor(h, term, 2, rank)
            a -= a[tok[f]].mean(axis=0)
            b -= b[tok[g]].mean(axis=0)
            c -= c[tok[h]].mean(axis=0)
            values = np.einsum("nk,nk,nk->n", a[tok[f]], b[tok[g]], c[tok[h]])
            a *= sd * scale / max(values.std(), 1e-12)
            self.triples.append((f, g, h, a, b, c))
        self.bias = 0.0
        self.bias = _solve_bias(self.logit(cal, tok), CRITEO_TARGET_CTR)

    # -- use ---------------------------------------------------------------------------------

    def logit(self, rows: CriteoRows, tokens: dict[str, np.ndarray] | None = None) -> np.ndarray:
        tok = _criteo_tokens(rows) if tokens is None else tokens
        out = np.full(len(rows), self.bias)
        for name, table in self.first.items():
            out += table[tok[name]]
        for f, g, a, b in self.pairs:
            out += np.einsum("nk,nk->n", a[tok[f]], b[tok[g]])
        for f, g, h, a, b, c in self.triples:
            out += np.einsum("nk,nk,nk->n", a[tok[f]], b[tok[g]], c[tok[h]])
        return out

    def probabilities(self, rows: CriteoRows) -> np.ndarray:
        return _sigmoid(self.logit(rows))

    def value_strings(self, j: int, ranks: np.ndarray) -> np.ndarray:
        """``S8`` hex strings of categorical field ``C{j+1}`` for the given ranks."""
        return _hex8(_value_hashes(j, ranks, self.hash_keys))


def _criteo_frame(model: CriteoClickModel, rows: CriteoRows, labels: np.ndarray | None):
    """A polars DataFrame of the rows in Kaggle column order (nulls = missing)."""
    import polars as pl

    columns: dict[str, pl.Series] = {}
    if labels is not None:
        columns["label"] = pl.Series("label", labels.astype(np.int8))
    for j, name in enumerate(CRITEO_INT_FIELDS):
        s = pl.Series(name, rows.ints[:, j])
        miss = rows.int_missing[:, j]
        columns[name] = s.set(pl.Series(miss), None) if miss.any() else s
    for j, name in enumerate(CRITEO_CAT_FIELDS):
        s = pl.Series(name, model.value_strings(j, rows.ranks[:, j])).cast(pl.String)
        miss = rows.cat_missing[:, j]
        columns[name] = s.set(pl.Series(miss), None) if miss.any() else s
    return pl.DataFrame(columns)


def iter_criteo_chunks(rows: int, seed: int = 0, model: CriteoClickModel | None = None
                       ) -> Iterator[tuple[CriteoRows, np.ndarray, np.ndarray]]:
    """Yield ``(raw rows, click probabilities, labels)`` chunk by chunk (65,536 rows each)."""
    model = CriteoClickModel(seed) if model is None else model
    for chunk in range(-(-rows // CHUNK_ROWS)):
        part = sample_criteo_chunk(model.seed, chunk, min(CHUNK_ROWS, rows - chunk * CHUNK_ROWS))
        probs = model.probabilities(part)
        yield part, probs, part.u_label < probs


def write_synthetic_criteo(out: str | os.PathLike, rows: int, seed: int = 0, *,
                           unlabeled: bool = False, block_rows: int = 500_000,
                           progress: Callable[[int, int], None] | None = None,
                           probs_out: str | os.PathLike | None = None) -> SynthSummary:
    """Write ``rows`` synthetic rows in the Criteo Kaggle TSV format to ``out``.

    Also writes the true click probabilities (float32, row order, ``.npy``) to ``probs_out``,
    by default ``out + ".probs.npy"`` (not written by default when ``out`` is ``-`` = stdout, a
    device or a FIFO). Regular files are written under ``.<name>.tmp-<pid>`` and renamed when
    complete, the probabilities first, so both appear only on success; a stream is written in
    place (:func:`ctrkit.fileio.atomic_output`). The bytes
    depend only on ``(rows, seed)``; ``block_rows`` (rounded up to whole chunks of 65,536 rows)
    is how many rows are rendered and written at a time, which bounds memory.
    ``progress(done, rows)`` is called after each block if given.

    Raises:
        ConfigError: ``rows < 1``, a negative ``seed``, ``block_rows < 1``, non-integers.
        InputError: ``out`` (or ``probs_out``) is a directory or its directory does not exist.
        OutputError: writing fails (disk full, ...); the message says what was kept.
    """
    import polars as pl

    path = _check_arguments(out, rows, seed, block_rows)
    probs_path = _probabilities_path(path, probs_out)
    model = CriteoClickModel(seed)
    all_probs = np.empty(rows, np.float32)
    all_labels = np.empty(rows, bool)
    chunks_per_block = max(1, -(-block_rows // CHUNK_ROWS))
    kept = _kept(path, *([probs_path] if probs_path else []))
    probs_committed = False
    try:
        # The rows are committed last: a complete OUT means its probabilities are complete too.
        with atomic_output(path, "wb", flag="output", kept=kept) as fh:
            done = 0
            frames = []

            def flush() -> None:
                try:
                    pl.concat(frames, rechunk=False).write_csv(
                        fh, include_header=False, separator="\t", null_value="",
                        quote_style="never", line_terminator="\n")
                except OSError as exc:
                    raise _with_errno(exc) from exc
                frames.clear()
                if progress is not None:
                    progress(done, rows)

            for part, probs, labels in iter_criteo_chunks(rows, seed, model):
                frames.append(_criteo_frame(model, part, None if unlabeled else labels))
                n = len(part)
                all_probs[done:done + n] = probs
                all_labels[done:done + n] = labels
                done += n
                if len(frames) == chunks_per_block:
                    flush()
            if frames:
                flush()
            if probs_path is not None:
                with atomic_output(probs_path, "wb", flag="probabilities", kept=kept) as probs_fh:
                    np.save(probs_fh, all_probs)
                probs_committed = not is_stream(probs_path)
    except BaseException:
        if probs_committed:  # the rows failed to land after their probabilities did: no mismatched pair
            os.unlink(probs_path)
        raise
    return SynthSummary(
        path=path,
        probs_path=probs_path,
        rows=rows,
        ctr=float(all_labels.mean()),
        oracle_auc=rank_auc(all_labels, all_probs),
        seed=int(seed),
        unlabeled=bool(unlabeled),
    )


__all__ = [
    "CHUNK_ROWS",
    "CRITEO_CATS",
    "CRITEO_FIRST_ORDER",
    "CRITEO_INTS",
    "CRITEO_MISSING_GROUPS",
    "CRITEO_PAIRS",
    "CRITEO_TRIPLES",
    "CriteoClickModel",
    "CriteoRows",
    "HEAD_RANKS",
    "SynthSummary",
    "iter_criteo_chunks",
    "rank_auc",
    "sample_criteo_chunk",
    "write_synthetic_criteo",
]
