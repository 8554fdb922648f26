#!/usr/bin/env bash
# The old end of the supported window, with the tools that pin it (docs/usage.md, "Compatibility"):
#   axolotl: Python 3.12, axolotl 0.21.0 and its pins (trl 1.14.1, transformers 5.20.1, datasets 5.0.1,
#            accelerate 1.15.0, peft 0.21.2): pdl-trl's exactness core, then the Axolotl plugin's tests
#   unsloth: Python 3.11, unsloth 2026.10.9 with trl 1.15.0, transformers 5.17.0, datasets 4.8.x: the exactness core,
#            then tests/with_unsloth in a process of its own (Unsloth patches TRL when imported)
#   resolve: pip's resolver installs pdl-trl beside unsloth==2026.10.9 and beside axolotl==0.21.0 without moving
#            their trl / transformers / datasets (a dry run: metadata only)
# Usage: .ci/compat.sh build|lock axolotl|unsloth, .ci/compat.sh test axolotl|unsloth [core|tool|all], or
# .ci/compat.sh resolve.
# Each venv is installed from a lock file (.ci/locks/NAME.txt: the environment resolved once from the pins below, frozen;
# `lock NAME` redoes it), lives in $PDL_TRL_CI_CACHE (default ~/.cache/pdl-trl-ci) keyed by the lock's hash, and is
# reused by later runs on the same machine; a clean machine builds it (minutes: downloads and unpacking).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${PDL_TRL_CI_CACHE:-$HOME/.cache/pdl-trl-ci}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
export AXOLOTL_DO_NOT_TRACK=1 UNSLOTH_CPU_BF16=0 CUDA_VISIBLE_DEVICES=""

# pdl-trl's exactness core on an old set: the alpha = 0 differential scenarios, accumulation, QLoRA on CPU, resume,
# the CLI, and two processes
CORE=(tests/unit tests/integration/test_trl_scenarios.py tests/integration/test_trainer.py tests/integration/test_cli.py)
TWO_PROCESSES=(tests/distributed/test_distributed.py -k "same_step_as_one and nll")

AXOLOTL_PINS=(axolotl==0.21.0 trl==1.14.1 transformers==5.20.1 datasets==5.0.1 accelerate==1.15.0 peft==0.21.2)
UNSLOTH_PINS=(unsloth==2026.10.9 trl==1.15.0 transformers==5.17.0 "datasets>=4.8,<5")
# What the venvs need of pdl-trl's test extra (its own pins would not move the ones above)
TEST_EXTRAS=(pytest bitsandbytes matplotlib pillow sacrebleu rouge-score)

python_of() {  # the interpreter of a Python version: pyenv's when there is one
    if command -v pyenv >/dev/null && PYENV_VERSION=$1 pyenv which python >/dev/null 2>&1; then
        PYENV_VERSION=$1 pyenv which python
    else
        command -v "python$1"
    fi
}

lock_of() { echo "$REPO/.ci/locks/$1.txt"; }

venv_of() {  # the venv folder of an environment: keyed by its lock file
    echo "$CACHE/$1-$(sha256sum "$(lock_of "$1")" | cut -c1-12)"
}

python_version_of() {
    case $1 in axolotl) echo 3.12 ;; unsloth) echo 3.11 ;; esac
}

build() {  # the environment's venv from its lock file (no resolution: minutes, the same set on every machine)
    local name=$1 venv pip
    venv=$(venv_of "$name")
    pip="$venv/bin/python -m pip --disable-pip-version-check --quiet"
    mkdir -p "$CACHE"
    (
        # One build of a venv at a time (.ci/run's two lanes both need the Axolotl one): a second waits, then reuses it
        flock 9
        if [ ! -f "$venv/.built" ]; then
            rm -rf "$venv"
            "$(python_of "$(python_version_of "$name")")" -m venv "$venv"
            # --no-compile: byte-compiling ~270 packages costs minutes of CPU; Python compiles what the tests import
            $pip install --no-deps --no-compile -r "$(lock_of "$name")"
            touch "$venv/.built"
        fi
    ) 9>"$venv.lock"
    # This checkout, without its dependencies: the environment's pins stay as they are. One install at a time: each
    # rewrites the checkout's pdl_trl.egg-info (.ci/run installs .venv and builds both venvs side by side)
    flock "$REPO/.ci/.install.lock" $pip install --no-deps -e "$REPO"
    echo "$venv"
}

