"""Checkpoints that would exhaust memory are refused before anything large is read or built (convert/limits.py)."""

from __future__ import annotations

import io
import json
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.convert.test_stylegan2_ada_convert import _snapshot
from transgan.convert import limits
from transgan.convert.limits import UnsafeFile, check_legacy_storage, check_pickle
from transgan.convert.unpickle import load_official

GIB = 1 << 30

# Runs the converter on each bomb under a 1 GiB limit on the process's data segment (RLIMIT_DATA:
# what malloc and anonymous mappings may hold; torch's own import stays well under it). The resident
# high-water mark after each refusal shows what the refusal cost: nothing the bomb asked for was built.
RUNNER = r"""
import json, resource, sys
from transgan.commands.convert import main
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
main([sys.argv[2], "--out", sys.argv[1] + "/run"])  # the first refusal imports the converter's modules
start = peak_mib()
for path in sys.argv[2:]:
    status = main([path, "--out", sys.argv[1] + "/run"])
    print(json.dumps({"path": path, "status": status, "peak_mib": peak_mib(), "start_mib": start}), flush=True)
"""


def _deflated_zip(path: Path, members: dict[str, tuple[bytes, int]]) -> None:
    """A zip whose members are ``chunk`` repeated ``count`` times, deflated as they are written."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, (chunk, count) in members.items():
            with zf.open(name, "w", force_zip64=True) as f:
                for _ in range(count):
                    f.write(chunk)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """The files of the independent check: each would take gigabytes if read as it asks."""
    d = tmp_path_factory.mktemp("bombs")
    out = {"binbytes8": d / "claims-2e62.pkl", "frame": d / "frame.pkl", "marks": d / "marks.pt",
           "zeros": d / "zeros.pt", "marks_plain": d / "marks.pkl"}
    # 12 bytes: protocol 4, BINBYTES8 of 2^62 bytes, STOP
    out["binbytes8"].write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b".")
    out["frame"].write_bytes(b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N.")
    mib = 1 << 20
    # A torch.save-shaped zip whose data.pkl inflates to 1 GiB of MARK opcodes (~5 MB on disk).
    _deflated_zip(out["marks"], {"archive/data.pkl": (b"\x80\x02" + b"(" * (mib - 2), 1024),
                                 "archive/version": (b"3\n", 1)})
    # ... and one whose storage inflates to 1 GiB of zeros.
    _deflated_zip(out["zeros"], {"archive/data.pkl": (pickle.dumps({"w": 0}, protocol=2), 1),
                                 "archive/data/0": (bytes(mib), 1024)})
    # 64 MiB of MARK opcodes, not compressed: each would become a list on the unpickler's metastack.
    out["marks_plain"].write_bytes(b"\x80\x02" + b"(" * (64 * mib))
    return out


def test_each_bomb_is_refused_under_a_1_gib_limit_without_building_what_it_asks(bombs, tmp_path, repo_root):
    """One error line and exit status 2 for each, with the data segment capped at 1 GiB and next to no memory."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (GIB, GIB))

    result = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path), *map(str, bombs.values())],
                            cwd=repo_root, capture_output=True, text=True, timeout=300, preexec_fn=cap_memory)
    assert "MemoryError" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["path"]) for r in rows] == list(bombs.values())
    assert all(r["status"] == 2 for r in rows), rows
    # Each bomb asks for gigabytes; refusing them all raised the resident peak by less than the largest
    # file's own size (64 MiB, read once to walk its opcodes) plus 16 MiB.
    largest_mib = max(p.stat().st_size for p in bombs.values()) / 2**20
    assert rows[-1]["peak_mib"] - rows[0]["start_mib"] < largest_mib + 16, rows
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")][1:]  # after the warm-up
    assert len(errors) == len(bombs), result.stderr
    for line, expected in zip(errors, ["bytes8", "pickle frame of 4,611,686,018,427,387,904 bytes",
                                       "decompression bomb", "decompression bomb", "nested more than 1,000"]):
        assert expected in line, line


def test_opcode_walk_enforces_each_budget(monkeypatch):
    """Stack, memo and mark budgets count what the unpickler would hold (closed forms on small pickles)."""
    check_pickle(pickle.dumps([[1, 2], {"a": (3, 4)}] * 3, protocol=4), "fine")
    monkeypatch.setattr(limits, "MAX_STACK", 100)
    check_pickle(pickle.dumps(list(range(99)), protocol=2), "99 items on the stack")  # pickle batches appends
    flat = b"\x80\x02(" + b"N" * 101 + b"t."  # a tuple of 101 Nones: 101 items on the stack at once
    with pytest.raises(UnsafeFile, match="more than 100 objects"):
        check_pickle(flat, "flat")
    monkeypatch.setattr(limits, "MAX_MEMO", 10)
    with pytest.raises(UnsafeFile, match="memoizes more than 10"):
        check_pickle(b"\x80\x04N" + b"\x94" * 11 + b".", "memo")
    with pytest.raises(UnsafeFile, match="without its mark"):
        check_pickle(b"\x80\x02Nt.", "no mark")


def test_a_pickle_with_a_zip_end_record_is_still_a_pickle(tmp_path):
    """Detection reads the first bytes: a snapshot whose last bytes look like a zip directory loads as a pickle."""
    path = _snapshot(tmp_path, "uncond")
    path.write_bytes(path.read_bytes() + b"PK\x05\x06" + bytes(18))  # after STOP: ignored by pickle
    assert "G_ema" in load_official(path)


def test_a_storage_that_declares_more_bytes_than_it_holds_is_refused():
    """torch allocates a pickled storage's declared size before reading it: the size must be the bytes that follow."""
    buf = io.BytesIO()
    torch.save(torch.zeros(3).untyped_storage(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    check_legacy_storage(data, "storage")
    claims = data.replace(b"K\x0cN", b"J" + struct.pack("<i", 2**31 - 1) + b"N")  # BININT1 12 -> BININT 2^31-1
    assert claims != data
    with pytest.raises(UnsafeFile, match="declares 2,147,483,655 bytes of storage, but 20 follow"):
        check_legacy_storage(claims, "storage")


def test_a_pre_1_6_torch_save_file_is_refused_by_name(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFile, match="from before torch 1.6"):
        load_official(path)
