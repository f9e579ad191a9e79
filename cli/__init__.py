"""FusionLab's command line, a front end above :mod:`fusion` and :mod:`analysis` as the app's ``pages`` and ``ui`` are:
:func:`cli.main.main` parses a command, calls the library and prints its summary (text, or one JSON object)."""
