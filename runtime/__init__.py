"""The production runtime: graphs on a backend, chained around a CPU range coder.

This package must never import torch: it runs with numpy, onnxruntime, constriction and Pillow.
"""
