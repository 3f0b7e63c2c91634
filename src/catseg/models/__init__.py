"""Segmentation models behind one contract: logits (B, num_classes, H, W) at the input's own H and W.

    model = create_model("unet", in_channels=3, num_classes=2, width=32)
    kwargs = model_kwargs("smp-unet", train_config)        # what a run stores in config.json
    model = create_model(name, c, k, **rebuild_kwargs(name, kwargs))   # rebuild: no weight download
    load_weights(model, run / "model.safetensors")
    norm = preprocessing_for(name, kwargs, in_channels=c)  # {"mean": [...], "std": [...]}
"""

from catseg.models import smp as _smp  # noqa: F401  (registers the smp-* models)
from catseg.models import unet as _unet  # noqa: F401  (registers "unet")
from catseg.models.registry import (
    create_model,
    describe_models,
    list_models,
    model_kwargs,
    preprocessing_for,
    rebuild_kwargs,
    register_model,
)
from catseg.models.weights import load_weights, save_weights

__all__ = [
    "create_model",
    "describe_models",
    "list_models",
    "load_weights",
    "model_kwargs",
    "preprocessing_for",
    "rebuild_kwargs",
    "register_model",
    "save_weights",
]
