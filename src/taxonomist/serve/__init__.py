"""HTTP serving with dynamic micro-batching (``pip install 'taxonomist[serve]'``)."""

from taxonomist.serve.app import PredictResponse, create_app
from taxonomist.serve.batching import BatcherBusy, BatcherStopped, MicroBatcher
from taxonomist.serve.logs import JsonFormatter, configure_logging
from taxonomist.serve.model import LOADERS, AttributeModel, ModelInfo, ServedModel, load_model

__all__ = [
    "LOADERS",
    "AttributeModel",
    "BatcherBusy",
    "BatcherStopped",
    "JsonFormatter",
    "MicroBatcher",
    "ModelInfo",
    "PredictResponse",
    "ServedModel",
    "configure_logging",
    "create_app",
    "load_model",
]
