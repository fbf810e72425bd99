"""The ``ckbd`` command line, one module per command group."""
