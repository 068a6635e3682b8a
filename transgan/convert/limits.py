"""What a checkpoint file may make the converter read, inflate and build, checked before it is unpickled.

A file is recognized by its first bytes, not its name (:func:`sniff`). Before anything is built,
the pickle opcodes are walked without running them (:func:`check_pickle`) and a zip archive's
directory is read without inflating it (:func:`check_archive`). The budget:

- bytes read: every length an opcode declares (BINBYTES8, FRAME, BINUNICODE8 ...) fits in the
  bytes that remain, so no object is larger than the file;
- inflated bytes: the members of a torch.save archive are stored, not compressed; together they may
  exceed the archive's own size by at most ``MAX_INFLATION``;
- objects built: at most ``MAX_OPCODES`` opcodes, a stack of at most ``MAX_STACK`` items, marks
  nested at most ``MAX_MARKS`` deep and ``MAX_MEMO`` memo entries; a full-size official checkpoint
  uses a few percent of each (``tests/convert/test_limits.py``).

So a 15-byte pickle claiming 2^62 bytes, a deflate bomb of MARK opcodes and a zip of a gigabyte of
zeros are refused in milliseconds, with one line, before anything large is allocated.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import BinaryIO

from transgan.errors import ConvertError

__all__ = ["TORCH_ARCHIVE", "PICKLE", "MAX_INFLATION", "MAX_OPCODES", "MAX_STACK", "MAX_MARKS", "MAX_MEMO",
           "UnsafeFile", "sniff", "check_pickle", "check_legacy_storage", "check_archive"]

TORCH_ARCHIVE, PICKLE = "torch.save archive", "pickle"
MAX_INFLATION = 1 << 20
MAX_OPCODES = 2_000_000
MAX_STACK = 100_000
MAX_MARKS = 1_000
MAX_MEMO = 1_000_000

# torch.save before torch 1.6 starts with this pickle (its magic number, protocol 2).
_LEGACY_TORCH = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_MEMO_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


class UnsafeFile(ConvertError):
    """A checkpoint refused before unpickling: not a known format, or over the budget of the module docstring."""


def sniff(path: Path) -> str:
    """The kind of file ``path`` is by its first bytes: :data:`TORCH_ARCHIVE` or :data:`PICKLE`."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH))
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ARCHIVE
    if head == _LEGACY_TORCH:
        raise UnsafeFile(f"{path} is a torch.save file from before torch 1.6, which is not read: its storage "
                         f"sizes are allocated as the file states them, before they can be checked; load it "
                         f"and save it again with a newer torch")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return PICKLE
    what = "it is empty" if not head else f"it starts with {head[:8]!r}"
    raise UnsafeFile(f"{path} is not a checkpoint: {what}, neither a zip archive (torch.save: TransGAN, "
                     f"StyleSwin) nor a pickle (stylegan2-ada, R3GAN snapshots)")


def check_pickle(data: bytes, what: str) -> dict[str, int]:
    """Walk the opcodes of the pickle in ``data`` without building anything; raise :class:`UnsafeFile`
    naming ``what`` if it would read past its end or exceed the budget. Returns the most it uses of each."""
    return _walk(io.BytesIO(data), len(data), what)


