#!/usr/bin/env bash
# Apply patches/*.patch to LLaVA (the pinned version: git commit 24fa1d0 = llava-torch 1.2.2.post1).
#   bash scripts/apply_patches.sh              # the `llava` package the current python imports
#   bash scripts/apply_patches.sh DIR          # a git checkout of LLaVA (DIR/llava/...) or a `llava` package folder
# Idempotent: patches already applied are recognised and left alone ("nothing to do"). Refuses, changing nothing,
# when a patch neither applies nor is already applied (another LLaVA version, or local edits).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINNED_VERSION="1.2.2.post1"
PINNED_COMMIT="24fa1d0"

target=${1:-}
if [ -z "$target" ]; then
  target=$("${PYTHON:-python}" -c "import os, llava; print(os.path.dirname(os.path.abspath(llava.__file__)))") || {
    echo "error: no importable 'llava' package; pass the LLaVA folder as an argument" >&2; exit 2; }
fi
[ -d "$target" ] || { echo "error: $target: no such folder" >&2; exit 2; }
target=$(cd "$target" && pwd)
# root = the folder that holds llava/ (patch paths are llava/...)
if [ -f "$target/llava/__init__.py" ]; then root=$target
elif [ -f "$target/__init__.py" ] && [ "$(basename "$target")" = llava ]; then root=$(dirname "$target")
else echo "error: $target is neither a LLaVA checkout (llava/ inside) nor the llava package folder" >&2; exit 2
fi

# Version, where it can be read: a git checkout's commit, or the version in its pyproject / the installed metadata.
if git -C "$root" rev-parse HEAD >/dev/null 2>&1 && [ -f "$root/pyproject.toml" ]; then
  commit=$(git -C "$root" rev-parse HEAD)
  case "$commit" in
    "$PINNED_COMMIT"*) ;;
    *) echo "error: $root is LLaVA at commit ${commit:0:7}; these patches are for $PINNED_COMMIT" \
            "(llava-torch $PINNED_VERSION)" >&2; exit 3 ;;
  esac
elif [ -f "$root/pyproject.toml" ]; then
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)
  if [ -n "$version" ] && [ "$version" != "$PINNED_VERSION" ]; then
    echo "error: $root is LLaVA $version; these patches are for $PINNED_VERSION ($PINNED_COMMIT)" >&2; exit 3
  fi
else
  meta=$(ls -d "$root"/llava_torch-*.dist-info 2>/dev/null | head -n1 || true)
  if [ -n "$meta" ]; then
    version=$(sed -n 's/^Version: //p' "$meta/METADATA")
    if [ "$version" != "$PINNED_VERSION" ]; then
      echo "error: installed llava-torch is $version; these patches are for $PINNED_VERSION ($PINNED_COMMIT)" >&2
      exit 3
    fi
  fi
fi

# Rehearse on a copy: every patch must either apply or be applied already; only then touch the real files.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/llava" "$work/llava"
to_apply=()
for p in "$here"/patches/*.patch; do
  name=$(basename "$p")
  if patch -p1 -s -f --dry-run -d "$work" < "$p" >/dev/null 2>&1; then
    patch -p1 -s -f -d "$work" < "$p" >/dev/null
    to_apply+=("$p")
  elif patch -p1 -s -f -R --dry-run -d "$work" < "$p" >/dev/null 2>&1; then
    echo "$name: already applied"
  else
    echo "error: $name does not apply to $root/llava: not LLaVA $PINNED_COMMIT ($PINNED_VERSION) as released," \
         "or locally modified. Nothing was changed." >&2
    exit 3
  fi
done
if [ ${#to_apply[@]} -eq 0 ]; then
  echo "LLaVA at $root/llava: all patches already applied, nothing to do"
  exit 0
fi
for p in "${to_apply[@]}"; do
  patch -p1 -s -f --no-backup-if-mismatch -d "$root" < "$p" >/dev/null
  echo "$(basename "$p"): applied"
done
find "$root/llava" -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
echo "LLaVA at $root/llava: ${#to_apply[@]} patch(es) applied"
