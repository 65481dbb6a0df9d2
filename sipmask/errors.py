"""Errors with a message meant for the user: which file or entry, and what is wrong with it."""


class SipMaskError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ImageReadError(SipMaskError):
    """An image file is missing, empty, corrupt or not an image."""


class AnnotationError(SipMaskError):
    """An annotation file is not valid COCO / YouTube-VIS, or an entry in it is unusable."""


class CheckpointError(SipMaskError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class ConfigError(SipMaskError):
    """An unknown preset or an invalid config value."""


class ResultsError(SipMaskError):
    """A results file (detections or tracks) is malformed or names unknown videos/images/categories."""