lock() {  # (maintainers) resolves the environment from its pins in a scratch venv and freezes it into its lock file
    local name=$1 work pip
    work=$(mktemp -d)
    "$(python_of "$(python_version_of "$name")")" -m venv "$work/venv"
    pip="$work/venv/bin/python -m pip --disable-pip-version-check --quiet"
    # torch first, and its pin repeated: axolotl needs >= 2.13, < 2.15 (PyPI's CUDA build on Python 3.12 runs on the
    # CPU); for Unsloth the CPU wheel, or torchvision's newest wheel swaps in torch 2.14.1 (CUDA)
    $pip install torch==2.13.0
    case $name in
        axolotl) $pip install "${AXOLOTL_PINS[@]}" "${TEST_EXTRAS[@]}" torch==2.13.0 ;;
        unsloth)
            $pip install "${UNSLOTH_PINS[@]}" "${TEST_EXTRAS[@]}" torch==2.13.0
            # PyPI's torchvision cannot load its operators beside a +cpu torch, and `import unsloth` then refuses;
            # nothing here needs it (`pip check` names it as the one missing requirement)
            $pip uninstall -y torchvision
            ;;
    esac
    {
        echo "# pip freeze of a venv built from .ci/compat.sh's ${name^^}_PINS and TEST_EXTRAS (\`.ci/compat.sh lock $name\`);"
        echo "# CI installs it with --no-deps: no resolution, the same set on every machine."
        # A local CPU build (+cpu) is not on PyPI: the plain pin takes it where a wheel folder offers it
        # --all: on Python 3.11 pip freeze leaves out setuptools and wheel, which torch and unsloth require
        $pip freeze --all --exclude-editable | grep -v "^pip==" | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
    } >"$(lock_of "$name")"
    rm -rf "$work"
}

check_pins() {  # the environment still holds the pins it was built with
    "$1/bin/python" - "${@:2}" <<'PY'
import sys
from importlib.metadata import version

from packaging.requirements import Requirement

for spec in sys.argv[1:]:
    requirement = Requirement(spec)
    installed = version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed} moved off {spec}"
    print(f"  {requirement.name} {installed}")
PY
}

pip_check() {  # the lock's set is consistent: pip check, but for the one requirement left out on purpose
    local problems
    problems=$("$1/bin/python" -m pip check 2>&1 | grep -v -e "^No broken requirements found" \
        -e "^unsloth [0-9.]* requires torchvision, which is not installed" || true)
    if [ -n "$problems" ]; then
        echo "$problems" >&2
        return 1
    fi
}

run_tests() {  # $1: the environment; $2: core (pdl-trl's exactness core), tool (the tool's own tests) or all
    local name=$1 part=${2:-all} venv
    venv=$(build "$name" | tail -n 1)
    case $name in
        axolotl) check_pins "$venv" "${AXOLOTL_PINS[@]}" ;;
        unsloth) check_pins "$venv" "${UNSLOTH_PINS[@]}" ;;
    esac
    pip_check "$venv"
    if [ "$part" != tool ]; then
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "${CORE[@]}"
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TWO_PROCESSES[@]}"
    fi
    if [ "$part" != core ]; then
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "tests/with_$name"
    fi
}

resolve() {  # pip's choice for pdl-trl beside each tool, in an empty venv: nothing is installed
    local work python
    work=$(mktemp -d)
    for python in 3.11 3.12; do
        "$(python_of $python)" -m venv "$work/venv-$python"
    done
    # The two resolutions wait mostly on the index: side by side
    "$work/venv-3.11/bin/python" -m pip install --quiet --dry-run --report "$work/unsloth.json" "$REPO" \
        unsloth==2026.10.9 torch==2.13.0 &
    local unsloth=$!
    "$work/venv-3.12/bin/python" -m pip install --quiet --dry-run --report "$work/axolotl.json" "$REPO" \
        axolotl==0.21.0
    wait "$unsloth"
    python3 - "$work" <<'PY'
import json
import sys

expected = {
    # Unsloth 2026.10.9 allows trl <= 1.15.0, transformers <= 5.17.0, datasets < 5: pdl-trl must not push beyond
    "unsloth": {"trl": "1.15.0", "transformers": "5.17.0"},
    "axolotl": {"trl": "1.14.1", "transformers": "5.20.1", "datasets": "5.0.1", "accelerate": "1.15.0", "peft": "0.21.2"},
}
for tool, pins in expected.items():
    report = json.load(open(f"{sys.argv[1]}/{tool}.json"))
    picked = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    for name, version in pins.items():
        assert picked[name] == version, f"beside {tool}, pip picks {name} {picked[name]}, not {version}"
    if tool == "unsloth":
        assert picked["datasets"].startswith("4."), f"beside unsloth, pip picks datasets {picked['datasets']}"
    print(f"beside {tool}: " + ", ".join(f"{n} {picked[n]}" for n in ("pdl-trl", tool, "trl", "transformers", "datasets")))
PY
    rm -rf "$work"
}

case ${1:-} in
    build) build "$2" >/dev/null ;;
    lock) lock "$2" ;;
    test) run_tests "$2" "${3:-all}" ;;
    resolve) resolve ;;
    *) echo "usage: $0 build|lock axolotl|unsloth, $0 test axolotl|unsloth [core|tool|all], or $0 resolve" >&2; exit 2 ;;
esac
