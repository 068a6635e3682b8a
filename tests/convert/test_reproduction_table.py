"""docs/reproduction.md's tables are data: each paper preset composes to the values they list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from transgan.train.config import compose_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduction.md"


def tables() -> list[tuple[str, list[dict[str, str]]]]:
    """(overrides, rows) for every table preceded by a 'Composed: `...`' line."""
    out, preset, rows = [], None, []
    for line in DOC.read_text().splitlines() + [""]:
        m = re.match(r"^Composed: `([^`]+)`", line)
        if m:
            preset, rows = m.group(1), []
        elif preset and line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif preset and rows:
            header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append((preset, [dict(zip(header, r)) for r in body]))
            preset, rows = None, []
    return out


TABLES = tables()


def test_the_doc_has_every_paper():
    assert [p for p, _ in TABLES] == ["experiment=transgan_paper dataset=cifar10", "experiment=transgan_paper256",
                                      "experiment=stylegan2_ada_paper256", "experiment=stylegan2_ada_cifar10",
                                      "experiment=styleswin_paper", "experiment=r3gan_cifar10"]
    assert all(re.match(r"\*?\*?(matched|converted|differs)\b", r["Status"]) for _, rows in TABLES for r in rows)


@pytest.mark.parametrize("preset, rows", TABLES, ids=[p.split()[0] for p, _ in TABLES])
def test_preset_composes_to_the_table(preset, rows):
    cfg, _ = compose_config(preset.split())
    checked = 0
    for row in rows:
        keys = re.findall(r"`([^`]+)`", row["Config key"])
        value = re.fullmatch(r"`(.*)`", row["This project"])
        if not keys:
            continue
        assert value, f"row {row['Item']!r} names a key but no `value`"
        expected = yaml.safe_load(value.group(1)) if value.group(1) != '""' else ""
        for key in keys:
            got = OmegaConf.select(cfg, key, throw_on_missing=True)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == expected, f"{preset}: {key} is {got!r}, the table says {expected!r} ({row['Item']})"
            checked += 1
    assert checked >= 15
