#!/usr/bin/env bash
# Builds cortexstream into a virtualenv, fetches the default models and starts the OpenAI- and
# Ollama-compatible REST server. Needs only Rust and python3; arguments go to the server:
#   scripts/serve.sh --port 9000 --api-key secret
# `--model NAME` with a name from `python -m cortexstream list` fetches that model too.
# The virtualenv, the models and the cargo target folder live under $CORTEXSTREAM_CACHE
# (default ~/.cache/cortexstream), shared with scripts/test.sh, so a rebuild is incremental.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
venv="$cache/venv"
python="$venv/bin/python"

if [ ! -x "$python" ]; then
    echo "serve.sh: creating the virtualenv $venv" >&2
    mkdir -p "$cache"
    python3 -m venv "$venv" || {
        echo "serve.sh: python3 cannot create a virtualenv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    }
fi

echo "serve.sh: installing maturin and the server's requirements" >&2
"$python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" -r "$repo/examples/server/requirements.txt"

echo "serve.sh: building cortexstream (release)" >&2
export CORTEXSTREAM_CACHE="$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
(cd "$repo" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --release --quiet)

# The default models, plus those `--model [NAME=]SOURCE` (repeatable) names when SOURCE is a
# cache name rather than a path (`--model gemma3`, `--model chat=gemma3`); an unknown name stops
# here with the list of known ones.
model_choices=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --model) model_choices+=("${args[i + 1]:-}") ;;
        --model=*) model_choices+=("${args[i]#--model=}") ;;
    esac
done
pull=(all)
for model_choice in "${model_choices[@]+"${model_choices[@]}"}"; do
    source_name="${model_choice#*=}"
    if [[ "$source_name" =~ ^[A-Za-z0-9_-]+$ && ! -e "$source_name" ]]; then
        pull+=("$source_name")
    fi
done
"$python" "$repo/python/cortexstream/models.py" pull "${pull[@]}"

cd "$repo"
exec "$python" -m cortexstream.server "$@"
