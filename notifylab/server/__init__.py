"""One server instance: aiohttp + python-socketio.

``services`` holds the instance's parts and the actions a user can take;
``http`` (REST) and ``sockets`` (Socket.IO events) both call them; ``feed``
delivers each user's notifications to the sockets here; ``app`` assembles
the instance and runs its lifetime; ``metrics`` is what ``/metrics`` shows.
"""
