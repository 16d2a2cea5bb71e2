"""Fault injection for the Ray engine tests: a replica whose process dies on the first batch it sees.

Imported by Ray workers, so it lives in a plain module on PYTHONPATH (the test fixture puts
tests/ there). Armed by a file, so that exactly one replica process dies once in a whole run.
"""

from __future__ import annotations

import os

from animetagnet.distributed.replica import TaggerReplica

FLAG_ENV = "ANIMETAGNET_TEST_CRASH_FLAG"


class CrashOnceReplica(TaggerReplica):
    def __call__(self, batch):
        flag = os.environ.get(FLAG_ENV)
        if flag and os.path.exists(flag + ".armed"):
            try:
                fd = os.open(flag + ".fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, f"{os.getpid()} {len(batch['path'])}\n".encode())
                os.close(fd)
                os._exit(1)  # the process vanishes mid-batch, like a node lost or an OOM kill
        return super().__call__(batch)
