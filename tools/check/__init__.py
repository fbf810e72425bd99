"""The libraries behind ``ckbd check``: one module or folder per command, named after it.

``roundtrip``, ``determinism``, ``gpu``, ``fuzz``, ``tiling``, ``known_answers``; the CLI side is
:mod:`ckbd.cli.check` (whose ``MEMBERS`` lists the commands).
"""
