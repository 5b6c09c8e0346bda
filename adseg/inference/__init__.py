"""New scans: the model folder, sliding-window inference and ``adseg predict``."""
