"""The quota store behind one small interface (``base``): Redis for fleets (``redis``, Lua
scripts in ``lua/``), memory for one process and for the ``local`` fallback (``memory``), and
the names of every quota key (``keys``)."""
