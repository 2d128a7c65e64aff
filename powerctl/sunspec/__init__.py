"""SunSpec: model definitions from the official JSON, discovery of the model chain, decoding."""

from powerctl.sunspec.decode import PointValue, decode_model
from powerctl.sunspec.discovery import Chain, DiscoveryError, FoundModel, discover
from powerctl.sunspec.models import ModelDef, ModelPoint, load_model

__all__ = [
    "Chain",
    "DiscoveryError",
    "FoundModel",
    "ModelDef",
    "ModelPoint",
    "PointValue",
    "decode_model",
    "discover",
    "load_model",
]
