"""What every benchmark and check reports with: machine info, JSON, plots, BD-rate, RESULTS sections.

- :mod:`.machine`: where a run happened (:func:`.machine.machine_info`);
- :mod:`.jsonfile`: JSON that stays valid with NaN/inf figures;
- :mod:`.plots`: matplotlib figures (the ``plots`` extra);
- :mod:`.bdrate`: Bjøntegaard rate and PSNR differences;
- :mod:`.results_sections`: generated sections of ``docs/RESULTS.md`` beside hand-written text;
- :mod:`.peak_probe`: the machine's measured peak arithmetic rate.
"""
