"""Command-line entry points (thin wrappers of transgan.commands), benchmarks and one-off scripts."""
