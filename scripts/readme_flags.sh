#!/usr/bin/env bash
# Rewrite the README's flag table (between <!-- flags:begin --> and <!-- flags:end -->) from the
# settings table, as `splitserve --help-markdown` prints it, and its model key table (between
# <!-- model-keys:begin --> and <!-- model-keys:end -->) from the registry's key table, as
# `splitserve --help-model-keys` prints it. usage: scripts/readme_flags.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/bin/splitserve}
table=$("$bin" --help-markdown)
keys=$("$bin" --help-model-keys)
TABLE="$table" KEYS="$keys" /usr/bin/python3 - <<'PY'
import os, re
with open("README.md") as f:
    text = f.read()
for mark, var in (("flags", "TABLE"), ("model-keys", "KEYS")):
    new = "<!-- %s:begin -->\n" % mark + os.environ[var] + "\n<!-- %s:end -->" % mark
    text, n = re.subn(r"<!-- %s:begin -->\n.*?<!-- %s:end -->" % (mark, mark), lambda m: new,
                      text, flags=re.S)
    assert n == 1, "README.md: no %s:begin/end markers" % mark
with open("README.md", "w") as f:
    f.write(text)
PY
echo "README.md: flag and model key tables rewritten from $bin --help-markdown, --help-model-keys"
