#!/usr/bin/env bash
# Build stable-diffusion.cpp (the CPU anchor of docs/bench/memory.md) from its sources: the
# pinned commit of leejet/stable-diffusion.cpp and of its ggml submodule, CMake Release, the
# native instruction set of this machine, CPU backend only, no WebP/WebM (not needed to time).
#
#     tools/build_sdcpp.sh [OUT_DIR]          # default out/sdcpp; the binary is OUT_DIR/build/bin/sd-cli
#
# Sources: SDCPP_GIT / GGML_GIT name local git directories holding the commits (a mirror or a
# clone); without them the script clones from GitHub. Needs cmake, a C++17 compiler, make.
set -euo pipefail

SDCPP_COMMIT=97d2990807fe6d558e395f8764198d7c7e7b411c
GGML_COMMIT=8e800cef2948046cc47f9db6090491c6128ca42c
OUT=${1:-out/sdcpp}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# the prefix of the array a vocabulary header defines: t5.hpp -> t5_tokenizer, qwen_merges.hpp -> qwen2_merges
vocab_prefix() {
    local stem
    stem=$(basename "$1" .hpp)
    case $stem in
    t5 | umt5) echo "${stem}_tokenizer" ;;
    qwen_merges) echo "qwen2_merges" ;;
    *) echo "$stem" ;;
    esac
}

fetch() { # name url commit git_dir_or_empty dest
    local git_dir=$4 missing=()
    if [[ -z $git_dir ]]; then
        git_dir="$OUT/$1.git"
        [[ -d $git_dir ]] || git clone --quiet --bare "$2" "$git_dir"
    fi
    # a partial mirror may lack its largest files: sample media, and stable-diffusion.cpp's
    # generated tokenizer vocabularies of T5, Gemma, Qwen, Mistral (multi-MB headers)
    while read -r _ type hash path; do
        [[ $type == blob ]] && ! git --git-dir "$git_dir" cat-file -e "$hash" 2>/dev/null && missing+=("$path")
    done < <(git --git-dir "$git_dir" ls-tree -r "$3")
    rm -rf "$5" && mkdir -p "$5"
    git --git-dir "$git_dir" archive "$3" -- . "${missing[@]/#/:(exclude)}" | tar -x -C "$5"
    for path in "${missing[@]}"; do
        case $path in
        src/tokenizers/vocab/*.hpp)
            # an empty vocabulary under the array's own name: only the models using that
            # tokenizer lose it (none of the UNets timed here; CLIP's vocabulary is present)
            local array
            array=$(grep -o "[a-z0-9_]*_str" <(git --git-dir "$git_dir" show "$3:src/tokenizers/vocab/vocab.cpp") | grep -m1 "^$(vocab_prefix "$path")")
            echo "static const unsigned char ${array}[] = {0};" > "$5/$path"
            echo "warning: $1 lacks $path; wrote an empty $array" >&2 ;;
        assets/* | docs/*) ;;
        *) echo "error: $1's source lacks $path" >&2; exit 1 ;;
        esac
    done
}

fetch stable-diffusion.cpp https://github.com/leejet/stable-diffusion.cpp "$SDCPP_COMMIT" "${SDCPP_GIT:-}" "$OUT/src"
fetch ggml https://github.com/leejet/ggml "$GGML_COMMIT" "${GGML_GIT:-}" "$OUT/src/ggml"

cmake -S "$OUT/src" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DSD_WEBP=OFF -DSD_WEBM=OFF > "$OUT/cmake.log"
cmake --build "$OUT/build" --config Release -j "$(nproc)" --target sd-cli > "$OUT/build.log" 2>&1
ls -l "$OUT/build/bin/"
