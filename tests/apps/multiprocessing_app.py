"""A script whose client is a module-level global, used from multiprocessing workers.

``python multiprocessing_app.py METHOD TASKS EVENTS`` runs TASKS tasks, each tracking
EVENTS events, on four worker processes (recycled every two tasks where the API allows),
with METHOD one of fork, forkserver, spawn (``multiprocessing.Pool``) or executor
(``concurrent.futures.ProcessPoolExecutor`` on fork). The parent tracks 5 events of its
own before the workers start. Nobody calls flush(): every process relies on the client
delivering at exit.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import segops_fast as segops

client = segops.SegOpsClient(os.environ["SEGOPS_TEST_API_URL"], "sk_test_local", flush_interval=60)


def run_task(task: int, events: int) -> int:
    for index in range(events):
        client.track(user_id=f"task-{task}", event_type="task_step", payload={"i": index})
    return os.getpid()


def main(method: str, tasks: int, events: int) -> None:
    for index in range(5):
        client.track(user_id="parent", event_type="parent_started", payload={"i": index})
    arguments = [(task, events) for task in range(tasks)]
    if method == "executor":
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(4, mp_context=context) as executor:
            pids = list(executor.map(run_task, *zip(*arguments)))
    else:
        pool = multiprocessing.get_context(method).Pool(4, maxtasksperchild=2)
        pids = pool.starmap(run_task, arguments, chunksize=1)
        # close() and join() let workers end normally; terminate() would kill them.
        pool.close()
        pool.join()
    print(len(set(pids)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
