"""The codec benchmark behind ``ckbd bench codecs``, one module per job.

- :mod:`.run`: what one run measures and in which order (:func:`.run.run_benchmark`);
- :mod:`.codecs`: ckbd's codecs and the torch baselines, as :class:`.timing.TimedCodec`;
- :mod:`.timing`: the timing loop, and the figures derived from it (ratios, agreement);
- :mod:`.compressai_reference`: the same weights through CompressAI's own compress/decompress;
- :mod:`.compressai_stubs`: stand-ins for CompressAI dependencies that are never used here;
- :mod:`.report`: the typed report, which round-trips through JSON;
- :mod:`.render`: the markdown page and the plots.
"""
