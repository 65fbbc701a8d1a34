#!/usr/bin/env bash
# Rewrite the README's flag table (between <!-- flags:begin --> and <!-- flags:end -->) from the
# settings table, as `splitserve --help-markdown` prints it. usage: scripts/readme_flags.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/bin/splitserve}
table=$("$bin" --help-markdown)
TABLE="$table" /usr/bin/python3 - <<'PY'
import os, re
with open("README.md") as f:
    text = f.read()
new = "<!-- flags:begin -->\n" + os.environ["TABLE"] + "\n<!-- flags:end -->"
text, n = re.subn(r"<!-- flags:begin -->\n.*?<!-- flags:end -->", lambda m: new, text, flags=re.S)
assert n == 1, "README.md: no flags:begin/end markers"
with open("README.md", "w") as f:
    f.write(text)
PY
echo "README.md: flag table rewritten from $bin --help-markdown"
