"""The one training engine (:mod:`adseg.training.engine`) and the segmentation schemes."""
