"""PyTorch CTR models: ``model(batch) -> logits [B]``. See ``ctrkit.registry`` for names and papers."""

from ctrkit.pytorch.models.afm import AFM
from ctrkit.pytorch.models.autoint import AutoInt
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.pytorch.models.dcn import DCN
from ctrkit.pytorch.models.dcnv2 import DCNV2
from ctrkit.pytorch.models.dien import DIEN
from ctrkit.pytorch.models.din import DIN
from ctrkit.pytorch.models.deepfm import DeepFM
from ctrkit.pytorch.models.dnn import DNN
from ctrkit.pytorch.models.ffm import FFM
from ctrkit.pytorch.models.fibinet import FiBiNET
from ctrkit.pytorch.models.fm import FM
from ctrkit.pytorch.models.lr import LR
from ctrkit.pytorch.models.onn import ONN
from ctrkit.pytorch.models.xdeepfm import XDeepFM

__all__ = ["AFM", "AutoInt", "CTRModel", "DCN", "DCNV2", "DIEN", "DIN", "DNN", "DeepFM", "FFM", "FM", "FiBiNET", "LR", "ONN", "XDeepFM"]
