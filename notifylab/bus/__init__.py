"""RabbitMQ: how work and news travel between processes.

``broker`` connects and publishes with confirms; ``jobs`` is the durable
queue from servers to workers; ``managers`` are python-socketio client
managers that route events to the instances holding a user's sockets.
"""
