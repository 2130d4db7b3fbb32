"""Subprocess used by test_storage_durability: writes through GroupCommitter until killed.

Usage: ``python durability_writer.py URL PRODUCERS``. Each producer loops: record
one change set (five LWW rows, one OR record, its counter, its fencing token),
wait for the commit future, and only then print ``<producer> <iteration>``.
Every printed line is therefore a promise that its changes are durable.
"""

from __future__ import annotations

import asyncio
import sys

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.server.persistence import GroupCommitter
from topgun.server.storage import WriteBatch, open_storage

ROWS_PER_SET = 5


def record_set(b: WriteBatch, p: int, i: int) -> None:
    ts = Timestamp(1_700_000_000_000 + i, p, f"node-{p}")
    for j in range(ROWS_PER_SET):
        b.lww_put("lww", f"p{p}-i{i}-j{j}", LWWRecord([p, i, j], ts))
    b.or_put("or", f"p{p}", ORMapRecord(i, ts, str(ts)))
    b.set_counter(f"c{p}", {"p": {f"node-{p}": i}, "n": {}})
    b.set_fencing(f"lock{p}", i)


async def main(url: str, producers: int) -> None:
    store = open_storage(url)
    await store.open()
    committer = GroupCommitter(store, max_batch_ops=2000)
    out = sys.stdout

    async def producer(p: int) -> None:
        i = 0
        while True:
            await committer.submit(lambda b, i=i: record_set(b, p, i))
            out.write(f"{p} {i}\n")
            out.flush()
            i += 1

    out.write("READY\n")
    out.flush()
    await asyncio.gather(*(producer(p) for p in range(producers)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
