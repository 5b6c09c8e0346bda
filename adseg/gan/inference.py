"""Using trained GAN model folders: samples from a synthesis model, the evaluation of a
translation model on its held-out patients, and translation of new scans.

A GAN model folder (``<experiment>/gan/<task>-<name>/fold_<k>/``) describes itself as a
segmentor's does: ``model.json`` (task, networks, channels, slice axis, intensity ranges,
training and held-out cases), ``plans.json`` (a translation model's: how to preprocess a new
scan's source channel) and ``checkpoint_final.pt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from adseg.data.cohort import read_channel
from adseg.data.problems import ChannelSource
from adseg.gan.data import load_volumes, scaled, unscale
from adseg.gan.job import FORMAT, FORMAT_VERSION
from adseg.geometry import Grid
from adseg.inference.inputs import (
    CHANNEL_FILE,
    InputCase,
    PredictError,
    channel_files,
    check_voxels,
    count_volumes,
    nifti_stem,
    read_summary,
    write_summary,
)
from adseg.inference.modelfolder import ModelError, fit_weights, load_weights, read_model
from adseg.inference.predict import check_writable, write_like
from adseg.io import read_json, write_image
from adseg.log import logger, progress
from adseg.preprocessing.case import Plan, preprocess_images, resample_to

PNG_MAX = 256  # samples in the PNG grid of 'adseg gan sample'


@dataclass
class GanModel:
    """One trained fold of a GAN model."""

    folder: Path
    spec: dict

    @property
    def task(self) -> str:
        return self.spec["task"]

    def generator(self, device: str | torch.device = "cpu") -> nn.Module:
        """G with its final weights, in eval mode."""
        from adseg.gan import synthesis, translation

        build = (
            synthesis.build_generator if self.task == "synthesis" else translation.build_generator
        )
        net = build(self.spec)
        path = self.folder / "checkpoint_final.pt"
        # read as data, never code; a bad file is named (ModelError, CheckpointError)
        fit_weights(net, load_weights(path, "generator")["generator"], path)
        return net.to(device).eval()


def read_gan_fold(folder: str | Path) -> GanModel:
    """Read and check one GAN fold folder.

    Raises:
        ModelError: no model.json, or one that is not a GAN model of this version.
    """
    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise ModelError(f"{folder}: not a complete GAN model folder; missing model.json")
    spec = read_json(path)
    if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: format {spec.get('format')!r} version {spec.get('format_version')!r}; "
            f"this adseg reads GAN models of format {FORMAT!r} version {FORMAT_VERSION}"
        )
    return GanModel(folder, spec)


def read_gan_model(folder: str | Path, task: str, folds: list[int] | None = None) -> list:
    """The chosen (default: all) folds of a GAN model folder, all of ``task``.

    Raises:
        ModelError: a fold of another task.
    """
    models = read_model(folder, folds, read_gan_fold)
    for m in models:
        if m.task != task:
            raise ModelError(f"{m.folder}: a {m.task} model; this command needs a {task} model")
    return models


def sample_slices(
    model: GanModel, n: int, seed: int, label: str | None, device
) -> tuple[torch.Tensor, list[str] | None]:
    """``n`` slices ``(n, S, S)`` from a synthesis model, in [-1, 1], and their classes.

    Args:
        label: the class to draw (a conditional model: a scanner domain); None draws the
            classes in turn.

    Raises:
        ValueError: a class the model does not know, or one given to an unconditional model.
    """
    spec = model.spec
    classes = spec["classes"]
    if label is not None and not classes:
        raise ValueError(f"{model.folder}: an unconditional model; it takes no class")
    if label is not None and label not in classes:
        raise ValueError(f"class {label!r} unknown to {model.folder}; it knows {classes}")
    from adseg.gan.sampling import generate

    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, spec["latent_dim"], generator=rng)
    k = len(classes or [])
    y = torch.full((n,), classes.index(label)) if label else torch.arange(n) % max(k, 1)
    out = generate(model.generator(device), z, y, k, device)[:, 0]
    return out, ([classes[int(i)] for i in y] if k else None)


def write_samples(
    model_dir: str | Path,
    n: int,
    out: str | Path,
    seed: int = 0,
    label: str | None = None,
    fold: int | None = None,
    device: str = "auto",
    formats: tuple[str, ...] = ("nifti", "png"),
) -> list[Path]:
    """``adseg gan sample``: ``n`` samples of a synthesis model as NIfTI slices (in the
    preprocessed intensity units, on the preprocessed voxel grid) and a PNG grid of the first
    :data:`PNG_MAX`. Sample files of an earlier, larger draw into ``out`` are removed."""
    from adseg.gan.plots import image_grid
    from adseg.training.engine import pick_device

    models = read_gan_model(model_dir, "synthesis", None if fold is None else [fold])
    model = models[0]
    if len(models) > 1:
        logger.info("%s has %d folds; sampling fold %d", model_dir, len(models), model.spec["fold"])
    images, captions = sample_slices(model, n, seed, label, pick_device(device, "--device"))
    out = Path(out)
    check_writable(out)
    for old in out.glob("sample_*.nii.gz"):
        old.unlink()
    written = []
    if "nifti" in formats:
        lo, hi = model.spec["intensity"][0]
        for i, image in enumerate(images.numpy()):
            path = out / f"sample_{i:04d}.nii.gz"
            write_image(_slice_image(unscale(image, lo, hi), model.spec), path)
            written.append(path)
    if "png" in formats:
        path = out / "samples.png"
        shown = min(n, PNG_MAX)
        title = (
            f"{model.spec['name']} fold {model.spec['fold']}: {shown} of {n} samples, seed {seed}"
        )
        if n > PNG_MAX:
            logger.info("samples.png shows the first %d of %d samples", PNG_MAX, n)
        image_grid(images[:PNG_MAX], path, title, captions and captions[:PNG_MAX])
        written.append(path)
    return written


def _slice_image(image: np.ndarray, spec: dict) -> sitk.Image:
    """A 2-D slice ``(A, B)`` as a one-voxel-thick 3-D image on the preprocessed spacing and
    direction, thick along the slice axis."""
    volume = np.expand_dims(image.astype(np.float32), spec["slice_axis"])  # (X, Y, Z)
    out = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    out.SetSpacing(spec["grid"]["spacing"])
    out.SetDirection(spec["grid"]["direction"])
    return out


def evaluate_translation(
    fold_dir: str | Path, preprocessed: str | Path, device: str = "auto", show: bool = True
) -> list[dict]:
    """Per held-out case of a translation fold: MAE, PSNR and SSIM of the generated against
    the real target channel, on the [-1, 1] scale of the training intensity range, the real
    unclipped (MONAI metrics); also draws ``examples.png`` in the fold folder."""
    from adseg.gan.translation import examples, held_out_pair, image_metrics, translate
    from adseg.training.engine import pick_device

    model = read_gan_model(fold_dir, "translation")[0]
    spec, preprocessed = model.spec, Path(preprocessed)
    dev = pick_device(device, "gan.device")
    gen = model.generator(dev)
    cases = read_json(preprocessed / "dataset.json")["cases"]
    channels = [spec["source_index"], spec["target_index"]]
    # older model folders have no test_cases: they were tested on their validation cases
    volumes = load_volumes(preprocessed, spec.get("test_cases", spec["val_cases"]), channels)
    rows, results = [], {}
    for case_id, volume in progress(list(volumes.items()), "evaluate", enabled=show):
        v = held_out_pair(volume, spec["intensity"])
        fake = translate([gen], v[:1], spec, dev)
        results[case_id] = (v, fake)
        meta = cases[case_id]
        rows.append(
            {
                "case_id": case_id,
                "patient_id": meta["patient_id"],
                "domain": meta.get("domain", ""),
                "fold": spec["fold"],
                "model": spec["name"],
                **image_metrics(fake, v[1:], spec["slice_axis"]),
            }
        )
    title = f"{spec['name']} fold {spec['fold']}: held-out patients"
    examples(results, spec, model.folder / "examples.png", title)
    return rows


def _source_files(inputs: list[Path], index: int) -> list[tuple[str, ChannelSource]]:
    """(case id, source channel) of each input: from a folder in nnU-Net naming (the file of
    channel ``index``, or volume ``index`` of a 4-D ``_0000`` file), or the given files."""
    if len(inputs) == 1 and inputs[0].is_dir():
        groups = channel_files(inputs[0])
        return [_source_of(case, files, index) for case, files in groups.items()]
    out = []
    for path in inputs:
        stem = nifti_stem(path)
        match = CHANNEL_FILE.match(stem)
        volumes = count_volumes(path)
        if volumes > 1 and volumes <= index:
            raise PredictError(f"{path}: {volumes} volumes; the source channel is volume {index}")
        case = match["case"] if match else stem
        out.append((case, ChannelSource(path, None if volumes == 1 else index)))
    return out


def _source_of(case: str, files: dict[int, Path], index: int) -> tuple[str, ChannelSource]:
    if index in files and count_volumes(files[index]) == 1:
        return case, ChannelSource(files[index], None)
    if 0 in files and count_volumes(files[0]) > index:
        return case, ChannelSource(files[0], index)
    raise PredictError(
        f"case {case!r}: no file {case}_{index:04d}.nii.gz (the source channel) and no 4-D "
        f"{case}_0000.nii.gz with a volume {index}"
    )


def translate_case(models, gens, source: ChannelSource, device) -> tuple[sitk.Image, sitk.Image]:
    """A scan's source channel and the folds' mean translation of it, on the scan's own grid
    in the target channel's preprocessed units (0 outside the preprocessed crop)."""
    from adseg.gan.translation import translate

    image = read_channel(source)
    plan = Plan.from_dict(models[0].spec["plan"])
    images, _, record = preprocess_images([image], None, plan, statistics=False)
    arr = sitk.GetArrayFromImage(images[0]).transpose(2, 1, 0)[None]
    total = np.zeros(arr.shape[1:], np.float32)
    for model, gen in zip(models, gens, strict=True):
        src_range, tgt_range = model.spec["intensity"]
        fake = translate([gen], scaled(arr, [src_range]), model.spec, device)
        total += unscale(fake[0], *tgt_range)
    final = Grid.from_dict(record["final_grid"])
    mean = final.image(np.ascontiguousarray((total / len(gens)).transpose(2, 1, 0)))
    return image, resample_to(mean, Grid.of(image), default=0.0)


