"""The component package plugin, run as `python provider/`: a package only so that type checkers tell its
entry point from the program's `__main__.py`."""
