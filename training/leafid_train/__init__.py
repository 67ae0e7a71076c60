"""leafid_train: fine-tune, calibrate, evaluate and export leafid models (needs torch).

Modules here import what they need (torch, timm, onnx, matplotlib) at their top.
``leafid_train.commands`` imports only the standard library and ``leafid`` there, so
that ``leafid --help`` works without torch; its :func:`~leafid_train.commands.load` is
the one place that turns a missing dependency into ``pip install 'leafid[train]'``.
"""
