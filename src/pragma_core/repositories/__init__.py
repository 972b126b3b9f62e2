"""The repositories that ship with core: ``local``, ``http`` and ``cloudfront``."""
