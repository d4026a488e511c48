"""Redis: everything notifylab keeps.

``connect`` opens the client; then one class a kind of record: ``accounts``,
``sessions`` (login sessions), ``presence`` (live sockets and instance
heartbeats), ``operations`` (records and their state machine) and ``inbox``
(each user's notification stream). Only the server and the worker import
this package; the kernel side (``notifylab.lab``) reads Redis on its own.
"""
