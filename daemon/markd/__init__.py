"""markd: Честный ЗНАК marking-code checks for Linux fiscal terminals and kiosks."""

__version__ = "0.1.0"
