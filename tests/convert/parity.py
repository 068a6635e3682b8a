"""Print the converters' parity on the golden fixtures: ``python -m tests.convert.parity`` (docs/reproduction.md).

The same checks ``tools/convert.py --verify`` prints first (transgan/convert/verify.py), for every kind.
"""

from __future__ import annotations

from transgan.convert.verify import FIXTURE_CHECKS, fixture_checks, format_checks


def main() -> None:
    """Convert each fixture with the converter's own functions and print max abs differences."""
    print(format_checks([check for kind in FIXTURE_CHECKS for check in fixture_checks(kind)]))


if __name__ == "__main__":
    main()
