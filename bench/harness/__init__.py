"""What bench/'s scripts share; the scripts import this package and never each other.

- :mod:`.app_servers`: the real app servers the app benchmarks run (through the shared
  harness in ``segops_fast.testing._app_servers``);
- :mod:`.clients`: the compared clients behind one adapter each;
- :mod:`.load`: load windows on app servers, taken in turns;
- :mod:`.placement`: which CPUs the server and the clients run on;
- :mod:`.proc_usage`: CPU time and context switches read from ``/proc``;
- :mod:`.results`: the one writer of ``bench/results/``;
- :mod:`.timing`: timing each call of a client's track();
- :mod:`.wrk`: running wrk and reading its report.
"""
