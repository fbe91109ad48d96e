"""transferkit's version, on the bottom floor so that any module can name it."""

__version__ = "0.1.0"
