"""SipMask: fast single-stage instance segmentation (ECCV 2020) in pure PyTorch."""
from sipmask.config import SipMaskConfig, get_preset, list_presets
from sipmask.inference.predictor import Predictor
from sipmask.model.detector import SipMask, build_model

__all__ = ["Predictor", "SipMask", "SipMaskConfig", "build_model", "get_preset", "list_presets"]
__version__ = "0.1.0"
