"""Serving ckbd with NVIDIA Triton Inference Server, and batch scale-out with Ray.

``repository`` writes a Triton model repository, ``triton_models`` is the Python-backend code the
server runs, ``server`` starts ``tritonserver``, ``client`` talks to it, ``ray_batch`` runs a folder
through a Ray Data job. All of them import without the ``serve``/``batch`` extras; what needs one
names it when used.
"""
