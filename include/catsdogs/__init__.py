"""catsdogs: the stages that keep a cats-vs-dogs classifier trained, registered and served."""

__version__ = "0.1.0"
