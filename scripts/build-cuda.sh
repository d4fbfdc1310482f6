#!/usr/bin/env bash
# Build specrun with CUDA offload on a machine that has no CUDA toolkit (and no GPU): nvcc, the
# CUDA runtime and cuBLAS come from NVIDIA's wheels on PyPI, installed into a prefix in the
# cache and laid out as a toolkit root that CMake's FindCUDAToolkit accepts.
#
# Usage: scripts/build-cuda.sh
#   CUDA_ARCH   CMake CUDA architectures (default "75;86;89": Turing, Ampere and Ada consumer
#               cards; CUDA_ARCH=90 builds for one, e.g. an H100)
#   CUDA_SERIES cu13 (default) or cu12: which wheel series. Measured: the cu12 series'
#               nvidia-cuda-nvcc-cu12 wheel carries only ptxas and libnvvm (no nvcc driver, no
#               cicc), so it cannot compile; the CUDA 13 wheels carry the whole compiler.
# Output: the binary and its shared libraries in $SPECRUN_CUDA_TARGET_DIR (default
# ~/.cache/specrun/target-cuda)/release, and a summary (time, size, linked libraries).
#
# Decisions: the build uses llama.cpp's shared libraries (LLAMA_BUILD_SHARED_LIBS=1; the wheels
# carry no static cuBLAS) and `--features cuda-no-vmm` (no driver library at link time: the
# wheels carry no libcuda stub). At run time the CUDA runtime and cuBLAS must be on the loader
# path (the wheel prefix printed below, or the system's CUDA); the driver comes with the GPU.
source "$(dirname "$0")/common.sh"
ensure_system_packages

CUDA_ARCH="${CUDA_ARCH:-75;86;89}"
CUDA_SERIES="${CUDA_SERIES:-cu13}"
CACHE="${SPECRUN_CACHE:-$HOME/.cache/specrun}"
WHEELS="$CACHE/cuda-wheels-$CUDA_SERIES"
TOOLKIT="$CACHE/cuda-toolkit-$CUDA_SERIES"
export CARGO_TARGET_DIR="${SPECRUN_CUDA_TARGET_DIR:-$CACHE/target-cuda}"

case "$CUDA_SERIES" in
    cu12) pkgs=(nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-cuda-cccl-cu12 nvidia-cuda-nvrtc-cu12) ;;
    cu13) pkgs=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cublas nvidia-cuda-cccl nvidia-cuda-crt nvidia-nvvm) ;;
    *) echo "error: CUDA_SERIES must be cu12 or cu13, got $CUDA_SERIES" >&2; exit 2 ;;
esac

if [ ! -d "$WHEELS/nvidia" ]; then
    say "installing the CUDA toolkit wheels (${pkgs[*]}) into $WHEELS"
    python3 -m pip install --quiet --no-deps --target "$WHEELS" "${pkgs[@]}"
fi

# One toolkit root: bin/, include/, lib64/ (with the unversioned .so names the linker wants),
# nvvm/ — symlinks into the wheels.
say "laying out a toolkit root in $TOOLKIT"
rm -rf "$TOOLKIT"
mkdir -p "$TOOLKIT/bin" "$TOOLKIT/include" "$TOOLKIT/lib64"
for d in "$WHEELS"/nvidia/*/; do
    [ -d "$d" ] || continue
    [ -d "$d/bin" ] && for f in "$d"/bin/*; do ln -sf "$f" "$TOOLKIT/bin/"; done
    [ -d "$d/include" ] && for f in "$d"/include/*; do [ -e "$TOOLKIT/include/$(basename "$f")" ] || ln -s "$f" "$TOOLKIT/include/"; done
    for lib in "$d"/lib/*.so* "$d"/lib64/*.so*; do
        [ -e "$lib" ] || continue
        ln -sf "$lib" "$TOOLKIT/lib64/"
        base="$(basename "$lib")"
        ln -sf "$lib" "$TOOLKIT/lib64/${base%%.so*}.so"
    done
    # static parts nvcc links by default (libcudadevrt.a, libcudart_static.a)
    for lib in "$d"/lib/*.a "$d"/lib64/*.a; do
        [ -e "$lib" ] && ln -sf "$lib" "$TOOLKIT/lib64/"
    done
    [ -d "$d/nvvm" ] && [ ! -e "$TOOLKIT/nvvm" ] && ln -s "$d/nvvm" "$TOOLKIT/nvvm"
done
ln -sfn lib64 "$TOOLKIT/lib"
chmod +x "$WHEELS"/nvidia/*/bin/* 2>/dev/null || true
[ -x "$TOOLKIT/bin/nvcc" ] || { echo "error: no nvcc in the wheels (looked in $WHEELS/nvidia/*/bin)" >&2; exit 1; }
"$TOOLKIT/bin/nvcc" --version | tail -2

export CUDA_PATH="$TOOLKIT" CUDAToolkit_ROOT="$TOOLKIT" CUDACXX="$TOOLKIT/bin/nvcc"
export CMAKE_CUDA_COMPILER="$TOOLKIT/bin/nvcc" CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"
export LLAMA_BUILD_SHARED_LIBS=1
export LIBRARY_PATH="$TOOLKIT/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$TOOLKIT/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "building specrun --features cuda-no-vmm for CUDA architectures $CUDA_ARCH into $CARGO_TARGET_DIR (long: every CUDA kernel is compiled)"
start=$(date +%s)
cargo build --release --locked --features cuda-no-vmm
secs=$(( $(date +%s) - start ))
BIN="$CARGO_TARGET_DIR/release/specrun"
# llama.cpp's shared libraries go next to the binary, which finds them there ($ORIGIN rpath)
LIBDIR="$(dirname "$(ls -t "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/lib/libllama.so 2>/dev/null | head -1)")"
[ -e "$LIBDIR/libllama.so" ] || { echo "error: no libllama.so under $CARGO_TARGET_DIR/release/build" >&2; exit 1; }
cp -P "$LIBDIR"/lib*.so* "$CARGO_TARGET_DIR/release/"
if ! command -v patchelf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq patchelf >/dev/null 2>&1 || true
fi
if command -v patchelf >/dev/null; then
    # DT_RPATH (--force-rpath) also serves the libraries' own dependencies
    patchelf --force-rpath --set-rpath '$ORIGIN' "$BIN"
    for lib in "$CARGO_TARGET_DIR"/release/lib*.so.*.*; do patchelf --force-rpath --set-rpath '$ORIGIN' "$lib"; done
else
    echo "note: no patchelf: run the binary with LD_LIBRARY_PATH=$CARGO_TARGET_DIR/release" >&2
fi
echo "built in ${secs} s: $BIN ($(du -h "$BIN" | cut -f1))"
for lib in "$CARGO_TARGET_DIR"/release/lib*.so.*.*; do
    [ -e "$lib" ] && echo "  $(basename "$lib") $(du -h "$lib" | cut -f1)"
done
echo "linked libraries (the CUDA runtime and cuBLAS from the wheels here; on a GPU machine, its CUDA 13 libraries):"
LD_LIBRARY_PATH="$TOOLKIT/lib64" ldd "$BIN" "$CARGO_TARGET_DIR/release/libggml-cuda.so.0" | sed 's/^/  /'
echo "run it with: LD_LIBRARY_PATH=$TOOLKIT/lib64 $BIN devices"
