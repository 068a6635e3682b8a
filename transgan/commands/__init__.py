"""The user commands: each module's ``entry`` is a console script (``transgan-train``, ``transgan-eval``...)
and ``tools/<name>.py`` runs the same ``entry`` from a checkout without installing; same arguments.

Each module imports at its top only what its command line needs (transgan.cli). What the work needs
is imported inside the function that does the work ("deferred: start-up"), so ``--help`` and a bad
argument answer at once instead of after the 2-5 s that torch, torchvision and torch-fidelity take
to import.
"""
