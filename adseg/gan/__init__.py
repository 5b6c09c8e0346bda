"""GAN modules for image synthesis, beside the segmentation schemes.

- :mod:`adseg.gan.networks`: DCGAN generator and discriminator (2-D and 3-D), the WGAN
  critic, MLPs for the ring-of-Gaussians benchmark, and the registries of all networks by name.
- :mod:`adseg.gan.pix2pix`: the U-Net generator and the PatchGAN discriminator of pix2pix.
- :mod:`adseg.gan.blocks`: what the networks share: norms, DCGAN initialisation, minibatch
  standard deviation and conditional inputs.
- :mod:`adseg.gan.settings`: the ``gan`` config section's recipes, checked (no torch import).
- :mod:`adseg.gan.data`: slices of a preprocessed cohort, scaled to the generators' [-1, 1].
- :mod:`adseg.gan.synthesis`: unconditional or domain-conditional synthesis of 2-D slices.
- :mod:`adseg.gan.sampling`: drawing slices from a synthesis generator, and their sliced
  Wasserstein distance to real slices.
- :mod:`adseg.gan.translation`: paired image-to-image translation (pix2pix), its evaluation
  on held-out patients and its application to new scans.
- :mod:`adseg.gan.toy`: the ring of 8 Gaussians, for the mode-coverage benchmark.

Every adversarial update goes through :func:`adseg.training.steps.discriminator_step` and
:func:`adseg.training.steps.generator_step`, the same two functions the segmentation schemes use.
"""
