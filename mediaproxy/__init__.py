"""mediaproxy: a media delivery origin for Kaltura-style thumbnail, flvclipper and raw URLs."""

__version__ = "0.1.0"
