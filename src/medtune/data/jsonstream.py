"""Streaming a large JSON list of records without holding it in memory."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from medtune.data.store import DatasetError


def iter_records(path: str | os.PathLike, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The records of a JSON array file (or of concatenated / JSON-Lines objects), streamed.

    The 0.7 GB JSON never sits in memory as a whole: records are decoded one by one
    from a sliding text buffer.
    """
    path = Path(path)
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    with open(path, encoding="utf-8") as fh:
        buf, pos, eof = "", 0, False

        def fill() -> bool:  # append a chunk; False at end of file
            nonlocal buf, pos, eof
            more = fh.read(chunk_chars)
            if not more:
                eof = True
                return False
            buf, pos = buf[pos:] + more, 0
            return True

        def skip_ws() -> str:  # the next non-blank character ("" at end of file)
            nonlocal pos
            while True:
                pos = ws.match(buf, pos).end()
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        def bad(what: str) -> DatasetError:
            return DatasetError(f"{path}: not a JSON list of records ({what})")

        first = skip_ws()
        in_array = first == "["
        if in_array:
            pos += 1
        elif first != "{":
            raise bad(f"starts with {first!r}" if first else "empty file")
        while True:
            char = skip_ws()
            if in_array and char == "]":
                return
            if not char:
                if in_array:
                    raise bad("truncated: no closing ']'")
                return
            if char != "{":
                raise bad(f"record starting with {char!r}")
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof or not fill():
                        raise bad(f"truncated or invalid record: {exc}") from None
            pos = end
            yield record
            if in_array:
                char = skip_ws()
                if char == ",":
                    pos += 1
                elif char != "]":
                    raise bad(f"expected ',' or ']' after a record, found {char!r}" if char else "truncated")