def _walk(stream: BinaryIO, size: int, what: str) -> dict[str, int]:
    """Walk one pickle from the stream's position to its STOP (see :func:`check_pickle`)."""
    opcodes, stack, marks, memo = 0, 0, [], 0
    most = {"opcodes": 0, "stack": 0, "marks": 0, "memo": 0}
    try:
        for op, arg, pos in pickletools.genops(stream):
            opcodes += 1
            if opcodes > MAX_OPCODES:
                raise UnsafeFile(f"{what}: more than {MAX_OPCODES:,} pickle opcodes")
            if op.name == "FRAME" and arg > size - stream.tell():
                raise UnsafeFile(f"{what}: a pickle frame of {arg:,} bytes at byte {pos}, but only "
                                 f"{size - stream.tell():,} follow: truncated, corrupt or crafted")
            if op.name == "MARK":
                marks.append(stack)
                if len(marks) > MAX_MARKS:
                    raise UnsafeFile(f"{what}: pickle marks nested more than {MAX_MARKS:,} deep")
            elif pickletools.markobject in op.stack_before:
                if not marks:
                    raise UnsafeFile(f"{what}: a pickle opcode {op.name} at byte {pos} without its mark")
                below = op.stack_before.index(pickletools.markobject)
                stack = marks.pop() - below + len(op.stack_after)
            else:
                stack += len(op.stack_after) - len(op.stack_before)
            memo += op.name in _MEMO_OPS
            if stack > MAX_STACK or memo > MAX_MEMO:
                raise UnsafeFile(f"{what}: a pickle that builds more than {MAX_STACK:,} objects at once "
                                 f"or memoizes more than {MAX_MEMO:,}")
            most["stack"], most["marks"] = max(most["stack"], stack), max(most["marks"], len(marks))
        most["opcodes"], most["memo"] = opcodes, memo
        return most
    except UnsafeFile:
        raise
    except ValueError as e:  # pickletools: a declared length past the end, an unknown opcode, a missing STOP
        raise UnsafeFile(f"{what}: not a complete pickle ({e}): truncated, corrupt or crafted") from None


# Bytes per element of the storage classes a legacy torch.save names.
_STORAGE_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                  "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}


class _StorageRecords(pickle.Unpickler):
    """Reads a legacy torch.save's object pickle keeping only the storage records it names (no storage is made)."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(stream)
        self.storages: dict[str, int] = {}  # key -> bytes

    def find_class(self, module: str, name: str) -> int:
        """The element size of a storage class, or a refusal of any other name."""
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return 1
        if module != "torch" or name not in _STORAGE_BYTES:
            raise UnsafeFile(f"a tensor storage that names {module}.{name}")
        return _STORAGE_BYTES[name]

    def persistent_load(self, pid: object) -> None:
        """Record (key, bytes) of a storage record ('storage', element size, key, location, count, None)."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], int)
                and isinstance(pid[4], int) and pid[4] >= 0 and pid[5] is None):
            raise UnsafeFile(f"a tensor storage record of an unknown shape: {type(pid).__name__}")
        self.storages[str(pid[2])] = pid[4] * pid[1]


def check_legacy_storage(data: bytes, what: str) -> None:
    """A storage as torch pickles one (a pre-1.6 torch.save: magic, protocol and system pickles, the object
    pickle, the storage keys, then each storage as an 8-byte count and its bytes): the sizes it declares,
    which torch allocates before reading, must be exactly the bytes that follow."""
    stream = io.BytesIO(data)
    if not data.startswith(_LEGACY_TORCH):
        raise UnsafeFile(f"{what}: not a pickled torch storage")
    try:
        for part in range(5):
            start = stream.tell()
            _walk(stream, len(data), what)
            if part == 3:
                records = _StorageRecords(io.BytesIO(data[start:stream.tell()]))
                records.load()
    except UnsafeFile as e:
        raise UnsafeFile(f"{what}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise UnsafeFile(f"{what}: not a pickled torch storage ({type(e).__name__}: {e})") from None
    declared = sum(8 + n for n in records.storages.values())
    if declared != len(data) - stream.tell():
        raise UnsafeFile(f"{what}: declares {declared:,} bytes of storage, but {len(data) - stream.tell():,} follow")


def check_archive(source: Path | BinaryIO, what: str) -> None:
    """Check a torch.save zip (a path or an open binary file) against the budget and walk its data.pkl."""
    size = Path(source).stat().st_size if isinstance(source, (str, Path)) else source.seek(0, io.SEEK_END)
    try:
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            inflated = sum(i.file_size for i in infos)
            if inflated > size + MAX_INFLATION:
                raise UnsafeFile(f"{what}: its members inflate to {inflated:,} bytes from a {size:,}-byte file "
                                 f"(torch.save stores them uncompressed); refused as a decompression bomb")
            pickles = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                raise UnsafeFile(f"{what}: a zip archive with {len(pickles)} data.pkl members, not a torch.save file")
            data = zf.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise UnsafeFile(f"{what} is not a complete torch.save file ({type(e).__name__}: {e}): truncated or "
                         f"corrupt") from None
    check_pickle(data, f"{what} (data.pkl)")
