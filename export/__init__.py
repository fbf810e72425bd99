"""From a trained PyTorch checkpoint to the five stage graphs, entropy tables and manifest.

Needs the ``export`` extra (torch, onnx). The runtime never imports this package.

- :mod:`ckbd.export.stage_modules`: one ``nn.Module`` per stage of the contract in
  :mod:`ckbd.runtime.stages` (the plain, reference form).
- :mod:`ckbd.export.optimize`: equivalent, faster forms of the same stages, used for export.
- :mod:`ckbd.export.model_package`: manifest fields, entropy tables and the model fingerprint.
- :mod:`ckbd.export.onnx_export`: writes a model directory (:func:`export_model`).
- :mod:`ckbd.export.torch_backend`: the torch reference backend the graphs are checked against.
- :mod:`ckbd.export.gemm_stages`: the integer stages as exact float32 matrix products, for any device.
- :mod:`ckbd.export.torch_device`: device placement and host transfers of the torch backend on CUDA.
"""
