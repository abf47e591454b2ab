"""The minimal web apps that ``bench/app_overhead.py`` serves: a WSGI app (gunicorn) and an
ASGI app (uvicorn), each tracking events per request through the client of one row.

They are run by the servers as ``apps.wsgi:application`` and ``apps.asgi:application``
with ``bench/`` on ``sys.path``; :mod:`apps.tracking` reads the environment they are
started with.
"""