def _checked_sources(
    models: list[GanModel], inputs: list[Path], out: Path
) -> list[tuple[str, ChannelSource]]:
    """The source channel of each input case, once the folds, the inputs and the output
    folder are checked.

    Raises:
        PredictError: folds that differ, a case given twice, bad voxels, an output folder that
            is an input folder or not writable.
    """
    first = models[0].spec
    for m in models[1:]:
        for key in ("source", "target", "plan", "slice_axis"):
            if m.spec[key] != first[key]:
                raise PredictError(f"{m.folder}: {key} differs from {models[0].folder}")
    sources = _source_files(inputs, first["source_index"])
    ids = [case for case, _ in sources]
    if len(set(ids)) != len(ids):
        raise PredictError(f"case ids given twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    for case, src in sources:
        check_voxels(InputCase(case, [src]))
    given = {p.resolve() for p in inputs if p.is_dir()}
    if out.resolve() in given:
        raise PredictError(
            f"{out}: the output folder is the input folder; the synthetic "
            f"{first['target']} files would sit beside (or replace) the real channel files. "
            "Choose another output folder"
        )
    check_writable(out)
    return sources


def translate_scans(
    inputs: list[str | Path],
    out: str | Path,
    model_dir: str | Path,
    folds: list[int] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    show: bool = True,
) -> Path:
    """``adseg gan translate``: the target channel of each new scan, from its source channel,
    written as ``<case>_<target index:04d>.nii.gz`` with the source file's own header (so the
    output folder completes an nnU-Net raw folder). Returns the per-case summary CSV.

    Raises:
        PredictError, ModelError: bad input, found before any case is processed.
    """
    from adseg.training.engine import pick_device

    models = read_gan_model(model_dir, "translation", folds)
    first = models[0].spec
    out = Path(out)
    dev = pick_device(device, "--device")
    gens = [m.generator(dev) for m in models]  # a bad checkpoint stops before out is made
    sources = _checked_sources(models, [Path(p) for p in inputs], out)
    summary = out / "translations.csv"
    rows = read_summary(summary)
    name = "{}_" + f"{first['target_index']:04d}.nii.gz"
    todo = [(c, s) for c, s in sources if overwrite or not (out / name.format(c)).is_file()]
    for case, src in progress(todo, "translate", enabled=show):
        t0 = time.perf_counter()
        _, synthetic = translate_case(models, gens, src, dev)
        path = out / name.format(case)
        write_like(src.path, sitk.GetArrayFromImage(synthetic), path, np.float32)
        rows[case] = {
            "case_id": case,
            "source_file": str(src.path),
            "target": first["target"],
            "file": path.name,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_summary(summary, rows)
    if not summary.is_file():
        write_summary(summary, rows)
    return summary
