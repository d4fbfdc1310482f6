# Functions for a Vulkan build of llama.cpp on Debian, sourced after common.sh by
# build-vulkan.sh and test.sh:
#   vulkan_toolchain  the packages a Vulkan build needs, and newer headers when the system's
#                     are too old (exported on the include path of every later compile)
#   use_lavapipe      point the Vulkan loader at Mesa's lavapipe (a software Vulkan device) and
#                     name it to ggml-vulkan, which skips CPU-type devices unless named
#
# Debian 12's Vulkan headers (1.3.239) are older than llama.cpp's Vulkan code wants (measured:
# ggml-vulkan.cpp fails on `vk::LayerSettingEXT`, VK_EXT_layer_settings); when the system's
# headers are older than 1.3.275 (or VULKAN_HEADERS=newer), the next Debian release's
# libvulkan-dev (1.4.309) is unpacked — not installed — into a prefix in the cache and put
# first on the include path. Its glslc and loader stay the system's.
#
# Debian 12's lavapipe (Mesa 22.3) crashes (SIGSEGV in its queue thread, during a verification
# decode) in most runs of the fidelity test; when the system's Mesa is older than 24 (or
# LAVAPIPE=backports), Mesa 25 from the release's backports is unpacked into the cache the same
# way and only the lavapipe check uses it (VK_ICD_FILENAMES, LD_LIBRARY_PATH).

CACHE="${SPECRUN_CACHE:-$HOME/.cache/specrun}"
PREFIX="$CACHE/vulkan-headers"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

CODENAME="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"

# debian_mirror: the mirror this system's apt already uses for its own release
debian_mirror() {
    local mirror
    mirror="$(apt-cache policy 2>/dev/null | awk -v s="$CODENAME/main" '$3 == s { print $2; exit }')"
    [ -n "$mirror" ] || { echo "error: no Debian mirror for $CODENAME/main in apt's sources" >&2; exit 1; }
    echo "$mirror"
}

# unpack_from SUITE PREFIX PACKAGE...: download the packages of another suite of the same
# mirror into a private apt dir and unpack them (dpkg -x) into PREFIX; nothing is installed
unpack_from() {
    local suite="$1" prefix="$2"
    shift 2
    local apt_dir="$CACHE/apt-$suite"
    rm -rf "$apt_dir/debs"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$prefix"
    echo "deb $(debian_mirror) $suite main" >"$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "APT::Get::List-Cleanup=0")
    $sudo apt-get "${opts[@]}" update -qq
    (cd "$apt_dir/debs" && apt-get "${opts[@]}" download "$@")
    for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$prefix"; done
}

newer_headers() {
    # the next Debian release's headers, unpacked (not installed) into $PREFIX
    [ -e "$PREFIX/usr/include/vulkan/vulkan_core.h" ] && return 0
    unpack_from trixie "$PREFIX" libvulkan-dev
    say "newer Vulkan headers: $(grep -m1 '#define VK_HEADER_VERSION ' "$PREFIX/usr/include/vulkan/vulkan_core.h" | awk '{print $3}') in $PREFIX"
}

# use_lavapipe: point the Vulkan loader at lavapipe only — the system's, or Mesa from the
# release's backports when the system's is older than 24
use_lavapipe() {
    local mesa
    mesa="$(dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null | sed 's/^[0-9]*://; s/\..*//')"
    if [ "${LAVAPIPE:-auto}" = backports ] || { [ "${LAVAPIPE:-auto}" = auto ] && [ "${mesa:-0}" -lt 24 ]; }; then
        local prefix="$CACHE/mesa-backports" lib
        lib="$prefix/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
        if [ ! -e "$lib/libvulkan_lvp.so" ]; then
            say "system Mesa $mesa: unpacking Mesa from $CODENAME-backports into $prefix"
            unpack_from "$CODENAME-backports" "$prefix" mesa-vulkan-drivers libdrm2 libdrm-amdgpu1
        fi
        sed "s#\"libvulkan_lvp.so\"#\"$lib/libvulkan_lvp.so\"#" "$prefix"/usr/share/vulkan/icd.d/lvp_icd*.json >"$prefix/lvp_icd.json"
        export VK_ICD_FILENAMES="$prefix/lvp_icd.json" LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        say "lavapipe: Mesa $(dpkg-deb -f "$CACHE/apt-$CODENAME-backports"/debs/mesa-vulkan-drivers_*.deb Version 2>/dev/null || echo "from $prefix")"
    else
        export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -1)}"
        say "lavapipe: system Mesa $mesa"
    fi
    # lavapipe is a CPU-type Vulkan device, which ggml-vulkan skips unless it is named
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
}

vulkan_toolchain() {
    local pkgs=(libvulkan-dev glslc spirv-headers mesa-vulkan-drivers vulkan-tools) missing=() p
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    local system_headers
    system_headers="$(grep -m1 '#define VK_HEADER_VERSION ' /usr/include/vulkan/vulkan_core.h | awk '{print $3}')"
    say "Vulkan headers: $system_headers (system), glslc $(glslc --version | head -1)"
    if [ "${VULKAN_HEADERS:-auto}" = newer ] || { [ "${VULKAN_HEADERS:-auto}" = auto ] && [ "$system_headers" -lt 275 ]; }; then
        newer_headers
        export CPATH="$PREFIX/usr/include${CPATH:+:$CPATH}" CXXFLAGS="-I$PREFIX/usr/include ${CXXFLAGS:-}"
    fi
}
