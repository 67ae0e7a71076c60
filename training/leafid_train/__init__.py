"""leafid_train: fine-tune, calibrate, evaluate and export leafid models (needs torch).

Modules here import torch lazily or at their top; ``leafid_train.commands`` imports
only the standard library and ``leafid`` so that ``leafid --help`` works without torch.
"""
