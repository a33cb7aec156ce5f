"""Synthetic radiograph files in the real datasets' layouts, for tests and for measuring builder throughput.

No real patient data ships with chexone; these files have the *formats* of the real ones (12-bit DICOMs with windows
and MONOCHROME1/2, PNG/JPEG exports, the VinDr-CXR annotation CSV) and obviously fake content.

Throughput benchmark (the numbers in docs/benchmarks.md)::

    python -m webdata.synthetic vindr --out /tmp/vindr-bench --images 200 --size 2048x2500
    python -m webdata.build vindr-cxr --input /tmp/vindr-bench/annotations_train.csv \\
        --images /tmp/vindr-bench/train --out /tmp/vindr-bench/shards --workers 2

The build prints images/s and records it in the manifest (``timing.images_per_s``). For JPEGs::

    python -m webdata.synthetic mimic --out /tmp/mimic-bench --studies 100
    python -m webdata.build mimic-cxr --input /tmp/mimic-bench --out /tmp/mimic-bench/shards --split train \\
        --views frontal+lateral --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image


def phantom(width: int, height: int, *, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A chest-X-ray-like uint16 image (body ellipse, two darker lung fields, noise) using ``bits`` bits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    body = ((x - cx) / (0.45 * width)) ** 2 + ((y - cy) / (0.48 * height)) ** 2 < 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        dx, dy = (x - cx - side * 0.18 * width) / (0.13 * width), (y - 0.45 * height) / (0.3 * height)
        lungs |= dx**2 + dy**2 < 1
    top = (1 << bits) - 1
    img = np.full((height, width), 0.05, np.float32)
    img[body] = 0.7
    img[lungs] = 0.25
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img * top, 0, top).astype(np.uint16)


def write_dicom(path: str | os.PathLike, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int = 12, window: tuple[float, float] | None = None, rescale: tuple[float, float] | None
                = None, patient_name: str = "SYNTHETIC^PATIENT", patient_id: str = "SYN-0001",
                extra: dict | None = None) -> Path:
    """Write a minimal, valid uncompressed DICOM (Explicit VR Little Endian, Digital X-Ray class) of ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19000101"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """8-bit (uint8) or 16-bit (uint16) grayscale PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.dtype == np.uint16:
        Image.fromarray(pixels.astype(np.int32), mode="I").convert("I;16").save(path)
    else:
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def write_jpeg(path: str | os.PathLike, pixels: np.ndarray, quality: int = 95) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path, quality=quality)
    return path


VINDR_CLASSES = ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Pleural thickening", "Nodule/Mass",
                 "Lung Opacity", "Pulmonary fibrosis"]


def vindr_dataset(out: str | os.PathLike, *, images: int, size: tuple[int, int] = (2048, 2500), seed: int = 0
                  ) -> Path:
    """VinDr-CXR layout: ``out/annotations_train.csv`` (3 radiologists, 0-3 findings per image, some "No finding")
    and ``out/train/<image_id>.dicom`` (12-bit, half MONOCHROME1, windowed). Returns the CSV path."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    w, h = size
    base = phantom(w, h, seed=seed)
    rows = []
    for i in range(images):
        image_id = f"{i:032x}"
        mono1 = i % 2 == 1
        pixels = ((1 << 12) - 1 - base) if mono1 else base
        write_dicom(out / "train" / f"{image_id}.dicom", pixels, photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                    window=(2048, 4096), patient_id=f"SYN-{i:05d}")
        n = int(rng.integers(0, 4))
        for rad in ("R8", "R9", "R10"):
            if n == 0:
                rows.append([image_id, "No finding", "14", rad, "", "", "", ""])
            for k in range(n):
                x1, y1 = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.6) * h
                rows.append([image_id, VINDR_CLASSES[(i + k) % len(VINDR_CLASSES)], str((i + k) % 14), rad,
                             f"{x1:.1f}", f"{y1:.1f}", f"{x1 + 0.2 * w:.1f}", f"{y1 + 0.15 * h:.1f}"])
    csv_path = out / "annotations_train.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        writer.writerows(rows)
    return csv_path


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old with cough, evaluate for pneumonia.

 COMPARISON:  ___.

 FINDINGS:

 Synthetic study {k}. The lungs are clear without focal consolidation. No pleural effusion or pneumothorax.
 The cardiomediastinal silhouette is within normal limits.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def mimic_dataset(out: str | os.PathLike, *, studies: int, size: tuple[int, int] = (2544, 3056), seed: int = 0
                  ) -> Path:
    """MIMIC-CXR-JPG layout: metadata and split CSVs (all train), reports ``files/pXX/pSUBJECT/sSTUDY.txt`` and one
    PA plus one LATERAL JPEG per study (``size`` is the PA's width x height). Returns ``out``."""
    import gzip

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = size
    pa = phantom(w, h, bits=8, seed=seed).astype(np.uint8)
    lat = phantom(h, w, bits=8, seed=seed + 1).astype(np.uint8)
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
            "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning"]
    split = ["dicom_id,study_id,subject_id,split"]
    for k in range(studies):
        subject, study = f"{10000000 + k // 2}", f"{50000000 + k}"
        folder = out / "files" / f"p{subject[:2]}" / f"p{subject}"
        for view, arr in (("PA", pa), ("LATERAL", lat)):
            dicom = f"{k:08x}-{view.lower()}"
            write_jpeg(folder / f"s{study}" / f"{dicom}.jpg", arr)
            meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},{arr.shape[0]},{arr.shape[1]},"
                        f"2180010{1 + k % 2},120000,CHEST (PA AND LAT),postero-anterior,Erect")
            split.append(f"{dicom},{study},{subject},train")
        (folder / f"s{study}.txt").write_text(MIMIC_REPORT.format(k=k))
    for name, lines in (("mimic-cxr-2.0.0-metadata.csv.gz", meta), ("mimic-cxr-2.0.0-split.csv.gz", split)):
        with gzip.open(out / name, "wt") as f:
            f.write("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webdata.synthetic", description="Write synthetic dataset files.")
    sub = p.add_subparsers(dest="kind", required=True)
    v = sub.add_parser("vindr", help="VinDr-CXR layout with 12-bit DICOMs")
    v.add_argument("--out", required=True)
    v.add_argument("--images", type=int, default=200)
    v.add_argument("--size", default="2048x2500", help="WIDTHxHEIGHT of each DICOM")
    v.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("mimic", help="MIMIC-CXR-JPG layout (PA + lateral JPEG per study, reports, split)")
    m.add_argument("--out", required=True)
    m.add_argument("--studies", type=int, default=100)
    m.add_argument("--size", default="2544x3056", help="WIDTHxHEIGHT of the PA image")
    m.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))
    if args.kind == "vindr":
        csv_path = vindr_dataset(args.out, images=args.images, size=(w, h), seed=args.seed)
        print(f"wrote {args.images} DICOMs ({w}x{h}, 12-bit) and {csv_path}")
    else:
        mimic_dataset(args.out, studies=args.studies, size=(w, h), seed=args.seed)
        print(f"wrote {args.studies} studies ({2 * args.studies} JPEGs, {w}x{h} PA + lateral) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
