"""MaskTune engine: datasets, backbones, ERM, saliency masks, finetune, evaluation, run store."""

__version__ = "0.1.0"
