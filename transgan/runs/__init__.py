"""What a run leaves on disk and how to read it back: checkpoints, generator exports, run directories.

Shared by training (writes checkpoints), evaluation and generation (read them) and serving (reads
exports), so none of those layers imports another for it. Above the models and data, below them all.
"""
