"""ADDA (Tzeng et al. 2017): adapting a segmentor across scanner domains without target labels."""
