"""gunicorn settings for the app-overhead benchmark: the exit hook its clients need.

gunicorn runs ``worker_exit`` in the worker once it has stopped serving (on SIGTERM, a
graceful stop), before the interpreter exits: where a client whose documentation asks
for an explicit shutdown gets it. segops_fast's own atexit hook runs after that.
"""

from __future__ import annotations

import sys
from typing import Any

loglevel = "warning"


def worker_exit(server: Any, worker: Any) -> None:
    app = sys.modules.get("apps.wsgi")
    if app is not None:  # None: the worker stopped before it loaded the app
        app.TRACKER.shutdown_at_exit()
