"""Read back what W&B wrote for an offline run (WANDB_MODE=offline): the records of its run-ID.wandb file.

wandb 0.31 ships no Python reader for that file any more; its layout is LevelDB's log format (a 7-byte file
header ":W&B" 0xBEE1 version, then 32 KiB blocks of records, each a 7-byte header -- CRC32, length, kind
(1 full, 2 first, 3 middle, 4 last) -- and a piece of a serialised `wandb_internal_pb2.Record`).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is zero padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad CRC at byte {pos}"
        pos += HEADER + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            yield record


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(run_file: Path) -> dict:
    """{"history": {step: {key: value}}, "config": {...}, "summary": {...}, "tags": [...]} of one offline run."""
    out = {"history": {}, "config": {}, "summary": {}, "tags": []}
    for r in records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = _items(r.history.item)
            out["history"].setdefault(int(row["_step"]), {}).update(row)
        elif kind == "run":
            out["config"].update(_items(r.run.config.update))
            out["tags"] = list(r.run.tags)
        elif kind == "config":
            out["config"].update(_items(r.config.update))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
    return out
