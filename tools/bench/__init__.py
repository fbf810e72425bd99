"""The libraries behind ``ckbd bench``: one module or folder per command, named after it.

``coder``, ``substreams``, ``codecs/``, ``entropy_params``, ``int8``, ``memory/``, ``ops``, ``serving``; the CLI side is
:mod:`ckbd.cli.bench` (whose ``MEMBERS`` lists the commands). Shared report helpers are in
:mod:`ckbd.tools.report`.
"""
