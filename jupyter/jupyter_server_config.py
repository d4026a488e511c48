"""Jupyter server config for the notifylab kit (``notifylab kit``, ``make up``).

The kit does not pass this file with ``--config`` (that would replace the
usual search for config files, and skip the ``jupyter_server_config.d``
snippets that enable jupyter-server-proxy): it puts this folder first on
``JUPYTER_CONFIG_PATH``. Your own ``~/.jupyter`` config still loads, nothing
is written there, and where both set the same option this file wins.
``labconfig/page_config.json`` beside it is found the same way.

The kit exports ``NOTIFYLAB_KIT_PORTS`` (its instances' ports, on
127.0.0.1) to this server and to every kernel it starts. Without it (plain
``jupyter lab`` next to ``notifylab up``) the ports of ``notifylab up`` are
assumed.
"""

import os

c = get_config()  # noqa: F821  (defined by traitlets when it loads this file)

PORTS = [int(p) for p in os.environ.get("NOTIFYLAB_KIT_PORTS", "8081,8082").split(",") if p.strip()]

# jupyter-server-proxy named servers: a server with a `port` and no `command`
# proxies a process that is already running (the kit started it), at
# /<name>/ on JupyterLab's own origin, behind Jupyter's login. The React
# client there is same-origin with JupyterLab, so its session cookie works in
# the tab, and it derives its Socket.IO path (/<name>/socket.io) from the
# page's location. new_browser_tab=False: the launcher opens it as a
# JupyterLab tab. The workspace (jupyter/workspace.json) opens "notifylab".
# /proxy/<port>/ reaches the same instances with no config at all.
c.ServerProxy.servers = {
    ("notifylab" if i == 0 else f"notifylab-{i + 1}"): {
        "port": port,
        "new_browser_tab": False,
        "launcher_entry": {"title": f"notifylab :{port}", "category": "notifylab"},
    }
    for i, port in enumerate(PORTS)
}

# No news feed or update check from the internet (and no "notified about
# official Jupyter news?" toast: labconfig/page_config.json disables the
# announcements plugin).
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.handlers.announcements.NeverCheckForUpdate"

# jupyter-lsp looks for language servers at start-up (running `npm prefix -g`,
# slow under load); the kit uses none.
c.LanguageServerManager.autodetect = False
