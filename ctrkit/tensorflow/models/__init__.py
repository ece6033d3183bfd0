"""TensorFlow (Keras 3) CTR models: ``model(batch, training=False) -> logits [B]``.

Mirror of :mod:`ctrkit.pytorch.models`, class for class: same names, constructor arguments,
sub-layer attributes and formulas. See ``ctrkit.registry`` for names and papers, and
:mod:`ctrkit.parity` for the weight mapping between the two frameworks.
"""

from ctrkit.tensorflow.models.afm import AFM
from ctrkit.tensorflow.models.autoint import AutoInt
from ctrkit.tensorflow.models.base import CTRModel
from ctrkit.tensorflow.models.dcn import DCN
from ctrkit.tensorflow.models.dcnv2 import DCNV2
from ctrkit.tensorflow.models.deepfm import DeepFM
from ctrkit.tensorflow.models.dnn import DNN
from ctrkit.tensorflow.models.ffm import FFM
from ctrkit.tensorflow.models.fibinet import FiBiNET
from ctrkit.tensorflow.models.fm import FM
from ctrkit.tensorflow.models.lr import LR
from ctrkit.tensorflow.models.onn import ONN
from ctrkit.tensorflow.models.xdeepfm import XDeepFM

__all__ = ["AFM", "AutoInt", "CTRModel", "DCN", "DCNV2", "DNN", "DeepFM", "FFM", "FM", "FiBiNET", "LR", "ONN", "XDeepFM"]

from ctrkit.tensorflow.models.dien import DIEN  # noqa: E402
from ctrkit.tensorflow.models.din import DIN  # noqa: E402

__all__ += ["DIEN", "DIN"]
