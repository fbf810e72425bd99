"""``ckbd bench memory``: :mod:`.run` measures time and peak memory by image size, :mod:`.report` renders
the RESULTS section."""
