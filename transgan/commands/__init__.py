"""The user commands: each module's ``entry`` is a console script (``transgan-train``, ``transgan-eval``...)
and ``tools/<name>.py`` runs the same ``entry`` from a checkout without installing; same arguments."""
