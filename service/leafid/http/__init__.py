"""leafid's HTTP identification service (FastAPI) and its upload page.

Needs the ``service`` extra (``pip install 'leafid[service]'``). Importing this
package itself is cheap; its modules but ``commands``, ``loadtest`` and ``settings``
pull in FastAPI.
"""
