import os

# The lock rule's debug check (segops_fast/_locks.py) is decided when segops_fast is first
# imported: set before conftest imports it. Servers started by the tests inherit it.
os.environ.setdefault("SEGOPS_FAST_DEBUG_LOCKS", "1")
